"""Migrations on new and existing databases, and retention: rollups keep the figures right after pruning."""

from __future__ import annotations

import _sqlite3
import asyncio
import ctypes
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from ledger_svc import migration_steps, migrations, schema
from ledger_svc.db import create_engines, ensure_schema
from ledger_svc.records import to_row
from ledger_svc.settings import LedgerSettings
from ledger_svc.store import LedgerStore
from ledger_svc.validation import Window
from llmroute.ledger.v1 import ledger_pb2 as L
from tests.ledger.conftest import Backend, start_ledger, stop_ledger
from tests.ledger.ledger_helpers import HOUR_US, now_us, record, reference, ts
from tests.rich_status import details
from tests.waiting import eventually

DAY = 24 * HOUR_US
MIN = 60_000_000


async def _versions(store: LedgerStore) -> list[int]:
    async with store.engines.read.connect() as conn:
        return [
            row[0]
            for row in await conn.execute(sa.text("SELECT version FROM schema_migrations ORDER BY version"))
        ]


async def _write_as_v1(engines, rows: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    """What a ledger of the v1 era stored for these records: their rows in the v1 tables (the current
    code writes columns v1 did not have, so it cannot stand in for the old writer)."""
    v1 = migration_steps.v1_tables().tables
    requests = [
        {
            "request_id": row["request_id"], "first_ts": row["ts"], "home_ts": row["ts"], "caller": row["caller"],
            "model": row["model"], "tier": row["tier"], "category": row["category"], "cache_hit": False,
            "attempt_count": 1, "escalated": False, "total_ms": None, "lat_bucket": None,
        }
        for row in rows
    ]  # fmt: skip
    async with engines.write.begin() as conn:
        await conn.execute(
            v1["usage_records"].insert(),
            [{k: v for k, v in row.items() if k in v1["usage_records"].c} for row in rows],
        )
        await conn.execute(v1["requests"].insert(), requests)  # fmt: skip


async def test_migrating_an_existing_v1_database_keeps_its_records(backend: Backend) -> None:
    settings = backend.settings()
    engines = create_engines(settings)
    await ensure_schema(engines, settings.database_schema)
    assert await migrations.migrate(engines.write, target=1) == 1
    at = now_us() - 10 * MIN
    olds = [record("v1-a", 1, at=at, cost=0.01, final=True), record("v1-b", 1, at=at, cost=0.02)]
    await _write_as_v1(engines, [to_row(r, at) for r in olds])
    async with engines.read.connect() as conn:
        tables = set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
    assert "budgets" not in tables and "usage_records" in tables
    await engines.dispose()

    store = await LedgerStore.open(settings)  # migrates to the latest version
    try:
        assert await _versions(store) == list(range(1, migrations.LATEST + 1))
        totals = await store.totals(Window(at - MIN, at + MIN), None)
        assert totals.get("requests") == 2 and totals.get("cost_nusd") == 30_000_000
        assert totals.get("judge_nusd") == 0  # the column v3 added reads 0 for the old rows
        # Migration 4 keyed records by (request_id, caller, run_id, attempt): the old rows are run ''
        # of their caller, so the same records delivered again are still duplicates...
        again = await store.record_usage(olds)
        assert (again.inserted, again.duplicates) == (0, 2)
        # ...while another caller's record with the same request id is a call of its own.
        other = record("v1-a", 1, at=at, cost=0.04, caller="bob")
        assert (await store.record_usage([other])).inserted == 1
        totals = await store.totals(Window(at - MIN, at + MIN), None)
        assert totals.get("requests") == 3 and totals.get("cost_nusd") == 70_000_000
        await store.set_budget("alice", L.BUDGET_PERIOD_DAILY, 0, 10**9)
        assert [b.caller for b in await store.budgets(None)] == ["alice"]
    finally:
        await store.close()
    reopened = await LedgerStore.open(settings)  # nothing left to do
    try:
        assert await _versions(reopened) == list(range(1, migrations.LATEST + 1))
    finally:
        await reopened.close()


async def test_the_migrated_schema_is_the_one_the_queries_use(store: LedgerStore) -> None:
    def describe(sync: sa.Connection) -> dict[str, tuple[set[str], set[str], set[str]]]:
        inspector = sa.inspect(sync)
        found = {}
        for name in inspector.get_table_names():
            columns = {c["name"] for c in inspector.get_columns(name)}
            pk = set(inspector.get_pk_constraint(name)["constrained_columns"])
            indexes = {i["name"] for i in inspector.get_indexes(name) if i["name"]}
            found[name] = (columns, pk, indexes)
        return found

    async with store.engines.read.connect() as conn:
        actual = await conn.run_sync(describe)
    expected = {
        table.name: (
            {c.name for c in table.columns},
            {c.name for c in table.primary_key.columns},
            {i.name for i in table.indexes if i.name},
        )
        for table in schema.metadata.sorted_tables
    }
    assert actual == expected


async def test_a_database_from_a_newer_ledger_is_refused(backend: Backend) -> None:
    settings = backend.settings()
    store = await LedgerStore.open(settings)
    async with store.engines.write.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO schema_migrations (version, description, applied_ts) VALUES (99, 'future', 0)"
            )
        )
    await store.close()
    with pytest.raises(migrations.SchemaTooNew, match="version 99"):
        await LedgerStore.open(settings)


