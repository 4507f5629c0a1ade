"""Ledger: ingest rate over gRPC and GetStats latency over a day of 1,000,000 records, SQLite and PostgreSQL.

For each database:
1. bulk-load a day of records (raw records and request states through the drivers' bulk paths,
   then the hourly rollups rebuilt from them in SQL, as ingest would have left them);
2. time GetStats over that day: `last_minutes=1440` (rollups plus two partial hours from the raw
   tables) and an hour-aligned 24 h window (rollups only), default breakdowns (model, tier, caller),
   then with every breakdown and a caller filter;
3. time RecordUsage: four concurrent senders in a separate client process, batches of 500 records,
   on top of the loaded day (acknowledged = committed).
Also the router-side cost of LedgerReporter.submit() (durable spool append).

Run: `python -m benchmarks.ledger_bench` (part of `make bench`). PostgreSQL is the server at
LEDGER_BENCH_PG_URL (default postgresql+asyncpg://postgres@127.0.0.1:5432/test), in a scratch
schema dropped afterwards; it is skipped with a note when unreachable. Options: --records N,
--ingest N, --only sqlite|postgresql.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from ledger_client import LedgerReporter
from ledger_svc.records import to_nusd
from ledger_svc.schema import HOUR_US, latency_bucket, requests, usage_records
from ledger_svc.server import create_server
from ledger_svc.settings import LedgerSettings
from ledger_svc.store import LedgerStore
from llmroute.common.v1 import common_pb2 as C
from llmroute.ledger.v1 import ledger_pb2 as L
from llmroute.ledger.v1 import ledger_pb2_grpc
from service_kit.logging import configure_logging

PG_URL = os.environ.get("LEDGER_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
CALLERS = [f"team-{i:02d}" for i in range(20)]
MODELS: dict[int, list[str]] = {
    C.TIER_SIMPLE: ["groq/openai/gpt-oss-20b", "gpt-5-nano"],
    C.TIER_MODERATE: ["gpt-5-mini", "claude-haiku-4-5"],
    C.TIER_COMPLEX: ["gpt-5", "claude-sonnet-4-5"],
    C.TIER_REASONING: ["o3", "claude-opus-4-1"],
}
CATEGORIES = list(range(1, 12))
RECORD_COLUMNS = [c.name for c in usage_records.columns]
REQUEST_COLUMNS = [c.name for c in requests.columns]


def _attempts(rnd: random.Random, request_id: str, at: int) -> list[dict[str, Any]]:
    """One request's attempts as table rows: mostly one attempt, some fallbacks and escalations."""
    caller, category = rnd.choice(CALLERS), rnd.choice(CATEGORIES)
    tier: int = rnd.choice(
        [C.TIER_SIMPLE] * 4 + [C.TIER_MODERATE] * 3 + [C.TIER_COMPLEX] * 2 + [C.TIER_REASONING]
    )
    n = rnd.choices([1, 2, 3], weights=[80, 15, 5])[0]
    cache_hit = rnd.random() < 0.25
    rows = []
    for a in range(1, n + 1):
        last = a == n
        outcome = (
            C.ATTEMPT_OUTCOME_OK
            if last
            else rnd.choice([C.ATTEMPT_OUTCOME_PROVIDER_ERROR, C.ATTEMPT_OUTCOME_ESCALATED])
        )
        input_tokens, output_tokens = rnd.randrange(50, 4000), rnd.randrange(0, 1500)
        cost = (input_tokens * 0.15 + output_tokens * 0.6) * tier / 1e6
        rows.append(
            {
                "request_id": request_id, "attempt": a, "ts": at + a * 1000, "caller": caller,
                "category": category, "tier": tier, "score": rnd.random(),
                "classifier_source": C.CLASSIFIER_SOURCE_CACHE if cache_hit else C.CLASSIFIER_SOURCE_LOCAL_MODEL,
                "classifier_version": "bench-1", "model": rnd.choice(MODELS[tier]), "provider": "sim",
                "outcome": outcome, "error": "" if last else "simulated failure",
                "input_tokens": input_tokens, "output_tokens": output_tokens, "cached_input_tokens": 0,
                "reasoning_tokens": 0, "cost_nusd": to_nusd(cost),
                "baseline_nusd": to_nusd((input_tokens * 1.25 + output_tokens * 10) / 1e6) if last else 0,
                "classifier_nusd": 0 if a > 1 or cache_hit else 20_000, "price_map_version": "bench",
                "price_known": True, "classify_ms": 3.0 if a == 1 else 0.0, "provider_ms": rnd.uniform(100, 3000),
                "total_ms": rnd.lognormvariate(6.5, 0.8) if last else 0.0, "cache_hit": cache_hit, "final": last,
                "received_ts": at + 5000, "judge_nusd": 0, "run_id": f"run-{request_id}",
                "baseline_reasoning_nusd": 0, "policy_version": "v1-bench", "family": "open",
                "exploration": False, "judge_verdict": 0, "simulated": True,
            }
        )  # fmt: skip
        if outcome == C.ATTEMPT_OUTCOME_ESCALATED and tier < C.TIER_REASONING:
            tier += 1
    return rows


