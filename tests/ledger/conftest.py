"""Ledger fixtures: each store test runs on SQLite (a temporary file) and on PostgreSQL (a fresh schema).

PostgreSQL is the server at 127.0.0.1:5432 (database `test`, or LEDGER_TEST_PG_URL). Each test gets
its own schema, dropped afterwards, so suites sharing the database do not collide. When the server is
unreachable the PostgreSQL cases are skipped locally and fail under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
import pytest

from ledger_svc import validation
from ledger_svc.server import create_server
from ledger_svc.settings import LedgerSettings
from ledger_svc.store import LedgerStore
from llmroute.ledger.v1 import ledger_pb2_grpc
from service_kit.server import RunningServer
from tests.ledger.ledger_helpers import now_us

PG_URL = os.environ.get("LEDGER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_SQLALCHEMY_URL = PG_URL.replace("postgresql://", "postgresql+asyncpg://", 1)

_pg_state: dict[str, str | None] = {}


async def _pg_unavailable() -> str | None:
    """None when PostgreSQL answers, else why not (checked once per session)."""
    if "reason" not in _pg_state:
        try:
            conn = await asyncpg.connect(PG_URL, timeout=5)
            await conn.close()
            _pg_state["reason"] = None
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            _pg_state["reason"] = f"PostgreSQL at {PG_URL} is unreachable: {error}"
    return _pg_state["reason"]


async def require_postgres() -> None:
    reason = await _pg_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " (CI=true: the PostgreSQL tests must run)")
    pytest.skip(reason)


async def _pg_execute(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Backend:
    """One database for one test: build settings pointing at it."""

    name: str
    url: str
    schema: str | None = None

    def settings(self, **overrides: object) -> LedgerSettings:
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "port": 0,
            "database_url": self.url,
            "database_schema": self.schema,
            "log_json": False,
            "log_level": "WARNING",
            "retention_interval_seconds": 0,
        }
        values.update(overrides)
        return LedgerSettings(**values)  # type: ignore[arg-type]

    def env(self) -> dict[str, str]:
        """The same database for a ledger subprocess (LEDGER_* variables)."""
        env = {"LEDGER_DATABASE_URL": self.url, "LEDGER_RETENTION_INTERVAL_SECONDS": "0"}
        if self.schema:
            env["LEDGER_DATABASE_SCHEMA"] = self.schema
        return env


@contextlib.asynccontextmanager
async def _scratch_schema() -> AsyncIterator[Backend]:
    await require_postgres()
    schema = f"ledger_test_{uuid.uuid4().hex[:12]}"
    try:
        yield Backend("postgresql", PG_SQLALCHEMY_URL, schema)
    finally:
        await _pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
async def pg_backend() -> AsyncIterator[Backend]:
    async with _scratch_schema() as backend:
        yield backend


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Backend:
    return Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
        return
    async with _scratch_schema() as pg:
        yield pg


@dataclass
class Clock:
    """A ledger's clock in a test (microseconds since the epoch): the system's, moved by `offset_us`."""

    offset_us: int = 0

    def __call__(self) -> int:
        return now_us() + self.offset_us

    def advance(self, seconds: float) -> None:
        self.offset_us += int(seconds * 1_000_000)

    @classmethod
    def midday(cls) -> Clock:
        """Running from 12:00 UTC on the 15th of this month: "today", this day's and this month's
        budget periods hold the twelve hours before, whatever the time of day the test runs at."""
        real = now_us()
        noon = datetime.fromtimestamp(real / 1_000_000, UTC).replace(
            day=15, hour=12, minute=0, second=0, microsecond=0
        )
        return cls(offset_us=int(noon.timestamp()) * 1_000_000 - real)


@dataclass
class Ledger:
    """An in-process ledger server and a stub to it."""

    running: RunningServer
    store: LedgerStore
    channel: grpc.aio.Channel
    stub: ledger_pb2_grpc.LedgerServiceAsyncStub
    settings: LedgerSettings
    clock: Clock  # what the ledger takes for now: records "a minute ago" are at clock() - 60 s

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"


async def start_ledger(settings: LedgerSettings, clock: Clock | None = None) -> Ledger:
    clock = clock or Clock()
    store = await LedgerStore.open(settings, clock=clock)
    running = await create_server(settings, store)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return Ledger(running, store, channel, ledger_pb2_grpc.LedgerServiceStub(channel), settings, clock)


async def stop_ledger(ledger: Ledger) -> None:
    await ledger.channel.close()
    await ledger.running.stop(0)


@pytest.fixture
async def ledger_settings(backend: Backend) -> LedgerSettings:
    return backend.settings()


@pytest.fixture
async def ledger(ledger_settings: LedgerSettings) -> AsyncIterator[Ledger]:
    running = await start_ledger(ledger_settings)
    yield running
    await stop_ledger(running)


@pytest.fixture
def midday(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A clock at 12:00 UTC on the 15th of this month, and running on, for tests of "today" and of daily
    and monthly budgets, which must pass at midnight too: in-process ledgers' RPCs read it (through
    ledger_svc.validation.now_us), and their store reads it when start_ledger is given it."""
    clock = Clock.midday()
    monkeypatch.setattr(validation, "now_us", clock)
    return clock


@pytest.fixture
async def midday_ledger(ledger_settings: LedgerSettings, midday: Clock) -> AsyncIterator[Ledger]:
    running = await start_ledger(ledger_settings, midday)
    yield running
    await stop_ledger(running)


@pytest.fixture
async def store(ledger_settings: LedgerSettings) -> AsyncIterator[LedgerStore]:
    opened = await LedgerStore.open(ledger_settings)
    yield opened
    await opened.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
