"""A full spool disk: nothing paid is lost or turned into an error, and no new paid work starts.

The spool lives on a small tmpfs the test mounts and fills (as root, as on the development and CI
machines); where mounting is not allowed, SQLite's own page limit makes the same SQLITE_FULL error.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ledger_client import LedgerReporter
from ledger_svc.settings import LedgerSettings
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2 as L
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.server import create_server as create_router
from tests.ledger.conftest import start_ledger, stop_ledger
from tests.ledger.ledger_helpers import now_us, record
from tests.rich_status import details
from tests.waiting import eventually


@dataclass
class Disk:
    directory: Path
    fill: Callable[[], None]
    free: Callable[[], None]
    tmpfs: bool


@contextlib.contextmanager
def small_disk(tmp_path: Path, reporter_of: Callable[[], LedgerReporter | None]) -> Iterator[Disk]:
    directory = tmp_path / "spool-disk"
    directory.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)], capture_output=True
        ).returncode
        == 0
    )
    filler = directory / "filler"

    def fill() -> None:
        if mounted:
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
        else:  # the spool's connection may not grow the file any further: SQLITE_FULL, as on a full disk
            spool = reporter_of()._spool._db  # type: ignore[union-attr]
            pages = spool.execute("PRAGMA page_count").fetchone()[0]
            spool.execute(f"PRAGMA max_page_count = {pages}")

    def free() -> None:
        if mounted:
            filler.unlink(missing_ok=True)
        else:
            reporter_of()._spool._db.execute("PRAGMA max_page_count = 1073741823")  # type: ignore[union-attr]

    try:
        yield Disk(directory, fill, free, mounted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def batch(start: int, n: int) -> list[L.UsageRecord]:
    return [
        record(f"full-{i}", 1, at=now_us() - 1000, run_id=f"r{i}", cost=0.001, final=True, error="x" * 400)
        for i in range(start, start + n)
    ]


async def test_a_full_spool_holds_records_in_memory_and_loses_none(tmp_path: Path) -> None:
    reporter: LedgerReporter | None = None
    settings = LedgerSettings(port=0, database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    ledger = await start_ledger(settings)
    port = ledger.running.port
    await stop_ledger(ledger)  # the ledger is down: records pile up in the spool
    with small_disk(tmp_path, lambda: reporter) as disk:
        reporter = LedgerReporter(
            f"127.0.0.1:{port}", disk.directory / "spool.db", flush_interval=0.01, backoff_max=0.2
        )
        await reporter.start()
        reporter.submit(batch(0, 200))
        assert reporter.accepting() and reporter.stats().depth == 200
        disk.fill()
        for k in range(200, 3000, 200):  # paid answers keep coming while the disk is full
            reporter.submit(batch(k, 200))  # never raises
        stats = reporter.stats()
        assert not reporter.accepting() and stats.held > 0 and "full" in stats.spool_error
        assert stats.depth + stats.held == 3000
        ledger = await start_ledger(settings.model_copy(update={"port": port}))  # the ledger is back
        try:
            # Held records go straight to the ledger, the disk still full.
            await eventually(lambda: reporter.stats().held == 0, "the held records sent", timeout=60)
            assert not reporter.accepting()
            disk.free()
            await eventually(reporter.accepting, "the spool taking a write again")
            reporter.submit(batch(3000, 10))
            assert await reporter.flush(30)
            totals = (await ledger.stub.GetStats(L.GetStatsRequest())).totals
            assert totals.attempts == 3010  # every record, once
            await reporter.close()
        finally:
            await stop_ledger(ledger)


async def test_the_router_refuses_new_paid_work_while_it_cannot_record(
    tmp_path: Path, classifier_address: str, simulator_url: str
) -> None:
    from tests.router.conftest import router_settings

    reporter: LedgerReporter | None = None
    ledger = await start_ledger(
        LedgerSettings(port=0, database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    )
    with small_disk(tmp_path, lambda: reporter) as disk:
        reporter = LedgerReporter(
            f"127.0.0.1:{ledger.running.port}", disk.directory / "spool.db", flush_interval=0.01
        )
        router = await create_router(
            router_settings(
                classifier_address, simulator_url, tmp_path, ledger_address=f"127.0.0.1:{ledger.running.port}"
            ),
            usage_sink=reporter,
        )
        request = router_pb2.RouteRequest(
            messages=[common_pb2.ChatMessage(role="user", content="Say hi")], caller="app"
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                assert (await stub.Route(request)).content
                disk.fill()
                reporter.submit(batch(0, 50))  # another request's records find the disk full
                assert not reporter.accepting()
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.Route(request)
                found = details(raised.value)
                assert found.code == grpc.StatusCode.UNAVAILABLE and found.reason == "USAGE_NOT_RECORDABLE"
                await wait_health(channel, "NOT_SERVING")
                disk.free()
                await wait_health(channel, "SERVING")
                assert (await stub.Route(request)).content
            assert await reporter.flush(30)
            totals = (await ledger.stub.GetStats(L.GetStatsRequest())).totals
            assert totals.attempts == 52  # two answers and the 50 records, nothing lost
        finally:
            await router.stop(0)
            await stop_ledger(ledger)


async def wait_health(channel: grpc.aio.Channel, status: str) -> None:
    from grpc_health.v1 import health_pb2

    from service_kit import health_rpc

    health = health_rpc.check_async(channel)

    async def reached() -> bool:
        reply = await health(health_pb2.HealthCheckRequest(service=""))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status) == status

    await eventually(reached, f"health {status}")


@pytest.fixture
async def classifier_address() -> AsyncIterator[str]:
    from classifier_svc.server import create_server as create_classifier
    from classifier_svc.settings import ClassifierSettings

    running = await create_classifier(ClassifierSettings(port=0, strategy="heuristic", cache_enabled=False))
    yield f"127.0.0.1:{running.port}"
    await running.stop(0)
