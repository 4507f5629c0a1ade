"""The reporter's spool: an append-only queue of serialized usage records in a local SQLite file (WAL).

Records wait here from `LedgerReporter.submit()` until the ledger acknowledged them; records the
ledger refused as invalid move to `dead_letters`, kept for inspection and never resent. The spool
watches its own limits: its size on disk (over `max_bytes` the reporter takes no new work) and the
age of its oldest record (logged when older than `max_age_seconds`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

__all__ = ["Spool"]

log = structlog.get_logger()


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, record BLOB NOT NULL, added REAL NOT NULL)",
    # Records the ledger refused as invalid (INVALID_ARGUMENT naming them): kept for inspection,
    # never resent, so one bad record cannot block the records behind it.
    "CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY, record BLOB NOT NULL, reason TEXT NOT NULL, added REAL NOT NULL)",
)


class Spool:
    """An append-only queue in a SQLite file (WAL). One connection, guarded by a lock."""

    def __init__(
        self, path: Path, fsync: bool, *, max_bytes: int = 1 << 30, max_age_seconds: float = 3600.0
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self.over_capacity = False
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        # Checkpoints are ours (see checkpoint()), so they run off the request path.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._sync_db: sqlite3.Connection | None = None
        self._sync_lock = threading.Lock()
        self._closed = False
        for statement in _SCHEMA:
            self._db.execute(statement)

    def append(self, blobs: Sequence[bytes]) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO spool (record, added) VALUES (?, ?)", [(b, now) for b in blobs]
                )
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back on its own after some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def peek(self, limit: int) -> list[tuple[int, bytes]]:
        with self._lock:
            return self._db.execute("SELECT id, record FROM spool ORDER BY id LIMIT ?", (limit,)).fetchall()

    def delete(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def bury(self, items: Sequence[tuple[int, bytes, str]]) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO dead_letters (id, record, reason, added) VALUES (?, ?, ?, ?)",
                    [(i, blob, reason, now) for i, blob, reason in items],
                )
                self._db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i, _, _ in items])
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def probe(self) -> None:
        """A small write transaction: raises while the file system cannot take writes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("CREATE TABLE IF NOT EXISTS probe (x INTEGER)")
                self._db.execute("INSERT INTO probe VALUES (1)")
                self._db.execute("DELETE FROM probe")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back on its own after some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def oldest(self) -> float | None:
        """When the oldest waiting record was added (epoch seconds), if any."""
        with self._lock:
            row = self._db.execute("SELECT MIN(added) FROM spool").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def count(self, table: str = "spool") -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def check_capacity(self, depth: int) -> None:
        """Over `max_bytes` on disk: `over_capacity` until the spool is back under 90% of it.
        `depth` (records waiting) is for the log."""
        try:
            size = self.size_bytes()
        except OSError:
            return
        if size > self.max_bytes and not self.over_capacity:
            log.error(
                "ledger_spool_over_capacity",
                spool_bytes=size,
                max_bytes=self.max_bytes,
                spool_depth=depth,
            )
            self.over_capacity = True
        elif self.over_capacity and size <= self.max_bytes * 0.9:
            log.info("ledger_spool_under_capacity", spool_bytes=size)
            self.over_capacity = False

    def check_age(self, depth: int) -> None:
        """Log when the oldest waiting record is older than `max_age_seconds`."""
        try:
            oldest = self.oldest()
        except sqlite3.Error:
            return
        if oldest is not None and time.time() - oldest > self.max_age_seconds:
            log.error("ledger_spool_stale", oldest_seconds=round(time.time() - oldest), spool_depth=depth)

    def checkpoint(self) -> None:
        """Sync the WAL and fold it into the database file: bounds what a power loss can take and
        the WAL's size. Its own connection, so submit() never waits for it (WAL checkpoints run
        alongside writers)."""
        with self._sync_lock:
            if self._closed:
                return
            if self._sync_db is None:
                self._sync_db = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=30
                )
            self._sync_db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._sync_lock:
            self._closed = True
            if self._sync_db is not None:
                self._sync_db.close()
        with self._lock:
            self._db.close()
