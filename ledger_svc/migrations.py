"""Versioned schema migrations, applied in order at start-up, each in the same transaction as its record.

Each version's DDL is in `ledger_svc.migration_steps`; this module holds the list of versions and
runs them. Rules for whoever adds one:
- never edit a released migration; add the next version (its step, and its line in MIGRATIONS);
- each migration defines the tables it creates *frozen*, in its step, not by importing `schema`
  (which describes the latest version and will move on);
- keep the DDL portable (SQLAlchemy constructs) or branch on `conn.dialect.name`.

Replicas starting together on PostgreSQL serialise on an advisory lock; on SQLite the migration runs
in a `BEGIN IMMEDIATE` transaction, which excludes other writers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger_svc import migration_steps as steps

log = structlog.get_logger()


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer ledger than this one; refusing to run against it."""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[AsyncConnection], Awaitable[None]]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "usage records, request states, hourly rollups with latency histograms", steps.v1),
    Migration(2, "budgets, feedback and sender spool reports", steps.v2),
    Migration(3, "the LLM judge's cost per attempt and per rollup", steps.v3),
    Migration(
        4, "records and request states keyed by caller and run; baseline reasoning; policy version", steps.v4
    ),
    Migration(5, "the feedback loop: exploration, judge verdicts, feedback runs, policy rollups", steps.v5),
    Migration(6, "budget reservations of calls in flight", steps.v6),
    Migration(7, "records answered by the bundled simulator", steps.v7),
    Migration(8, "API keys created over CreateKey, as digests", steps.v8),
)
LATEST = MIGRATIONS[-1].version

_migrations_table = sa.Table(
    "schema_migrations",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_ts", sa.BigInteger, nullable=False),
)


async def current_version(conn: AsyncConnection) -> int:
    exists = await conn.run_sync(lambda sync: sa.inspect(sync).has_table("schema_migrations"))
    if not exists:
        return 0
    return int(
        await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(_migrations_table.c.version), 0))) or 0
    )


async def migrate(engine: AsyncEngine, target: int | None = None) -> int:
    """Bring the database to `target` (default: the latest version); returns the version reached.

    `engine` must be the writer (on SQLite, its transactions begin IMMEDIATE).
    """
    target = LATEST if target is None else target
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                sa.text(
                    "SELECT pg_advisory_xact_lock(hashtext('llmroute.ledger.migrate.' || current_schema()))"
                )
            )
        await conn.run_sync(lambda sync: _migrations_table.create(sync, checkfirst=True))
        version = await current_version(conn)
        if version > LATEST:
            raise SchemaTooNew(
                f"database schema is at version {version}; this ledger knows versions up to {LATEST}"
            )
        for migration in MIGRATIONS:
            if version < migration.version <= target:
                started = time.perf_counter()
                await migration.apply(conn)
                await conn.execute(
                    _migrations_table.insert().values(
                        version=migration.version,
                        description=migration.description,
                        applied_ts=int(time.time() * 1_000_000),
                    )
                )
                version = migration.version
                log.info(
                    "schema_migrated",
                    version=version,
                    description=migration.description,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )
        return version