def _request_state(rows: list[dict[str, Any]]) -> dict[str, Any]:
    first, final = rows[0], rows[-1]
    return {
        "request_id": first["request_id"], "run_id": first["run_id"], "first_ts": first["ts"], "home_ts": first["ts"],
        "caller": first["caller"], "model": first["model"], "tier": first["tier"], "category": first["category"],
        "cache_hit": first["cache_hit"], "attempt_count": len(rows),
        "escalated": any(r["outcome"] == C.ATTEMPT_OUTCOME_ESCALATED for r in rows),
        "total_ms": final["total_ms"], "lat_bucket": latency_bucket(final["total_ms"]),
        "policy_version": first["policy_version"],
    }  # fmt: skip


def day_of_records(n: int, end_us: int, seed: int = 1) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """About `n` attempts spread over the 24 h before `end_us`, as (records, request states) tuples."""
    rnd = random.Random(seed)
    records: list[tuple[Any, ...]] = []
    states: list[tuple[Any, ...]] = []
    i = 0
    while len(records) < n:
        rows = _attempts(rnd, f"bulk-{i}", end_us - 24 * HOUR_US + rnd.randrange(24 * HOUR_US - 10_000))
        records.extend(tuple(r[c] for c in RECORD_COLUMNS) for r in rows)
        state = _request_state(rows)
        states.append(tuple(state[c] for c in REQUEST_COLUMNS))
        i += 1
    # Stored in arrival order, as ingest would have written them (it matters for range scans).
    ts_at, home_at = RECORD_COLUMNS.index("ts"), REQUEST_COLUMNS.index("home_ts")
    records.sort(key=lambda r: r[ts_at])
    states.sort(key=lambda r: r[home_at])
    return records, states


def ingest_batches(n: int, batch: int, end_us: int) -> list[L.RecordUsageRequest]:
    rnd = random.Random(2)
    out: list[L.UsageRecord] = []
    i = 0
    while len(out) < n:
        for row in _attempts(rnd, f"live-{i}", end_us - rnd.randrange(3600 * 1_000_000)):
            r = L.UsageRecord(
                request_id=row["request_id"], attempt=row["attempt"], caller=row["caller"],
                category=row["category"], tier=row["tier"], score=row["score"],
                classifier_source=row["classifier_source"], classifier_version=row["classifier_version"],
                model=row["model"], provider=row["provider"], outcome=row["outcome"], error=row["error"],
                usage=C.Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
                              cost_usd=row["cost_nusd"] / 1e9, baseline_cost_usd=row["baseline_nusd"] / 1e9),
                classifier_cost_usd=row["classifier_nusd"] / 1e9, price_map_version="bench", price_known=True,
                classify_ms=row["classify_ms"], provider_ms=row["provider_ms"], total_ms=row["total_ms"],
                cache_hit=row["cache_hit"], final=row["final"], run_id=row["run_id"],
            )  # fmt: skip
            r.time.FromMicroseconds(row["ts"])
            out.append(r)
        i += 1
    return [
        L.RecordUsageRequest(records=out[k : k + batch], sender="bench") for k in range(0, len(out), batch)
    ]


