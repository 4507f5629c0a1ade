"""Database engines for SQLite (WAL) and PostgreSQL, and the few places where the dialects differ."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from ledger_svc.settings import LedgerSettings


@dataclass
class Engines:
    """`write` runs ingest, migrations and admin writes; `read` runs stats, exports and watchers.

    On SQLite the writer is one connection whose transactions begin IMMEDIATE (no lock-upgrade
    deadlocks, one writer at a time, as SQLite wants); readers see WAL snapshots concurrently.
    On PostgreSQL both share one pool; reads run REPEATABLE READ so one GetStats sees one snapshot.
    `budget` is a small pool of its own for CheckBudget and GetBudgets: long reports, exports and
    watchers cannot starve the check every routed request depends on.
    """

    write: AsyncEngine
    read: AsyncEngine
    dialect: str
    budget: AsyncEngine | None = None

    @property
    def budgets(self) -> AsyncEngine:
        return self.budget or self.read

    async def dispose(self) -> None:
        await self.write.dispose()
        if self.read is not self.write:
            await self.read.dispose()
        if self.budget is not None:
            await self.budget.dispose()


BUDGET_POOL_SIZE = 2


def insert_for(dialect: str, table: sa.Table) -> Any:
    """INSERT with `on_conflict_do_nothing`/`on_conflict_do_update`: the same API on both dialects."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _sqlite_engine(
    url: sa.URL, settings: LedgerSettings, *, writer: bool, pool_size: int | None = None
) -> AsyncEngine:
    engine = create_async_engine(
        url,
        poolclass=AsyncAdaptedQueuePool,
        pool_size=1 if writer else pool_size or settings.database_pool_size,
        max_overflow=0,
        pool_pre_ping=False,
    )
    synchronous = settings.sqlite_synchronous
    cache_kib = settings.sqlite_cache_mib * 1024
    heap_limit = settings.sqlite_memory_mib * 1024 * 1024

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see the "begin" hook).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.execute(f"PRAGMA cache_size=-{cache_kib}")  # negative: KiB, not pages
        cursor.execute(f"PRAGMA soft_heap_limit={heap_limit}")  # process-wide: the same for each
        cursor.close()

    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


def create_engines(settings: LedgerSettings) -> Engines:
    url = make_url(settings.database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:" or url.query.get("mode") == "memory":
            raise ValueError(
                "the ledger needs a SQLite file (WAL mode); in-memory databases are not supported"
            )
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return Engines(
            write=_sqlite_engine(url, settings, writer=True),
            read=_sqlite_engine(url, settings, writer=False),
            dialect="sqlite",
            budget=_sqlite_engine(url, settings, writer=False, pool_size=BUDGET_POOL_SIZE),
        )
    if backend == "postgresql":
        server_settings = {"application_name": "llmroute-ledger"}
        if settings.database_schema:
            server_settings["search_path"] = settings.database_schema
        engine = create_async_engine(
            url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_pool_size,
            pool_pre_ping=True,
            connect_args={"server_settings": server_settings},
        )
        budget = create_async_engine(
            url,
            pool_size=BUDGET_POOL_SIZE,
            max_overflow=0,
            pool_pre_ping=True,
            connect_args={
                "server_settings": {**server_settings, "application_name": "llmroute-ledger-budgets"}
            },
        )
        return Engines(
            write=engine,
            read=engine.execution_options(isolation_level="REPEATABLE READ"),
            dialect="postgresql",
            budget=budget,
        )
    raise ValueError(f"unsupported database {backend!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://")


async def ensure_schema(engines: Engines, schema: str | None) -> None:
    """PostgreSQL: create the configured schema (its name is validated by the settings)."""
    if engines.dialect != "postgresql" or not schema:
        return
    async with engines.write.begin() as conn:
        # CREATE SCHEMA IF NOT EXISTS races with itself when replicas start together.
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('llmroute.ledger.create_schema'))"))
        await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
