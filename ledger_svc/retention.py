"""Retention: raw records pruned after `retention_raw_days`, rollups after `retention_rollup_days`,
behind a watermark (`pruned_before`) that ingest respects; and the rollups' rebuild. Mixed into
`LedgerStore`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import DBAPIError

from ledger_svc.db import Engines
from ledger_svc.ingest import Statements, rebuild
from ledger_svc.records import iso_us
from ledger_svc.schema import DAY_US, HOUR_US, ledger_meta, requests, usage_hourly, usage_records
from ledger_svc.settings import LedgerSettings

log = structlog.get_logger()

_PRUNE_CHUNK_HOURS = 6


@dataclass(frozen=True)
class PruneResult:
    pruned_before_us: int
    records_deleted: int
    rollup_hours_before: int | None


class Retention:
    """Pruning and rollup maintenance, the store's background and admin work."""

    _engines: Engines
    _settings: LedgerSettings
    _now: Callable[[], int]
    _statements: Statements

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
