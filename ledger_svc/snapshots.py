"""One spend snapshot for all the watchers of the same figures: WatchSpend's shared reads.

Five hundred `WatchSpend` streams on the same totals would otherwise run five hundred queries per
interval against the pool that budgets and stats share. Here a snapshot of (caller, window) is read
once and handed to every watcher that asks within `max_age` seconds while no new record was
committed on this replica; concurrent askers wait for the one read in progress (single flight).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ledger_svc.stats import Aggregate
from ledger_svc.store import LedgerStore
from ledger_svc.validation import Window

_MAX_KEYS = 4096


@dataclass
class _Snapshot:
    version: int
    taken: float
    totals: Aggregate


class Snapshots:
    def __init__(self, store: LedgerStore, max_age: float = 0.5) -> None:
        self._store = store
        self._max_age = max_age
        self._taken: dict[tuple[str, int], _Snapshot] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self.reads = 0  # queries actually run (the tests compare it with the watchers served)

    async def totals(self, window: Window, caller: str | None, last_minutes: int) -> Aggregate:
        key = (caller or "", last_minutes)
        if key not in self._locks and len(self._locks) >= _MAX_KEYS:
            self._prune()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            snapshot = self._taken.get(key)
            version = self._store.changes.version
            if snapshot and snapshot.version == version and time.monotonic() - snapshot.taken < self._max_age:
                return snapshot.totals
            totals = await self._store.totals(window, caller)
            self.reads += 1
            self._taken[key] = _Snapshot(version, time.monotonic(), totals)
            return totals

    def _prune(self) -> None:
        """Forget the figures nobody is reading now (one entry per caller and window asked for)."""
        for key in [k for k, lock in self._locks.items() if not lock.locked()]:
            del self._locks[key]
            self._taken.pop(key, None)
