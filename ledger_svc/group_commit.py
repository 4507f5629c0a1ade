"""Group commit: how RecordUsage batches become transactions, mixed into `LedgerStore`.

Batches are committed before RecordUsage answers, several concurrent batches per transaction: every
batch waiting when a transaction starts goes into it. What one transaction does (records, request
states, rollups) is in `ledger_svc.ingest`. Re-delivered records change nothing, on one replica or
many. Each commit that stored something wakes the watchers (`ChangeFeed`).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import DBAPIError

from ledger_svc.db import Engines, insert_for
from ledger_svc.ingest import RecordKey, Statements, insert_batch, record_key
from ledger_svc.records import iso_us, to_row
from ledger_svc.schema import ledger_meta, senders
from ledger_svc.settings import LedgerSettings
from llmroute.ledger.v1 import ledger_pb2
from service_kit.errors import InvalidArgument, Reason

log = structlog.get_logger()

# PostgreSQL deadlock / serialization failure; SQLite "database is locked" beyond busy_timeout.
_RETRY_SQLSTATES = {"40P01", "40001"}
_INGEST_TRIES = 5


@dataclass(frozen=True)
class IngestResult:
    inserted: int
    duplicates: int


@dataclass
class _Batch:
    rows: list[dict[str, Any]]
    sender: str
    sender_spool_depth: int
    done: asyncio.Future[IngestResult]


class ChangeFeed:
    """Wakes watchers when this replica committed new records."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.version = 0  # how many commits this replica has made; snapshots compare it

    def bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """True when a change happened before `timeout` seconds passed."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _retryable(error: DBAPIError) -> bool:
    code = getattr(error.orig, "pgcode", None) or getattr(error.orig, "sqlstate", None)
    if code in _RETRY_SQLSTATES:
        return True
    return "database is locked" in str(error.orig)


class GroupCommit:
    """RecordUsage's side of the store. `LedgerStore.__init__` sets the state: the pending batches,
    the writer task, the prepared statements and the change feed."""

    _engines: Engines
    _settings: LedgerSettings
    _now: Callable[[], int]
    _statements: Statements
    _pending: deque[_Batch]
    _writer: asyncio.Task[None] | None
    changes: ChangeFeed

    async def record_usage(
        self, records: Sequence[ledger_pb2.UsageRecord], sender: str = "", sender_spool_depth: int = 0
    ) -> IngestResult:
        """Store a batch; returns once it is committed (possibly together with concurrent batches)."""
        now = self._now()
        batch = _Batch(
            rows=[to_row(record, now) for record in records],
            sender=sender,
            sender_spool_depth=sender_spool_depth,
            done=asyncio.get_running_loop().create_future(),
        )
        self._pending.append(batch)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="ledger-ingest")
        return await asyncio.shield(batch.done)

    async def _write_pending(self) -> None:
        """Group commit: every batch waiting when a transaction starts goes into it.

        Under concurrent senders this turns many small transactions (each touching the same hot
        rollup rows, each with its own fsync on SQLite) into a few larger ones. Each batch is still
        acknowledged only after the transaction holding it committed.
        """
        while self._pending:
            group: list[_Batch] = []
            size = 0
            while self._pending and (
                not group or size + len(self._pending[0].rows) <= self._settings.max_batch_records
            ):
                group.append(self._pending.popleft())
                size += len(group[-1].rows)
            try:
                results = await self._ingest_group(group)
            except Exception as error:  # the batches' callers get it; the writer goes on with the next group
                for batch in group:
                    if not batch.done.done():
                        batch.done.set_exception(error)
                continue
            for batch, result in zip(group, results, strict=True):
                if batch.done.done():
                    continue
                if isinstance(result, InvalidArgument):
                    batch.done.set_exception(result)
                else:
                    batch.done.set_result(result)
            if any(isinstance(r, IngestResult) and r.inserted for r in results):
                self.changes.bump()

    async def _ingest_group(self, group: list[_Batch]) -> list[IngestResult | InvalidArgument]:
        for attempt in range(1, _INGEST_TRIES + 1):
            try:
                return await self._ingest(group)
            except DBAPIError as error:
                if attempt == _INGEST_TRIES or not _retryable(error):
                    raise
                log.warning("ingest_retry", attempt=attempt, error=type(error.orig).__name__)
                await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _ingest(self, group: list[_Batch]) -> list[IngestResult | InvalidArgument]:
        now = self._now()
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
            results: list[IngestResult | InvalidArgument | None] = []
            owner: dict[RecordKey, int] = {}  # record key -> the first batch that carried it
            rows: list[dict[str, Any]] = []
            for position, batch in enumerate(group):
                too_old = [
                    (
                        f"records[{index}].time",
                        f"is before {iso_us(pruned_before)}, whose raw records were pruned; it cannot be deduplicated",
                    )
                    for index, row in enumerate(batch.rows)
                    if row["ts"] < pruned_before
                ]
                if too_old:
                    results.append(
                        InvalidArgument(
                            too_old,
                            reason=Reason.RECORD_TOO_OLD,
                            metadata={"pruned_before": iso_us(pruned_before)},
                        )
                    )
                    continue
                results.append(None)
                for row in batch.rows:
                    key = record_key(row)
                    if key not in owner:
                        owner[key] = position
                        rows.append(row)
            new = await insert_batch(conn, self._statements, rows) if rows else set()
            inserted = [0] * len(group)
            for key in new:
                inserted[owner[key]] += 1
            depths = {batch.sender: batch.sender_spool_depth for batch in group if batch.sender}
            if depths:
                stmt = insert_for(self._engines.dialect, senders)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["sender"],
                        set_={
                            "spool_depth": stmt.excluded.spool_depth,
                            "updated_ts": stmt.excluded.updated_ts,
                        },
                    ),
                    [
                        {"sender": name, "spool_depth": depth, "updated_ts": now}
                        for name, depth in sorted(depths.items())
                    ],
                )
        return [
            result
            if result is not None
            else IngestResult(inserted=inserted[i], duplicates=len(group[i].rows) - inserted[i])
            for i, result in enumerate(results)
        ]
