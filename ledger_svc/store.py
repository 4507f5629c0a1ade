"""LedgerStore: ingest, stats, budgets, feedback, export and retention over one SQLAlchemy Core code path.

Ingest is one transaction per batch, committed before RecordUsage answers:
1. the request states of the batch are locked (created if new), in request_id order;
2. the records are inserted with ON CONFLICT DO NOTHING; only the rows actually inserted count;
3. for those rows the hourly rollups are incremented (per attempt at the attempt's own hour and
   dimensions, per request at its home: attempt 1's), and request states are updated.
Re-delivered records therefore change nothing, on one replica or many: the primary key decides.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import DBAPIError

from ledger_svc import migrations, stats
from ledger_svc.db import Engines, create_engines, ensure_schema, insert_for
from ledger_svc.records import iso_us, to_row
from ledger_svc.schema import (
    ATTEMPT_COUNTERS,
    DIM_CATEGORY,
    DIM_MODEL,
    DIM_TIER,
    DIM_TOTAL,
    HOUR_US,
    REQUEST_COUNTERS,
    ROLLUP_COUNTERS,
    ROLLUP_KEY,
    budgets,
    feedback,
    latency_bucket,
    latency_hourly,
    ledger_meta,
    requests,
    senders,
    usage_hourly,
    usage_records,
)
from ledger_svc.settings import LedgerSettings
from ledger_svc.validation import Window, now_us
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2
from service_kit.errors import InvalidArgument

log = structlog.get_logger()

DAY_US = 24 * HOUR_US
_ESCALATED = common_pb2.ATTEMPT_OUTCOME_ESCALATED
# PostgreSQL deadlock / serialization failure; SQLite "database is locked" beyond busy_timeout.
_RETRY_SQLSTATES = {"40P01", "40001"}
_INGEST_TRIES = 5
_PRUNE_CHUNK_HOURS = 6

RollupKey = tuple[int, int, str, int, str]


@dataclass(frozen=True)
class IngestResult:
    inserted: int
    duplicates: int


@dataclass(frozen=True)
class StatsResult:
    window: Window
    totals: stats.Aggregate
    breakdowns: list[tuple[int, dict[Any, stats.Aggregate]]]
    spool_depth: int


@dataclass(frozen=True)
class BudgetRow:
    caller: str
    period: int
    soft_nusd: int
    hard_nusd: int
    spent_nusd: int

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


class ChangeFeed:
    """Wakes watchers when this replica committed new records."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def bump(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """True when a change happened before `timeout` seconds passed."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


def rollup_keys(hour: int, caller: str, model: str, tier: int, category: int) -> tuple[RollupKey, ...]:
    """The rollup rows one record (or request) adds to: each dimension, for all callers and per caller."""
    return (
        (DIM_TOTAL, 0, "", hour, ""),
        (DIM_MODEL, 0, "", hour, model),
        (DIM_TIER, 0, "", hour, str(tier)),
        (DIM_CATEGORY, 0, "", hour, str(category)),
        (DIM_TOTAL, 1, caller, hour, ""),
        (DIM_MODEL, 1, caller, hour, model),
        (DIM_TIER, 1, caller, hour, str(tier)),
        (DIM_CATEGORY, 1, caller, hour, str(category)),
    )


def _request_contribution(state: dict[str, Any]) -> tuple[int, ...]:
    if state["home_ts"] is None:
        return (0, 0, 0, 0)
    return (1, int(bool(state["escalated"])), int(state["attempt_count"] > 1), int(bool(state["cache_hit"])))