async def _bulk_load(
    store: LedgerStore,
    settings: LedgerSettings,
    records: list[tuple[Any, ...]],
    states: list[tuple[Any, ...]],
) -> None:
    if store.dialect == "sqlite":
        path = settings.database_url.split("///", 1)[1]

        def load() -> None:
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA synchronous=OFF")
            db.execute("BEGIN")
            db.executemany(
                f"INSERT INTO usage_records ({','.join(RECORD_COLUMNS)}) VALUES ({','.join('?' * len(RECORD_COLUMNS))})",
                records,
            )
            db.executemany(
                f"INSERT INTO requests ({','.join(REQUEST_COLUMNS)}) VALUES ({','.join('?' * len(REQUEST_COLUMNS))})",
                states,
            )
            db.execute("COMMIT")
            db.execute("ANALYZE")
            db.close()

        await asyncio.to_thread(load)
    else:
        conn = await asyncpg.connect(
            PG_URL.replace("+asyncpg", ""),
            server_settings={"search_path": settings.database_schema or "public"},
        )
        try:
            await conn.copy_records_to_table("usage_records", records=records, columns=RECORD_COLUMNS)
            await conn.copy_records_to_table("requests", records=states, columns=REQUEST_COLUMNS)
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
    await store.rebuild_rollups()
    if store.dialect == "postgresql":
        conn = await asyncpg.connect(
            PG_URL.replace("+asyncpg", ""),
            server_settings={"search_path": settings.database_schema or "public"},
        )
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()


async def _timed(call: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, float]:
    await call()  # warm caches and plans
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))]


