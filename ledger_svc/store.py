"""LedgerStore: ingest, stats, budgets, feedback, export and retention over one SQLAlchemy Core code path.

Batches are committed before RecordUsage answers, several concurrent batches per transaction
(group commit); what one transaction does is in `ledger_svc.ingest`. Re-delivered records change
nothing, on one replica or many. Stats are in `ledger_svc.stats`.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import DBAPIError

from ledger_svc import migrations, outcomes
from ledger_svc import stats as queries
from ledger_svc.db import Engines, create_engines, ensure_schema, insert_for
from ledger_svc.ingest import RecordKey, Statements, insert_batch, rebuild, record_key
from ledger_svc.records import iso_us, to_row
from ledger_svc.schema import (
    DIM_TOTAL,
    HOUR_US,
    api_keys,
    budgets,
    feedback,
    ledger_meta,
    requests,
    reservations,
    senders,
    usage_hourly,
    usage_records,
)
from ledger_svc.settings import LedgerSettings
from ledger_svc.validation import Window, now_us
from llmroute.ledger.v1 import ledger_pb2
from service_kit.errors import InvalidArgument, NotFound, ResourceExhausted

log = structlog.get_logger()

DAY_US = 24 * HOUR_US
# PostgreSQL deadlock / serialization failure; SQLite "database is locked" beyond busy_timeout.
_RETRY_SQLSTATES = {"40P01", "40001"}
_INGEST_TRIES = 5
_PRUNE_CHUNK_HOURS = 6


@dataclass(frozen=True)
class IngestResult:
    inserted: int
    duplicates: int


@dataclass
class _Batch:
    rows: list[dict[str, Any]]
    sender: str
    sender_spool_depth: int
    done: asyncio.Future[IngestResult]


@dataclass(frozen=True)
class StatsResult:
    window: Window
    totals: queries.Aggregate
    breakdowns: list[tuple[int, dict[Any, queries.Aggregate]]]
    spool_depth: int


# The order an export reads records in, and the key a page token carries.
EXPORT_KEY = ("ts", "request_id", "caller", "run_id", "attempt")


@dataclass(frozen=True)
class BudgetRow:
    caller: str
    period: int
    soft_nusd: int
    hard_nusd: int
    spent_nusd: int
    reserved_nusd: int = 0

    @property
    def state(self) -> int:
        if self.hard_nusd and self.spent_nusd >= self.hard_nusd:
            return ledger_pb2.BUDGET_STATE_HARD_LIMIT
        if self.soft_nusd and self.spent_nusd >= self.soft_nusd:
            return ledger_pb2.BUDGET_STATE_SOFT_LIMIT
        return ledger_pb2.BUDGET_STATE_OK


@dataclass(frozen=True)
class PruneResult:
    pruned_before_us: int
    records_deleted: int
    rollup_hours_before: int | None


class BudgetExceeded(ResourceExhausted):
    """A reservation would pass a hard budget."""

    def __init__(self, budget: BudgetRow, amount_nusd: int) -> None:
        scope = budget.caller or "global"
        period = ledger_pb2.BudgetPeriod.Name(budget.period).removeprefix("BUDGET_PERIOD_").lower()  # type: ignore[arg-type]
        super().__init__(
            f"{scope} {period} budget of ${budget.hard_nusd / 1e9:.2f} cannot hold ${amount_nusd / 1e9:.6f} more "
            f"(spent ${budget.spent_nusd / 1e9:.6f}, held ${budget.reserved_nusd / 1e9:.6f})",
            reason="BUDGET_EXCEEDED",
            metadata={
                "caller": budget.caller,
                "scope": scope,
                "period": period,
                "hard_limit_usd": budget.hard_nusd / 1e9,
                "spent_usd": f"{budget.spent_nusd / 1e9:.6f}",
                "reserved_usd": f"{budget.reserved_nusd / 1e9:.6f}",
                "requested_usd": f"{amount_nusd / 1e9:.6f}",
            },
        )


class ChangeFeed:
    """Wakes watchers when this replica committed new records."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.version = 0  # how many commits this replica has made; snapshots compare it

    def bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """True when a change happened before `timeout` seconds passed."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _retryable(error: DBAPIError) -> bool:
    code = getattr(error.orig, "pgcode", None) or getattr(error.orig, "sqlstate", None)
    if code in _RETRY_SQLSTATES:
        return True
    return "database is locked" in str(error.orig)


def period_bounds(period: int, now: int) -> tuple[int, int]:
    """[start, end) of the current UTC day or month, in µs."""
    moment = datetime.fromtimestamp(now / 1_000_000, UTC)
    if period == ledger_pb2.BUDGET_PERIOD_DAILY:
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return int(start.timestamp()) * 1_000_000, int(start.timestamp()) * 1_000_000 + DAY_US
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return int(start.timestamp()) * 1_000_000, int(end.timestamp()) * 1_000_000


class LedgerStore:
    def __init__(self, engines: Engines, settings: LedgerSettings, clock: Callable[[], int] = now_us) -> None:
        self._engines = engines
        self._settings = settings
        self._now = clock
        self._statements = Statements(engines.dialect, engines.write.dialect)
        self._pending: deque[_Batch] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._unfinished: set[asyncio.Task[Any]] = set()  # queries that outlive a cancelled RPC
        self.changes = ChangeFeed()

    @classmethod
    async def open(cls, settings: LedgerSettings, clock: Callable[[], int] = now_us) -> LedgerStore:
        """Connect and migrate to the latest schema."""
        engines = create_engines(settings)
        try:
            await ensure_schema(engines, settings.database_schema)
            version = await migrations.migrate(engines.write)
        except BaseException:
            await engines.dispose()
            raise
        log.info("ledger_store_ready", dialect=engines.dialect, schema_version=version)
        return cls(engines, settings, clock)

    @property
    def dialect(self) -> str:
        return self._engines.dialect

    @property
    def engines(self) -> Engines:
        return self._engines

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)  # finish what was accepted
        await asyncio.gather(*self._unfinished, return_exceptions=True)
        await self._engines.dispose()

    def _insert(self, table: sa.Table) -> Any:
        return insert_for(self._engines.dialect, table)

    # ---- ingest -------------------------------------------------------------------------------

    async def record_usage(
        self, records: Sequence[ledger_pb2.UsageRecord], sender: str = "", sender_spool_depth: int = 0
    ) -> IngestResult:
        """Store a batch; returns once it is committed (possibly together with concurrent batches)."""
        now = self._now()
        batch = _Batch(
            rows=[to_row(record, now) for record in records],
            sender=sender,
            sender_spool_depth=sender_spool_depth,
            done=asyncio.get_running_loop().create_future(),
        )
        self._pending.append(batch)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="ledger-ingest")
        return await asyncio.shield(batch.done)

    async def _write_pending(self) -> None:
        """Group commit: every batch waiting when a transaction starts goes into it.

        Under concurrent senders this turns many small transactions (each touching the same hot
        rollup rows, each with its own fsync on SQLite) into a few larger ones. Each batch is still
        acknowledged only after the transaction holding it committed.
        """
        while self._pending:
            group: list[_Batch] = []
            size = 0
            while self._pending and (
                not group or size + len(self._pending[0].rows) <= self._settings.max_batch_records
            ):
                group.append(self._pending.popleft())
                size += len(group[-1].rows)
            try:
                results = await self._ingest_group(group)
            except Exception as error:  # the batches' callers get it; the writer goes on with the next group
                for batch in group:
                    if not batch.done.done():
                        batch.done.set_exception(error)
                continue
            for batch, result in zip(group, results, strict=True):
                if batch.done.done():
                    continue
                if isinstance(result, InvalidArgument):
                    batch.done.set_exception(result)
                else:
                    batch.done.set_result(result)
            if any(isinstance(r, IngestResult) and r.inserted for r in results):
                self.changes.bump()

    async def _ingest_group(self, group: list[_Batch]) -> list[IngestResult | InvalidArgument]:
        for attempt in range(1, _INGEST_TRIES + 1):
            try:
                return await self._ingest(group)
            except DBAPIError as error:
                if attempt == _INGEST_TRIES or not _retryable(error):
                    raise
                log.warning("ingest_retry", attempt=attempt, error=type(error.orig).__name__)
                await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _ingest(self, group: list[_Batch]) -> list[IngestResult | InvalidArgument]:
        now = self._now()
        async with self._engines.write.begin() as conn:
            # Shared lock: pruning takes it exclusively, so a record cannot slip in behind a prune
            # and be counted twice after its first copy was deleted.
            pruned_before = int(
                await conn.scalar(
                    sa.select(ledger_meta.c.value)
                    .where(ledger_meta.c.key == "pruned_before")
                    .with_for_update(read=True)
                )
                or 0
            )
            results: list[IngestResult | InvalidArgument | None] = []
            owner: dict[RecordKey, int] = {}  # record key -> the first batch that carried it
            rows: list[dict[str, Any]] = []
            for position, batch in enumerate(group):
                too_old = [
                    (
                        f"records[{index}].time",
                        f"is before {iso_us(pruned_before)}, whose raw records were pruned; it cannot be deduplicated",
                    )
                    for index, row in enumerate(batch.rows)
                    if row["ts"] < pruned_before
                ]
                if too_old:
                    results.append(
                        InvalidArgument(
                            too_old,
                            reason="RECORD_TOO_OLD",
                            metadata={"pruned_before": iso_us(pruned_before)},
                        )
                    )
                    continue
                results.append(None)
                for row in batch.rows:
                    key = record_key(row)
                    if key not in owner:
                        owner[key] = position
                        rows.append(row)
            new = await insert_batch(conn, self._statements, rows) if rows else set()
            inserted = [0] * len(group)
            for key in new:
                inserted[owner[key]] += 1
            depths = {batch.sender: batch.sender_spool_depth for batch in group if batch.sender}
            if depths:
                stmt = self._insert(senders)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["sender"],
                        set_={
                            "spool_depth": stmt.excluded.spool_depth,
                            "updated_ts": stmt.excluded.updated_ts,
                        },
                    ),
                    [
                        {"sender": name, "spool_depth": depth, "updated_ts": now}
                        for name, depth in sorted(depths.items())
                    ],
                )
        return [
            result
            if result is not None
            else IngestResult(inserted=inserted[i], duplicates=len(group[i].rows) - inserted[i])
            for i, result in enumerate(results)
        ]

    # ---- reading ------------------------------------------------------------------------------

    async def stats(self, window: Window, group_by: Sequence[int], caller: str | None) -> StatsResult:
        async with self._engines.read.connect() as conn, conn.begin():
            pruned_before = int(
                await conn.scalar(sa.select(ledger_meta.c.value).where(ledger_meta.c.key == "pruned_before"))
                or 0
            )
            plan = queries.plan(window.since_us, window.until_us, pruned_before)
            totals = (await queries.aggregate(conn, queries.TOTAL, plan, caller)).get("", queries.Aggregate())
            breakdowns = [(dim, await queries.aggregate(conn, dim, plan, caller)) for dim in group_by]
            depth = int(
                await conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(senders.c.spool_depth), 0))) or 0
            )
        return StatsResult(Window(plan.since_us, plan.until_us), totals, breakdowns, depth)

    async def totals(self, window: Window, caller: str | None) -> queries.Aggregate:
        return (await self.stats(window, (), caller)).totals

    async def export(
        self, window: Window, batch: int = 1000, after: tuple[Any, ...] | None = None
    ) -> AsyncGenerator[Mapping[Any, Any], None]:
        """Raw records of the window, oldest first (pruned hours have none).

        Read a page at a time, each page its own short query after the last row's key: a client that
        reads slowly (or stops) holds no database connection between pages, and a cancelled export
        never leaves a connection to be torn down mid-query."""
        order = tuple(usage_records.c[name] for name in EXPORT_KEY)
        query = (
            sa.select(usage_records)
            .where(usage_records.c.ts >= window.since_us, usage_records.c.ts < window.until_us)
            .order_by(*order)
            .limit(batch)
        )
        while True:
            page_query = query if after is None else query.where(sa.tuple_(*order) > sa.tuple_(*after))
            # Shielded: a client that goes away cancels the export between pages, never inside a
            # query (a connection cancelled mid-query is torn down, and aiosqlite's teardown can then
            # wait forever on a worker thread that already stopped).
            page = await asyncio.shield(self._page(page_query))
            for row in page:
                yield row
            if len(page) < batch:
                return
            last = page[-1]
            after = tuple(last[column.name] for column in order)

    async def _page(self, query: Any) -> Sequence[Mapping[Any, Any]]:
        async with self._engines.read.connect() as conn:
            return (await conn.execute(query)).mappings().all()

    # ---- API keys -----------------------------------------------------------------------------

    async def create_key(
        self, key_id: str, name: str, roles: list[str], callers: list[str], sha256: str
    ) -> int:
        """Store a key's digest; returns its creation time (µs)."""
        created = self._now()
        async with self._engines.write.begin() as conn:
            await conn.execute(
                sa.insert(api_keys).values(
                    id=key_id,
                    name=name,
                    roles=",".join(roles),
                    callers=",".join(callers),
                    sha256=sha256,
                    created_ts=created,
                    revoked_ts=0,
                )
            )
        return created

    async def keys(self) -> list[Mapping[Any, Any]]:
        async with self._engines.read.connect() as conn:
            result = await conn.execute(sa.select(api_keys).order_by(api_keys.c.created_ts, api_keys.c.id))
            return list(result.mappings().all())

    async def key(self, key_id: str) -> Mapping[Any, Any] | None:
        # The budget pool: a lookup stands between a caller and its Route, like a budget check.
        async with self._engines.budgets.connect() as conn:
            result = await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))
            return result.mappings().first()

    async def revoke_key(self, key_id: str) -> bool:
        async with self._engines.write.begin() as conn:
            result = await conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_ts == 0)
                .values(revoked_ts=self._now())
            )
            return bool(result.rowcount)

    # ---- budgets ------------------------------------------------------------------------------

    async def set_budget(self, caller: str, period: int, soft_nusd: int, hard_nusd: int) -> None:
        stmt = self._insert(budgets)
        async with self._engines.write.begin() as conn:
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["caller", "period"],
                    set_={
                        "soft_nusd": stmt.excluded.soft_nusd,
                        "hard_nusd": stmt.excluded.hard_nusd,
                        "updated_ts": stmt.excluded.updated_ts,
                    },
                ),
                {
                    "caller": caller,
                    "period": period,
                    "soft_nusd": soft_nusd,
                    "hard_nusd": hard_nusd,
                    "updated_ts": self._now(),
                },
            )

    async def budgets(self, caller: str | None) -> list[BudgetRow]:
        """All budgets (caller None), or the global ones and `caller`'s, with spend in their period.

        The query runs to its end even when the RPC that asked is cancelled (the router's budget
        checks have a short deadline): a query cancelled halfway can leave its pooled connection
        unusable, and the budget pool is small."""
        task = asyncio.create_task(self._budgets(caller))
        self._unfinished.add(task)
        task.add_done_callback(self._unfinished.discard)
        return await asyncio.shield(task)

    async def _budgets(self, caller: str | None) -> list[BudgetRow]:
        now = self._now()
        query = sa.select(budgets).order_by(budgets.c.caller, budgets.c.period)
        if caller is not None:
            query = query.where(budgets.c.caller.in_(["", caller]))
        async with self._engines.budgets.connect() as conn, conn.begin():
            rows = (await conn.execute(query)).all()
            found = []
            for row in rows:
                start, end = period_bounds(row.period, now)
                spent = await self._spent(conn, row.caller, start // HOUR_US, end // HOUR_US)
                held = await self._held(conn, row.caller, now)
                found.append(BudgetRow(row.caller, row.period, row.soft_nusd, row.hard_nusd, spent, held))
        return found

    async def _held(self, conn: Any, caller: str, now: int) -> int:
        """What live reservations hold against a budget of `caller` ('' = global: everyone's)."""
        r = reservations.c
        query = sa.select(sa.func.coalesce(sa.func.sum(r.amount_nusd), 0)).where(r.expires_ts > now)
        if caller:
            query = query.where(r.caller == caller)
        return int(await conn.scalar(query) or 0)

    async def reserve(
        self, caller: str, request_id: str, run_id: str, amount_nusd: int, ttl_us: int
    ) -> tuple[str, list[BudgetRow]]:
        """Hold `amount_nusd` against every hard budget that applies, or raise ResourceExhausted.

        Spent + held + this is checked and the hold written in one write transaction, with the budget
        rows locked on PostgreSQL (SQLite has a single writer): concurrent reservations of one budget
        queue up, on one ledger replica or many, so none can pass it together.
        """
        now = self._now()
        async with self._engines.write.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(budgets)
                    .where(budgets.c.caller.in_(["", caller]))
                    .order_by(budgets.c.caller, budgets.c.period)
                    .with_for_update()
                )
            ).all()
            await conn.execute(reservations.delete().where(reservations.c.expires_ts <= now))
            found = []
            for row in rows:
                start, end = period_bounds(row.period, now)
                spent = await self._spent(conn, row.caller, start // HOUR_US, end // HOUR_US)
                held = await self._held(conn, row.caller, now)
                budget = BudgetRow(row.caller, row.period, row.soft_nusd, row.hard_nusd, spent, held)
                if budget.hard_nusd and spent + held + amount_nusd > budget.hard_nusd:
                    raise BudgetExceeded(budget, amount_nusd)
                found.append(budget)
            reservation = uuid.uuid4().hex
            await conn.execute(
                reservations.insert().values(
                    id=reservation,
                    caller=caller,
                    request_id=request_id,
                    run_id=run_id,
                    amount_nusd=amount_nusd,
                    created_ts=now,
                    expires_ts=now + ttl_us,
                )
            )
        return reservation, [
            BudgetRow(
                b.caller, b.period, b.soft_nusd, b.hard_nusd, b.spent_nusd, b.reserved_nusd + amount_nusd
            )
            for b in found
        ]

    async def _spent(self, conn: Any, caller: str, first_hour: int, end_hour: int) -> int:
        """Provider, classifier and judge spend (nano-dollars) in [first_hour, end_hour), from the rollups.
        A caller's budget does not pay for exploration (the router's choice, capped on its own); the
        global budget, all spend, does."""
        h = usage_hourly.c
        spend = h.cost_nusd + h.classifier_nusd + h.judge_nusd - (h.exploration_nusd if caller else 0)
        value = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(spend), 0)).where(
                h.dim == DIM_TOTAL,
                h.per_caller == (1 if caller else 0),
                h.caller == caller,
                h.hour >= first_hour,
                h.hour < end_hour,
            )
        )
        return int(value or 0)

    # ---- feedback -----------------------------------------------------------------------------

    async def record_feedback(
        self, caller: str, request_id: str, run_id: str, verdict: int, needed_tier: int, note: str
    ) -> str:
        """Store a verdict against one run of the caller's request (its latest answered run when
        `run_id` is empty); returns the run. NotFound when the ledger has no such run (yet)."""
        r = usage_records.c
        async with self._engines.write.begin() as conn:
            where = [r.request_id == request_id, r.caller == caller, r.exploration == sa.false()]
            if run_id:
                where.append(r.run_id == run_id)
            else:
                where.append(r.final == sa.true())
            found = await conn.scalar(sa.select(r.run_id).where(*where).order_by(r.ts.desc()).limit(1))
            if found is None:
                raise NotFound(
                    "no routed run of this request for this caller in the ledger (records reach it "
                    "within seconds of the answer: retry shortly)",
                    reason="REQUEST_NOT_FOUND",
                    metadata={"request_id": request_id, "caller": caller, "run_id": run_id},
                )
            await conn.execute(
                feedback.insert().values(
                    request_id=request_id,
                    caller=caller,
                    run_id=found,
                    verdict=verdict,
                    needed_tier=needed_tier,
                    note=note,
                    created_ts=self._now(),
                )
            )
        return str(found)

    async def outcome_runs(
        self, window: Window, caller: str | None, with_evidence_only: bool = False
    ) -> AsyncIterator[list[outcomes.Run]]:
        """The window's routed runs with the evidence on the tier each needed, in batches."""
        async with self._engines.read.connect() as conn, conn.begin():
            async for batch in outcomes.runs(
                conn, window.since_us, window.until_us, caller, with_evidence_only
            ):
                yield batch

    async def feedback_for(self, request_id: str) -> list[dict[str, Any]]:
        async with self._engines.read.connect() as conn, conn.begin():
            rows = await conn.execute(
                sa.select(feedback).where(feedback.c.request_id == request_id).order_by(feedback.c.id)
            )
            return [dict(row._mapping) for row in rows]

    # ---- retention ----------------------------------------------------------------------------

    async def pruned_before(self) -> int:
        async with self._engines.read.connect() as conn, conn.begin():
            return int(
                await conn.scalar(sa.select(ledger_meta.c.value).where(ledger_meta.c.key == "pruned_before"))
                or 0
            )

    async def prune(self) -> PruneResult:
        """Delete raw records (and request states) older than retention_raw_days, a few hours per
        transaction, raising the watermark with each; then rollups older than retention_rollup_days."""
        now = self._now()
        deleted = 0
        watermark = await self.pruned_before()
        if self._settings.retention_raw_days:
            horizon = (now - int(self._settings.retention_raw_days * DAY_US)) // HOUR_US * HOUR_US
            if watermark < horizon:
                async with self._engines.read.connect() as conn, conn.begin():
                    oldest = await conn.scalar(sa.select(sa.func.min(usage_records.c.ts)))
                    oldest_request = await conn.scalar(sa.select(sa.func.min(requests.c.first_ts)))
                start = min(v for v in (oldest, oldest_request, horizon) if v is not None)
                cursor = max(watermark, start // HOUR_US * HOUR_US)
                while cursor < horizon:
                    chunk_end = min(horizon, cursor + _PRUNE_CHUNK_HOURS * HOUR_US)
                    deleted += await self._prune_chunk(chunk_end)
                    cursor = chunk_end
                watermark = max(watermark, horizon)
        rollup_before: int | None = None
        if self._settings.retention_rollup_days:
            rollup_before = (now - int(self._settings.retention_rollup_days * DAY_US)) // HOUR_US
            async with self._engines.write.begin() as conn:
                await conn.execute(usage_hourly.delete().where(usage_hourly.c.hour < rollup_before))
        log.info("ledger_pruned", pruned_before=iso_us(watermark), records_deleted=deleted)
        return PruneResult(watermark, deleted, rollup_before)

    async def _prune_chunk(self, before: int) -> int:
        async with self._engines.write.begin() as conn:
            current = int(
                await conn.scalar(
                    sa.select(ledger_meta.c.value)
                    .where(ledger_meta.c.key == "pruned_before")
                    .with_for_update()
                )
                or 0
            )
            if current >= before:
                return 0
            result = await conn.execute(usage_records.delete().where(usage_records.c.ts < before))
            await conn.execute(requests.delete().where(requests.c.home_ts < before))
            await conn.execute(
                requests.delete().where(requests.c.home_ts.is_(None), requests.c.first_ts < before)
            )
            await conn.execute(
                ledger_meta.update().where(ledger_meta.c.key == "pruned_before").values(value=before)
            )
            return int(result.rowcount or 0)

    async def run_retention(self, interval: float) -> None:
        """Background job: prune every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            started = time.perf_counter()
            try:
                await self.prune()
            except DBAPIError:
                log.exception(
                    "ledger_prune_failed", duration_ms=round((time.perf_counter() - started) * 1000, 1)
                )

    # ---- maintenance --------------------------------------------------------------------------

    async def rebuild_rollups(self) -> None:
        """Recompute the rollups of retained hours from the raw tables (bulk loads, repairs).

        Hours whose raw records were pruned keep their rollups.
        """
        async with self._engines.write.begin() as conn:
            pruned_before = int(
                await conn.scalar(sa.select(ledger_meta.c.value).where(ledger_meta.c.key == "pruned_before"))
                or 0
            )
            first_hour = -(-pruned_before // HOUR_US)
            await conn.execute(usage_hourly.delete().where(usage_hourly.c.hour >= first_hour))
            await rebuild(conn, self._statements, first_hour)