@pytest.mark.postgres
async def test_replicas_starting_together_migrate_once(pg_backend: Backend) -> None:
    settings = pg_backend.settings()
    stores = await asyncio.gather(*(LedgerStore.open(settings) for _ in range(3)))
    try:
        assert await _versions(stores[0]) == [v.version for v in migrations.MIGRATIONS]
    finally:
        for store in stores:
            await store.close()


# ---- retention ----------------------------------------------------------------------------------


def _old_and_new_records(now: int) -> list[L.UsageRecord]:
    old_hour = (now - 3 * DAY) // HOUR_US * HOUR_US
    records = []
    for i in range(40):
        at = old_hour + i * 4 * MIN  # 40 requests over 2h40m, three days ago
        records.append(record(f"old{i}", 1, at=at, caller="alice" if i % 2 else "bob", cost=0.001 * (i % 7),
                              classifier=0.0001, outcome=2 if i % 3 == 0 else 1, final=i % 3 != 0))  # fmt: skip
        if i % 3 == 0:
            records.append(record(f"old{i}", 2, at=at + 1, model="big", cost=0.01, baseline=0.05, final=True,
                                  total_ms=100 + i))  # fmt: skip
    records += [
        record(f"new{i}", 1, at=now - (i + 1) * MIN, cost=0.002, baseline=0.01, final=True) for i in range(5)
    ]
    return records


