"""LedgerStore: the ledger's database behind one SQLAlchemy Core code path (SQLite or PostgreSQL).

It is composed of one part per concern, each in its own module:
- `group_commit.GroupCommit`: RecordUsage batches committed together (the transaction itself is in
  `ledger_svc.ingest`);
- `budgets.Budgets`: budgets, spend in their period, reservations;
- `retention.Retention`: pruning behind a watermark, and the rollups' rebuild;
- here: opening and closing, stats (queries in `ledger_svc.stats`), export, API keys and feedback.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog

from ledger_svc import migrations, outcomes
from ledger_svc import stats as queries
from ledger_svc.budgets import Budgets
from ledger_svc.db import Engines, create_engines, ensure_schema
from ledger_svc.group_commit import ChangeFeed, GroupCommit
from ledger_svc.ingest import Statements
from ledger_svc.retention import Retention
from ledger_svc.schema import api_keys, feedback, ledger_meta, senders, usage_records
from ledger_svc.settings import LedgerSettings
from ledger_svc.validation import Window, now_us
from service_kit.errors import NotFound, Reason

log = structlog.get_logger()


@dataclass(frozen=True)
class StatsResult:
    window: Window
    totals: queries.Aggregate
    breakdowns: list[tuple[int, dict[Any, queries.Aggregate]]]
    spool_depth: int


# The order an export reads records in, and the key a page token carries.
EXPORT_KEY = ("ts", "request_id", "caller", "run_id", "attempt")


class LedgerStore(GroupCommit, Budgets, Retention):
    def __init__(self, engines: Engines, settings: LedgerSettings, clock: Callable[[], int] = now_us) -> None:
        self._engines = engines
        self._settings = settings
        self._now = clock
        self._statements = Statements(engines.dialect, engines.write.dialect)
        self._pending = deque()
        self._writer = None
        self._unfinished = set()  # queries that outlive a cancelled RPC
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

    # ---- reading ------------------------------------------------------------------------------

    async def stats(self, window: Window, group_by: Sequence[int], caller: str | None) -> StatsResult:
        async with self._engines.read.connect() as conn, conn.begin():
            pruned_before = int(
                await conn.scalar(sa.select(ledger_meta.c.value).where(ledger_meta.c.key == "pruned_before"))
                or 0
            )
            plan = queries.plan(window.since_us, window.until_us, pruned_before, self._now())
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
                    reason=Reason.REQUEST_NOT_FOUND,
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