def _latency_counted(state: dict[str, Any]) -> bool:
    return state["home_ts"] is not None and state["lat_bucket"] is not None


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
        await self._engines.dispose()

    def _insert(self, table: sa.Table) -> Any:
        return insert_for(self._engines.dialect, table)

    # ---- ingest -------------------------------------------------------------------------------

    async def record_usage(
        self, records: Sequence[ledger_pb2.UsageRecord], sender: str = "", sender_spool_depth: int = 0
    ) -> IngestResult:
        now = self._now()
        unique: dict[tuple[str, int], tuple[int, dict[str, Any]]] = {}
        for index, record in enumerate(records):
            row = to_row(record, now)
            unique.setdefault((row["request_id"], row["attempt"]), (index, row))
        items = list(unique.values())
        for attempt in range(1, _INGEST_TRIES + 1):
            try:
                inserted = await self._ingest(items, sender, sender_spool_depth, now)
                break
            except DBAPIError as error:
                if attempt == _INGEST_TRIES or not _retryable(error):
                    raise
                log.warning("ingest_retry", attempt=attempt, error=type(error.orig).__name__)
                await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
        if inserted:
            self.changes.bump()
        return IngestResult(inserted=inserted, duplicates=len(records) - inserted)

    async def _ingest(
        self, items: list[tuple[int, dict[str, Any]]], sender: str, sender_spool_depth: int, now: int
    ) -> int:
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
            too_old = [
                (
                    f"records[{index}].time",
                    f"is before {iso_us(pruned_before)}, whose raw records were pruned; it cannot be deduplicated",
                )
                for index, row in items
                if row["ts"] < pruned_before
            ]
            if too_old:
                raise InvalidArgument(
                    too_old, reason="RECORD_TOO_OLD", metadata={"pruned_before": iso_us(pruned_before)}
                )
            inserted = await self._insert_records(conn, [row for _, row in items]) if items else 0
            if sender:
                stmt = self._insert(senders)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["sender"],
                        set_={
                            "spool_depth": stmt.excluded.spool_depth,
                            "updated_ts": stmt.excluded.updated_ts,
                        },
                    ),
                    {"sender": sender, "spool_depth": sender_spool_depth, "updated_ts": now},
                )
        return inserted

    async def _insert_records(self, conn: Any, rows: list[dict[str, Any]]) -> int:
        first_ts: dict[str, int] = {}
        for row in rows:
            rid = row["request_id"]
            first_ts[rid] = min(first_ts.get(rid, row["ts"]), row["ts"])
        ids = sorted(first_ts)
        # 1. Lock the request states (in a fixed order, so concurrent batches cannot deadlock).
        await conn.execute(
            self._insert(requests).on_conflict_do_nothing(index_elements=["request_id"]),
            [
                {
                    "request_id": rid,
                    "first_ts": first_ts[rid],
                    "cache_hit": False,
                    "attempt_count": 0,
                    "escalated": False,
                }
                for rid in ids
            ],
        )
        states = {
            row.request_id: dict(row._mapping)
            for row in await conn.execute(
                sa.select(requests)
                .where(requests.c.request_id.in_(ids))
                .order_by(requests.c.request_id)
                .with_for_update()
            )
        }
        # 2. Insert; the primary key drops re-deliveries.
        result = await conn.execute(
            self._insert(usage_records)
            .on_conflict_do_nothing(index_elements=["request_id", "attempt"])
            .returning(usage_records.c.request_id, usage_records.c.attempt),
            rows,
        )
        new_keys = {(rid, attempt) for rid, attempt in result}
        if not new_keys:
            return 0
        new_rows = [row for row in rows if (row["request_id"], row["attempt"]) in new_keys]
        # 3. Rollups and request states.
        rollup: dict[RollupKey, list[int]] = defaultdict(lambda: [0] * len(ROLLUP_COUNTERS))
        latency: dict[tuple[RollupKey, int], int] = defaultdict(int)
        by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in new_rows:
            by_request[row["request_id"]].append(row)
            cost = row["cost_nusd"]
            counters = (
                1,
                row["input_tokens"],
                row["output_tokens"],
                cost,
                row["baseline_nusd"],
                row["classifier_nusd"],
                0 if row["final"] else cost,
                0 if row["price_known"] else 1,
            )
            for key in rollup_keys(
                row["ts"] // HOUR_US, row["caller"], row["model"], row["tier"], row["category"]
            ):
                values = rollup[key]
                for i, value in enumerate(counters):
                    values[i] += value
        n_attempt = len(ATTEMPT_COUNTERS)
        updates = []
        for rid, request_rows in by_request.items():
            before = states[rid]
            after = dict(before)
            for row in sorted(request_rows, key=lambda r: r["attempt"]):
                after["attempt_count"] += 1
                after["first_ts"] = min(after["first_ts"], row["ts"])
                if row["outcome"] == _ESCALATED:
                    after["escalated"] = True
                if row["attempt"] == 1:
                    after.update(
                        home_ts=row["ts"],
                        caller=row["caller"],
                        model=row["model"],
                        tier=row["tier"],
                        category=row["category"],
                        cache_hit=row["cache_hit"],
                    )
                if row["final"] and after["lat_bucket"] is None:  # the first answer wins
                    after["total_ms"] = row["total_ms"]
                    after["lat_bucket"] = latency_bucket(row["total_ms"])
            updates.append({f"b_{k}": v for k, v in after.items()})
            if after["home_ts"] is None:
                continue
            keys = rollup_keys(
                after["home_ts"] // HOUR_US, after["caller"], after["model"], after["tier"], after["category"]
            )
            delta = [
                a - b
                for a, b in zip(_request_contribution(after), _request_contribution(before), strict=True)
            ]
            new_latency = _latency_counted(after) and not _latency_counted(before)
            for key in keys:
                if any(delta):
                    values = rollup[key]
                    for i, value in enumerate(delta):
                        values[n_attempt + i] += value
                if new_latency:
                    latency[(key, after["lat_bucket"])] += 1
        c = requests.c
        await conn.execute(
            requests.update()
            .where(c.request_id == sa.bindparam("b_request_id"))
            .values(
                {
                    name: sa.bindparam(f"b_{name}")
                    for name in (
                        "first_ts",
                        "home_ts",
                        "caller",
                        "model",
                        "tier",
                        "category",
                        "cache_hit",
                        "attempt_count",
                        "escalated",
                        "total_ms",
                        "lat_bucket",
                    )
                }
            ),
            updates,
        )
        await self._add_rollups(conn, rollup, latency)
        return len(new_rows)

    async def _add_rollups(
        self, conn: Any, rollup: dict[RollupKey, list[int]], latency: dict[tuple[RollupKey, int], int]
    ) -> None:
        if rollup:
            stmt = self._insert(usage_hourly)
            stmt = stmt.on_conflict_do_update(
                index_elements=list(ROLLUP_KEY),
                set_={name: usage_hourly.c[name] + stmt.excluded[name] for name in ROLLUP_COUNTERS},
            )
            await conn.execute(
                stmt,
                [
                    dict(zip(ROLLUP_KEY, key, strict=True)) | dict(zip(ROLLUP_COUNTERS, values, strict=True))
                    for key, values in sorted(rollup.items())
                ],
            )
        if latency:
            stmt = self._insert(latency_hourly)
            stmt = stmt.on_conflict_do_update(
                index_elements=[*ROLLUP_KEY, "bucket"], set_={"n": latency_hourly.c.n + stmt.excluded.n}
            )
            await conn.execute(
                stmt,
                [
                    dict(zip(ROLLUP_KEY, key, strict=True)) | {"bucket": bucket, "n": n}
                    for (key, bucket), n in sorted(latency.items())
                ],
            )

    # ---- reading ------------------------------------------------------------------------------

    async def stats(self, window: Window, group_by: Sequence[int], caller: str | None) -> StatsResult:
        async with self._engines.read.connect() as conn, conn.begin():
            pruned_before = int(
                await conn.scalar(sa.select(ledger_meta.c.value).where(ledger_meta.c.key == "pruned_before"))
                or 0
            )
            plan = stats.plan(window.since_us, window.until_us, pruned_before)
            totals = (await stats.aggregate(conn, stats.TOTAL, plan, caller)).get("", stats.Aggregate())
            breakdowns = [(dim, await stats.aggregate(conn, dim, plan, caller)) for dim in group_by]
            depth = int(
                await conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(senders.c.spool_depth), 0))) or 0
            )
        return StatsResult(Window(plan.since_us, plan.until_us), totals, breakdowns, depth)

    async def totals(self, window: Window, caller: str | None) -> stats.Aggregate:
        return (await self.stats(window, (), caller)).totals

    async def export(self, window: Window, batch: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """Raw records of the window, oldest first (pruned hours have none)."""
        query = (
            sa.select(usage_records)
            .where(usage_records.c.ts >= window.since_us, usage_records.c.ts < window.until_us)
            .order_by(usage_records.c.ts, usage_records.c.request_id, usage_records.c.attempt)
            .execution_options(yield_per=batch)
        )
        async with self._engines.read.connect() as conn, conn.begin():
            result = await conn.stream(query)
            async for partition in result.mappings().partitions(batch):
                for row in partition:
                    yield row

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
        """All budgets (caller None), or the global ones and `caller`'s, with spend in their period."""
        now = self._now()
        query = sa.select(budgets).order_by(budgets.c.caller, budgets.c.period)
        if caller is not None:
            query = query.where(budgets.c.caller.in_(["", caller]))
        async with self._engines.read.connect() as conn, conn.begin():
            rows = (await conn.execute(query)).all()
            found = []
            for row in rows:
                start, end = period_bounds(row.period, now)
                spent = await self._spent(conn, row.caller, start // HOUR_US, end // HOUR_US)
                found.append(BudgetRow(row.caller, row.period, row.soft_nusd, row.hard_nusd, spent))
        return found

    async def _spent(self, conn: Any, caller: str, first_hour: int, end_hour: int) -> int:
        """Provider plus classifier spend (nano-dollars) in [first_hour, end_hour), from the rollups."""
        h = usage_hourly.c
        value = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(h.cost_nusd + h.classifier_nusd), 0)).where(
                h.dim == DIM_TOTAL,
                h.per_caller == (1 if caller else 0),
                h.caller == caller,
                h.hour >= first_hour,
                h.hour < end_hour,
            )
        )
        return int(value or 0)

    # ---- feedback -----------------------------------------------------------------------------

    async def record_feedback(self, request_id: str, verdict: int, needed_tier: int, note: str) -> None:
        async with self._engines.write.begin() as conn:
            await conn.execute(
                feedback.insert().values(
                    request_id=request_id,
                    verdict=verdict,
                    needed_tier=needed_tier,
                    note=note,
                    created_ts=self._now(),
                )
            )

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
                await conn.execute(latency_hourly.delete().where(latency_hourly.c.hour < rollup_before))
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
        """Recompute every rollup row of retained hours from the raw tables (bulk loads, repairs).

        Hours whose raw records were pruned keep their rollups.
        """
        async with self._engines.write.begin() as conn:
            pruned_before = int(
                await conn.scalar(sa.select(ledger_meta.c.value).where(ledger_meta.c.key == "pruned_before"))
                or 0
            )
            first_hour = -(-pruned_before // HOUR_US)
            await conn.execute(usage_hourly.delete().where(usage_hourly.c.hour >= first_hour))
            await conn.execute(latency_hourly.delete().where(latency_hourly.c.hour >= first_hour))
            r, q = usage_records.c, requests.c
            zero = sa.literal_column("0")
            for per_caller in (0, 1):
                for dim, raw_key, req_key in (
                    (DIM_TOTAL, sa.literal_column("''"), sa.literal_column("''")),
                    (DIM_MODEL, r.model, q.model),
                    (DIM_TIER, sa.cast(r.tier, sa.String), sa.cast(q.tier, sa.String)),
                    (DIM_CATEGORY, sa.cast(r.category, sa.String), sa.cast(q.category, sa.String)),
                ):
                    raw_caller = r.caller if per_caller else sa.literal_column("''")
                    req_caller = q.caller if per_caller else sa.literal_column("''")
                    raw_hour, req_hour = r.ts // HOUR_US, q.home_ts // HOUR_US
                    attempts = sa.select(
                        raw_caller.label("caller"),
                        raw_hour.label("hour"),
                        raw_key.label("key"),
                        sa.func.count().label("attempts"),
                        sa.func.sum(r.input_tokens).label("input_tokens"),
                        sa.func.sum(r.output_tokens).label("output_tokens"),
                        sa.func.sum(r.cost_nusd).label("cost_nusd"),
                        sa.func.sum(r.baseline_nusd).label("baseline_nusd"),
                        sa.func.sum(r.classifier_nusd).label("classifier_nusd"),
                        sa.func.sum(sa.case((r.final == sa.false(), r.cost_nusd), else_=0)).label(
                            "failed_nusd"
                        ),
                        sa.func.sum(sa.case((r.price_known == sa.false(), 1), else_=0)).label(
                            "unpriced_attempts"
                        ),
                        *(zero.label(name) for name in REQUEST_COUNTERS),
                    ).where(r.ts >= first_hour * HOUR_US)
                    attempts = stats.grouped(attempts, raw_caller, raw_hour, raw_key)
                    per_request = sa.select(
                        req_caller.label("caller"),
                        req_hour.label("hour"),
                        req_key.label("key"),
                        *(zero.label(name) for name in ATTEMPT_COUNTERS),
                        sa.func.count().label("requests"),
                        sa.func.sum(sa.case((q.escalated == sa.true(), 1), else_=0)).label(
                            "escalated_requests"
                        ),
                        sa.func.sum(sa.case((q.attempt_count > 1, 1), else_=0)).label("fallback_requests"),
                        sa.func.sum(sa.case((q.cache_hit == sa.true(), 1), else_=0)).label("cache_hits"),
                    ).where(q.home_ts >= first_hour * HOUR_US)
                    per_request = stats.grouped(per_request, req_caller, req_hour, req_key)
                    both = sa.union_all(attempts, per_request).subquery()
                    await conn.execute(
                        usage_hourly.insert().from_select(
                            ["dim", "per_caller", "caller", "hour", "key", *ROLLUP_COUNTERS],
                            sa.select(
                                sa.literal(dim, sa.SmallInteger),
                                sa.literal(per_caller, sa.SmallInteger),
                                both.c.caller,
                                both.c.hour,
                                both.c.key,
                                *(sa.func.sum(both.c[name]) for name in ROLLUP_COUNTERS),
                            ).group_by(both.c.caller, both.c.hour, both.c.key),
                        )
                    )
                    await conn.execute(
                        latency_hourly.insert().from_select(
                            ["dim", "per_caller", "caller", "hour", "key", "bucket", "n"],
                            stats.grouped(
                                sa.select(
                                    sa.literal(dim, sa.SmallInteger),
                                    sa.literal(per_caller, sa.SmallInteger),
                                    req_caller,
                                    req_hour,
                                    req_key,
                                    q.lat_bucket,
                                    sa.func.count(),
                                ).where(q.home_ts >= first_hour * HOUR_US, q.lat_bucket.is_not(None)),
                                req_caller,
                                req_hour,
                                req_key,
                                q.lat_bucket,
                            ),
                        )
                    )