async def test_pruned_records_stay_in_the_stats_through_the_rollups(backend: Backend) -> None:
    ledger = await start_ledger(backend.settings(retention_raw_days=1))
    try:
        now = now_us()
        records = _old_and_new_records(now)
        await ledger.stub.RecordUsage(L.RecordUsageRequest(records=records))
        old_hour = (now - 3 * DAY) // HOUR_US * HOUR_US
        windows = [
            (0, now + MIN),  # all time
            (old_hour, old_hour + 3 * HOUR_US),  # whole hours
            (old_hour + 30 * MIN, old_hour + 150 * MIN),  # partial hours at both ends
            (old_hour + 5 * MIN, old_hour + 20 * MIN),  # inside one hour
        ]

        async def totals(since: int, until: int) -> L.GetStatsResponse:
            w = L.TimeWindow(since=ts(since), until=ts(until))
            return await ledger.stub.GetStats(L.GetStatsRequest(window=w, group_by=[L.GROUP_BY_CALLER]))

        before = [await totals(a, b) for a, b in windows]
        for (a, b), stats in zip(windows, before, strict=True):
            reference(records, a, b)[""].check(stats.totals)

        result = await ledger.store.prune()
        assert result.pruned_before_us == (now - DAY) // HOUR_US * HOUR_US
        assert result.records_deleted == len(records) - 5
        after = [await totals(a, b) for a, b in windows]
        # Hour-aligned windows are unchanged: the rollups hold everything.
        assert after[0].totals == before[0].totals and after[0].breakdowns == before[0].breakdowns
        assert after[1].totals == before[1].totals
        # Partial hours in pruned time are rounded down to the hour, and the response says so.
        for stats, (a, b) in zip(after[2:], windows[2:], strict=True):
            since, until = stats.window.since.ToMicroseconds(), stats.window.until.ToMicroseconds()
            assert (since, until) == (a // HOUR_US * HOUR_US, b // HOUR_US * HOUR_US)
            expected = reference(records, since, until)
            if expected:
                expected[""].check(stats.totals)
            else:
                assert stats.totals == L.Totals()
        # Raw records are gone from exports; redelivering one is refused instead of counted again.
        chunks = [
            c
            async for c in ledger.stub.ExportRecords(
                L.ExportRecordsRequest(
                    window=L.TimeWindow(since=ts(old_hour), until=ts(old_hour + 3 * HOUR_US))
                )
            )
        ]
        assert b"".join(c.chunk for c in chunks) == b""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ledger.stub.RecordUsage(L.RecordUsageRequest(records=[records[1], records[-1]]))
        found = details(caught.value)
        assert (found.code, found.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RECORD_TOO_OLD")
        assert "pruned" in found.violations["records[0].time"]
        assert "records[1].time" not in found.violations
        assert (await totals(0, now + MIN)).totals == before[0].totals
    finally:
        await stop_ledger(ledger)


async def test_rollups_older_than_their_retention_are_dropped(backend: Backend) -> None:
    ledger = await start_ledger(backend.settings(retention_raw_days=1, retention_rollup_days=2))
    try:
        now = now_us()
        await ledger.stub.RecordUsage(L.RecordUsageRequest(records=_old_and_new_records(now)))
        await ledger.store.prune()
        stats = await ledger.stub.GetStats(L.GetStatsRequest())
        assert (stats.totals.requests, stats.totals.cost_usd) == (5, 0.01)
    finally:
        await stop_ledger(ledger)


async def test_the_retention_job_runs_in_the_background(backend: Backend) -> None:
    ledger = await start_ledger(backend.settings(retention_raw_days=1, retention_interval_seconds=0.1))
    try:
        await ledger.stub.RecordUsage(L.RecordUsageRequest(records=_old_and_new_records(now_us())))
        await eventually(ledger.store.pruned_before, "the old records pruned")
        assert await ledger.store.pruned_before() > 0
    finally:
        await stop_ledger(ledger)


def test_rollups_must_outlive_raw_records(backend: Backend) -> None:
    with pytest.raises(ValueError, match="retention_rollup_days"):
        backend.settings(retention_raw_days=30, retention_rollup_days=7)


async def test_a_refused_batch_does_not_sink_the_batches_committed_with_it(backend: Backend) -> None:
    ledger = await start_ledger(backend.settings(retention_raw_days=1))
    try:
        now = now_us()
        await ledger.stub.RecordUsage(L.RecordUsageRequest(records=_old_and_new_records(now)[:3]))
        await ledger.store.prune()
        old = record("too-old", 1, at=now - 2 * DAY)
        fresh = [record(f"fresh{i}", 1, at=now - MIN, cost=0.001) for i in range(10)]
        results = await asyncio.gather(
            *(ledger.store.record_usage(fresh[i : i + 2]) for i in range(0, 10, 2)),
            ledger.store.record_usage([old]),
            return_exceptions=True,
        )
        assert [getattr(r, "inserted", None) for r in results[:5]] == [2, 2, 2, 2, 2]
        assert getattr(results[5], "reason", None) == "RECORD_TOO_OLD"
    finally:
        await stop_ledger(ledger)


async def test_every_sqlite_connection_caps_its_page_cache_at_the_setting(tmp_path: Path) -> None:
    # Each connection's page cache fills as the database grows; the ledger's resident memory is
    # bounded by connections x this cap (a 64 MiB cap grew a 100k-request soak's ledger to 690 MiB).
    settings = LedgerSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/ledger.db", sqlite_cache_mib=3, log_json=False
    )
    engines = create_engines(settings)
    try:
        assert engines.budget is not None
        for engine in (engines.write, engines.read, engines.budget):
            async with engine.connect() as conn:
                cache = (await conn.exec_driver_sql("PRAGMA cache_size")).scalar_one()
            assert cache == -3 * 1024  # negative: KiB
    finally:
        await engines.dispose()


def _sqlite_memory_used() -> int:
    """SQLite's own count of the memory it holds in this process, all connections together."""
    library = ctypes.CDLL(_sqlite3.__file__)  # linked to the libsqlite3 the ledger's driver uses
    library.sqlite3_memory_used.restype = ctypes.c_int64
    return int(library.sqlite3_memory_used())


@pytest.mark.parametrize("limit_mib", [0, 4])
async def test_sqlite_memory_stays_near_the_limit_however_many_connections_read(
    tmp_path: Path, limit_mib: int
) -> None:
    # Read connections each cache the same pages: four of them scanning 24 MiB with 16 MiB caches
    # hold about 64 MiB without a limit, and about the limit with one.
    settings = LedgerSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/ledger.db",
        sqlite_cache_mib=16,
        sqlite_memory_mib=limit_mib,
        database_pool_size=4,
        log_json=False,
    )
    engines = create_engines(settings)
    try:
        async with engines.write.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE blobs (b BLOB)")
            await conn.exec_driver_sql(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000) "
                "INSERT INTO blobs SELECT randomblob(3000) FROM n"  # a page each: about 24 MiB
            )
        before = _sqlite_memory_used()

        async def scan(held: asyncio.Barrier) -> None:
            async with engines.read.connect() as conn:
                await conn.exec_driver_sql("SELECT sum(length(b)) FROM blobs")
                await held.wait()  # four connections at once, not one reused four times

        barrier = asyncio.Barrier(4)
        await asyncio.gather(*(scan(barrier) for _ in range(4)))
        grown_mib = (_sqlite_memory_used() - before) / 2**20
    finally:
        await engines.dispose()
        sqlite3.connect(":memory:").execute("PRAGMA soft_heap_limit=0").close()  # process-wide
    if limit_mib:
        assert grown_mib < 2 * limit_mib
    else:
        assert grown_mib > 40
