"""Crashes and outages: kill -9 of the ledger during ingest, two replicas and two writers on one
PostgreSQL, the ledger down under load while the reporter spools, a router killed and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from ledger_client import LedgerReporter
from llmroute.common.v1 import common_pb2 as C
from llmroute.ledger.v1 import ledger_pb2 as L
from llmroute.ledger.v1 import ledger_pb2_grpc
from tests.ledger.conftest import Backend, Ledger, free_port, start_ledger, stop_ledger
from tests.ledger.ledger_helpers import now_us, record, reference
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
MIN = 60_000_000


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "gen"), env.get("PYTHONPATH", "")])
    return env


class LedgerProcess:
    """`python -m ledger_svc` as a child process; its port comes from the server_started log line."""

    def __init__(self, backend: Backend) -> None:
        self._env = _env(
            {**backend.env(), "LEDGER_PORT": "0", "LEDGER_LOG_JSON": "true", "LEDGER_LOG_LEVEL": "INFO"}
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ledger_svc", env=self._env, cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        lines: list[bytes] = []
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
            if not line:
                raise RuntimeError("ledger exited before serving:\n" + b"".join(lines).decode())
            lines.append(line)
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "server_started":
                    self.port = int(event["port"])
                    break
        self._drain = asyncio.create_task(self._discard(self.proc.stdout))

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        if self._drain:
            await self._drain

    async def terminate(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        if self._drain:
            await self._drain


@contextlib.asynccontextmanager
async def stub_to(port: int) -> AsyncIterator[ledger_pb2_grpc.LedgerServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield ledger_pb2_grpc.LedgerServiceStub(channel)


async def settled_requests(stub: ledger_pb2_grpc.LedgerServiceAsyncStub) -> int:
    """The ledger's request count once it stops moving: a batch a killed client had in flight is
    still ingested (and acknowledged to nobody) after the kill."""
    counts: list[int] = []
    while len(counts) < 3 or len(set(counts[-3:])) > 1:
        counts.append((await stub.GetStats(L.GetStatsRequest())).totals.requests)
        await asyncio.sleep(0.2)
    return counts[-1]


async def exported_ids(stub: ledger_pb2_grpc.LedgerServiceAsyncStub) -> list[tuple[str, int]]:
    text = b"".join([r.chunk async for r in stub.ExportRecords(L.ExportRecordsRequest())]).decode()
    return [(row["request_id"], row["attempt"]) for row in map(json.loads, text.splitlines())]


async def test_kill_9_during_ingest_loses_no_acknowledged_record(backend: Backend) -> None:
    ledger = LedgerProcess(backend)
    await ledger.start()
    acked: set[str] = set()
    sent: list[list[str]] = []
    at = now_us() - MIN
    try:
        async with stub_to(ledger.port) as stub:

            async def writer(w: int) -> None:
                for i in range(10_000):
                    ids = [f"k{w}-{i}-{j}" for j in range(100)]
                    sent.append(ids)
                    batch = [record(rid, 1, at=at, cost=0.000003, final=True) for rid in ids]
                    try:
                        await stub.RecordUsage(L.RecordUsageRequest(records=batch), timeout=10)
                    except grpc.aio.AioRpcError:
                        return
                    acked.update(ids)
                    if len(acked) >= 2000:
                        enough.set()

            enough = asyncio.Event()
            writers = [asyncio.create_task(writer(w)) for w in range(4)]
            await asyncio.wait_for(enough.wait(), 60)
            await ledger.kill()  # mid-stream: several batches are in flight
            await asyncio.gather(*writers)
        assert len(sent) * 100 > len(acked)  # some batches were cut off
        await ledger.start()
        async with stub_to(ledger.port) as stub:
            stored = await exported_ids(stub)
            stats = await stub.GetStats(L.GetStatsRequest())
    finally:
        await ledger.terminate()
    ids = {rid for rid, _ in stored}
    assert len(ids) == len(stored)
    assert acked <= ids
    for batch in sent:  # each batch is all or nothing
        assert len(ids.intersection(batch)) in (0, len(batch))
    # The rollups were committed with the records: the figures match the raw rows exactly.
    assert (stats.totals.requests, stats.totals.attempts) == (len(ids), len(ids))
    assert stats.totals.cost_usd == len(ids) * 3000 / 1e9


@pytest.mark.postgres
async def test_two_replicas_and_two_writers_reconcile_exactly(pg_backend: Backend) -> None:
    settings = pg_backend.settings()
    replicas = [await start_ledger(settings), await start_ledger(settings)]
    try:
        at = now_us() - 30 * MIN
        rnd = random.Random(5)
        records = []
        for i in range(600):
            n = rnd.choice([1, 1, 2, 3])
            for a in range(1, n + 1):
                records.append(
                    record(f"p{i}", a, at=at + i * 1000, caller=rnd.choice(["a", "b"]), model=rnd.choice(["x", "y"]),
                           outcome=C.ATTEMPT_OUTCOME_OK if a == n else C.ATTEMPT_OUTCOME_ESCALATED,
                           cost=rnd.randrange(1, 10**6) / 1e9 * 997, baseline=0.01 if a == n else 0.0,
                           classifier=0.00001 if a == 1 else 0.0, final=a == n, total_ms=rnd.uniform(10, 900))
                )  # fmt: skip

        async def writer(replica: Ledger, order: list[L.UsageRecord]) -> tuple[int, int]:
            inserted = duplicates = 0
            for k in range(0, len(order), 53):
                r = await replica.stub.RecordUsage(L.RecordUsageRequest(records=order[k : k + 53]))
                inserted, duplicates = inserted + r.inserted, duplicates + r.duplicates
            return inserted, duplicates

        # Both writers deliver everything (the same records, in different orders, split differently:
        # as two routers replaying overlapping spools would), each through its own replica, twice over.
        shuffled = records[:]
        rnd.shuffle(shuffled)
        results = await asyncio.gather(
            writer(replicas[0], records), writer(replicas[1], shuffled),
            writer(replicas[1], records[::-1]), writer(replicas[0], shuffled[::-1]),
        )  # fmt: skip
        assert sum(i for i, _ in results) == len(records)
        assert sum(d for _, d in results) == 3 * len(records)
        views = [
            await r.stub.GetStats(L.GetStatsRequest(group_by=[L.GROUP_BY_CALLER, L.GROUP_BY_MODEL]))
            for r in replicas
        ]
        assert views[0].totals == views[1].totals and views[0].breakdowns == views[1].breakdowns
        reference(records, 0, now_us())[""].check(views[0].totals)
        for dim in (L.GROUP_BY_CALLER, L.GROUP_BY_MODEL):
            want = reference(records, 0, now_us(), dim)
            got = {g.key: g.totals for b in views[0].breakdowns if b.group_by == dim for g in b.groups}
            assert set(got) == set(want)
            for key, totals in got.items():
                want[key].check(totals)
        assert sorted(await exported_ids(replicas[0].stub)) == sorted(
            (r.request_id, r.attempt) for r in records
        )
    finally:
        for replica in replicas:
            await stop_ledger(replica)


class DepthRecorder(grpc.aio.UnaryUnaryClientInterceptor):
    """Remembers the spool depth the reporter sent with each RecordUsage call."""

    def __init__(self) -> None:
        self.depths: list[int] = []

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        if isinstance(request, L.RecordUsageRequest):
            self.depths.append(request.sender_spool_depth)
        return await continuation(client_call_details, request)


async def test_ledger_down_under_load_then_back_drains_exactly_once(backend: Backend, tmp_path: Path) -> None:
    port = free_port()
    recorder = DepthRecorder()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        interceptors=[recorder],
        options=[("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 300)],
    )
    reporter = LedgerReporter(
        f"127.0.0.1:{port}", tmp_path / "spool.db", sender="router-1", batch_size=100,
        flush_interval=0.01, backoff_initial=0.05, backoff_max=0.3, channel=channel,
    )  # fmt: skip
    await reporter.start()
    at = now_us() - MIN
    submitted = 0

    def submit(n: int) -> None:
        nonlocal submitted
        for _ in range(n):
            reporter.submit([record(f"s{submitted}", 1, at=at, cost=0.000002, final=True),
                             record(f"s{submitted}", 2, at=at, cost=0.000001)])  # fmt: skip
            submitted += 1

    ledger: Ledger | None = None
    try:
        submit(300)  # the ledger is down
        await eventually(lambda: reporter.stats().failures > 0, "the reporter failing to send")
        assert reporter.depth == 600 and reporter.stats().last_error == "UNAVAILABLE"
        ledger = await start_ledger(backend.settings(port=port))
        for _ in range(20):  # load keeps coming while the spool drains
            submit(25)
            await asyncio.sleep(0.01)
        assert await reporter.flush(30)
        stats = await ledger.stub.GetStats(L.GetStatsRequest())
        assert (stats.totals.requests, stats.totals.attempts) == (submitted, 2 * submitted)
        assert stats.totals.cost_usd == submitted * 3000 / 1e9
        assert reporter.stats().sent == 2 * submitted and reporter.stats().duplicates == 0
        assert stats.spool_depth == 0  # the last batch reported an empty spool
        sent = [d for d in recorder.depths]
        assert max(sent) > 0 and sent[-1] == 0
    finally:
        await reporter.close()
        await channel.close()
        if ledger is not None:
            await stop_ledger(ledger)


async def test_a_killed_router_replays_its_spool_once(sqlite_backend: Backend, tmp_path: Path) -> None:
    ledger = await start_ledger(sqlite_backend.settings())
    spool = tmp_path / "router-spool.db"
    acked: set[str] = set()
    try:
        # The ledger is up while the worker runs: it is killed with some records sent, some
        # acknowledged by the ledger but not yet deleted from the spool, and some not sent yet.
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.ledger.reporter_worker", ledger.address, str(spool), "w", "3000",
            env=_env({}), cwd=REPO, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert worker.stdout is not None
        while len(acked) < 1500:
            line = await asyncio.wait_for(worker.stdout.readline(), 30)
            assert line, "the worker exited early"
            if line.startswith(b"acked "):
                acked.add(line.split()[1].decode())
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
        before = await asyncio.wait_for(settled_requests(ledger.stub), 30)
        assert before < 3000
        # The router restarts with the same spool.
        reporter = LedgerReporter(ledger.address, spool, sender="worker-w", flush_interval=0.01)
        leftover = reporter.depth
        await reporter.start()
        assert await reporter.flush(30)
        await reporter.close()
        stored = await exported_ids(ledger.stub)
        ids = {rid for rid, _ in stored}
        assert len(stored) == len(ids)  # nothing twice
        assert acked <= ids  # nothing acknowledged lost
        assert len(ids) == before + leftover - reporter.stats().duplicates
        after = await ledger.stub.GetStats(L.GetStatsRequest())
        assert after.totals.requests == len(ids) and after.totals.attempts == len(ids)
    finally:
        await stop_ledger(ledger)


async def test_the_reporter_spools_while_the_ledger_is_absent_and_survives_a_restart(
    sqlite_backend: Backend, tmp_path: Path
) -> None:
    port = free_port()
    spool = tmp_path / "spool.db"
    first = LedgerReporter(f"127.0.0.1:{port}", spool, sender="r", backoff_max=0.2)
    await first.start()
    at = now_us() - MIN
    first.submit([record(f"x{i}", 1, at=at, cost=0.001, final=True) for i in range(50)])
    await first.close(drain_timeout=0.2)  # gives up: the ledger is not there
    assert first.depth == 50
    second = LedgerReporter(f"127.0.0.1:{port}", spool, sender="r", backoff_max=0.2)
    assert second.depth == 50
    ledger = await start_ledger(sqlite_backend.settings(port=port))
    try:
        await second.start()
        assert await second.flush(20)
        await second.close()
        stats = await ledger.stub.GetStats(L.GetStatsRequest())
        assert (stats.totals.requests, stats.totals.cost_usd) == (50, 0.05)
    finally:
        await stop_ledger(ledger)


async def test_refused_records_go_to_dead_letters_and_the_rest_is_delivered(
    sqlite_backend: Backend, tmp_path: Path
) -> None:
    ledger = await start_ledger(sqlite_backend.settings(max_batch_records=20))
    reporter = LedgerReporter(ledger.address, tmp_path / "spool.db", batch_size=100, flush_interval=0.01)
    try:
        await reporter.start()
        at = now_us() - MIN
        good = [record(f"g{i}", 1, at=at, cost=0.001) for i in range(50)]
        bad = record("bad", 1, at=at)
        bad.usage.cost_usd = -1.0
        reporter.submit(good[:25])
        reporter.submit([bad])
        reporter.submit(good[25:])
        assert await reporter.flush(20)
        stats = await ledger.stub.GetStats(L.GetStatsRequest())
        assert (stats.totals.requests, stats.totals.cost_usd) == (50, 0.05)
        assert reporter.stats().dead_letters == 1 and reporter.depth == 0
    finally:
        await reporter.close()
        await stop_ledger(ledger)


async def test_an_unreachable_database_is_unavailable_not_internal() -> None:
    from ledger_svc.db import create_engines
    from ledger_svc.server import create_server
    from ledger_svc.settings import LedgerSettings
    from ledger_svc.store import LedgerStore
    from tests.rich_status import details

    settings = LedgerSettings(
        port=0, database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gone"
    )
    running = await create_server(settings, LedgerStore(create_engines(settings), settings))
    try:
        async with stub_to(running.port) as stub:
            for call in (
                stub.GetStats(L.GetStatsRequest()),
                stub.RecordUsage(L.RecordUsageRequest(records=[record("u", 1, at=now_us() - MIN)])),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                found = details(caught.value)
                assert (found.code, found.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
    finally:
        await running.stop(0)