async def bench_database(
    name: str, settings: LedgerSettings, n_records: int, n_ingest: int
) -> dict[str, Any]:
    result: dict[str, Any] = {"database": name}
    store = await LedgerStore.open(settings)
    running = await create_server(settings, store)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    stub = ledger_pb2_grpc.LedgerServiceStub(channel)
    try:
        now = time.time_ns() // 1000
        started = time.perf_counter()
        records, states = day_of_records(n_records, now)
        await _bulk_load(store, settings, records, states)
        result["load_s"] = time.perf_counter() - started
        result["records"] = len(records)
        del records, states

        last_day = L.GetStatsRequest(window=L.TimeWindow(last_minutes=1440))
        aligned = L.TimeWindow()
        aligned.since.FromMicroseconds((now // HOUR_US - 24) * HOUR_US)
        aligned.until.FromMicroseconds((now // HOUR_US) * HOUR_US)
        every = [L.GROUP_BY_MODEL, L.GROUP_BY_TIER, L.GROUP_BY_CALLER, L.GROUP_BY_CATEGORY, L.GROUP_BY_HOUR]
        check = await stub.GetStats(last_day)
        result["stats_requests"] = check.totals.requests
        result["stats_attempts"] = check.totals.attempts
        result["last_1440"] = await _timed(lambda: stub.GetStats(last_day), 20)
        result["aligned_24h"] = await _timed(lambda: stub.GetStats(L.GetStatsRequest(window=aligned)), 20)
        result["every_breakdown"] = await _timed(
            lambda: stub.GetStats(L.GetStatsRequest(window=L.TimeWindow(last_minutes=1440), group_by=every)),
            20,
        )
        result["one_caller"] = await _timed(
            lambda: stub.GetStats(
                L.GetStatsRequest(
                    window=L.TimeWindow(last_minutes=1440), group_by=every[:4], caller=CALLERS[3]
                )
            ),
            20,
        )

        # The load comes from another process, so the server's event loop is the ledger's alone.
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.ledger_bench", "--client", str(running.port), str(n_ingest),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await client.communicate()
        report = json.loads(out.decode().strip().splitlines()[-1])
        result["ingested"] = report["inserted"]
        result["ingest_per_s"] = report["per_s"]
        result["after_ingest_last_1440"] = await _timed(lambda: stub.GetStats(last_day), 10)
    finally:
        await channel.close()
        await running.stop(0)
    return result


async def ingest_client(port: int, n: int, clients: int = 4, batch: int = 500) -> None:
    """`--client PORT N`: send N fresh records in batches from `clients` concurrent senders; print the rate."""
    batches = ingest_batches(n, batch, time.time_ns() // 1000)
    queue: asyncio.Queue[L.RecordUsageRequest] = asyncio.Queue()
    for request in batches:
        queue.put_nowait(request)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)

        async def sender() -> int:
            inserted = 0
            while not queue.empty():
                reply = await stub.RecordUsage(queue.get_nowait(), timeout=120)
                inserted += reply.inserted
            return inserted

        started = time.perf_counter()
        inserted = sum(await asyncio.gather(*(sender() for _ in range(clients))))
        elapsed = time.perf_counter() - started
    print(json.dumps({"inserted": inserted, "per_s": inserted / elapsed}))


def bench_submit(directory: Path, fsync: bool, n: int = 3000) -> float:
    """Microseconds per LedgerReporter.submit() of one request's records (2 attempts)."""
    reporter = LedgerReporter("127.0.0.1:1", directory / f"spool-{fsync}.db", fsync=fsync)
    batch = [r for b in ingest_batches(2, 2, time.time_ns() // 1000)[:1] for r in b.records]
    started = time.perf_counter()
    for _ in range(n):
        reporter.submit(batch)
    per_call = (time.perf_counter() - started) / n * 1e6
    asyncio.run(reporter.close(drain_timeout=0))
    return per_call


async def _pg_schema() -> str | None:
    try:
        conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        print(f"PostgreSQL: skipped ({error})")
        return None
    await conn.close()
    return f"ledger_bench_{uuid.uuid4().hex[:8]}"


async def _drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _row(label: str, values: list[str]) -> str:
    return f"  {label:<44}" + "".join(f"{v:>18}" for v in values)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--ingest", type=int, default=50_000)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--client", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        await ingest_client(*args.client)
        return
    configure_logging("ledger-bench", "WARNING", json=False)
    results = []
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        base = {"port": 0, "log_level": "WARNING", "retention_interval_seconds": 0}
        if args.only in (None, "sqlite"):
            settings = LedgerSettings(database_url=f"sqlite+aiosqlite:///{tmp}/ledger.db", **base)  # type: ignore[arg-type]
            print("SQLite: loading ...", flush=True)
            results.append(
                await bench_database("SQLite (WAL, synchronous=FULL)", settings, args.records, args.ingest)
            )
        if args.only in (None, "postgresql"):
            schema = await _pg_schema()
            if schema:
                try:
                    settings = LedgerSettings(database_url=PG_URL, database_schema=schema, **base)  # type: ignore[arg-type]
                    print("PostgreSQL: loading ...", flush=True)
                    results.append(await bench_database("PostgreSQL 15", settings, args.records, args.ingest))
                finally:
                    await _drop_schema(schema)
        submit_normal = await asyncio.to_thread(bench_submit, Path(tmp), False)
        submit_fsync = await asyncio.to_thread(bench_submit, Path(tmp), True, 500)

    def ms(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.1f} / {pair[1]:.1f} ms"

    print(f"\nLedger benchmark ({os.cpu_count()} cores); GetStats times are p50 / p95 over 20 calls via gRPC")
    print(_row("", [r["database"].split(" ")[0] for r in results]))
    print(_row("records loaded (one day)", [f"{r['records']:,}" for r in results]))
    print(_row("bulk load + rollup rebuild", [f"{r['load_s']:.1f} s" for r in results]))
    print(_row("GetStats last_minutes=1440 (model,tier,caller)", [ms(r["last_1440"]) for r in results]))
    print(_row("GetStats hour-aligned 24 h", [ms(r["aligned_24h"]) for r in results]))
    print(_row("GetStats 1440 min, all 5 breakdowns", [ms(r["every_breakdown"]) for r in results]))
    print(_row("GetStats 1440 min, one caller, 4 breakdowns", [ms(r["one_caller"]) for r in results]))
    print(
        _row(
            "RecordUsage ingest (4 clients, batches of 500)",
            [f"{r['ingest_per_s']:,.0f} rec/s" for r in results],
        )
    )
    print(_row("GetStats last_minutes=1440 after ingest", [ms(r["after_ingest_last_1440"]) for r in results]))
    for r in results:
        assert r["stats_attempts"] >= r["records"] * 0.9, r  # the window really covers the loaded day
    print(
        f"\n  LedgerReporter.submit() (2 records, spool append): {submit_normal:.0f} µs; with fsync=True: {submit_fsync:.0f} µs"
    )


if __name__ == "__main__":
    asyncio.run(main())
