"""Exploration: the only evidence that a cheaper tier would have done.

A configured share of answered requests (`ROUTER_EXPLORATION_RATE`, off by default) is answered again,
in the background, by the cheapest eligible model of the next tier down from the tier it was routed
to, and the LLM judge compares the two answers (the one the caller got is the reference). Sampled
requests are explored whatever became of their answer (rejected or escalated ones too), so the
explored ones are a fair sample of the tier's traffic. The caller always has the routed answer already; the exploration call and its grading
are recorded as exploration attempts of the same run (numbered from 1001, `exploration=true`, the
judge's verdict on the cheaper answer), which the ledger counts as exploration spend: its own line in
GetStats, not charged to the caller's budget.

What exploration may spend is capped per UTC day (`ROUTER_EXPLORATION_DAILY_BUDGET_USD`), across
replicas: each replica reads the day's exploration spend from the ledger every `refresh_seconds` and
adds what it reserved or spent since. Replicas can overshoot the cap by what they explore between two
refreshes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog

from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc

log = structlog.get_logger()


def _today(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


class ExplorationBudget:
    """Today's exploration spend against the daily cap: the ledger's figure plus this replica's since."""

    def __init__(
        self,
        daily_usd: float,
        ledger: ledger_pb2_grpc.LedgerServiceStub | None,
        refresh_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.daily_usd = daily_usd
        self._ledger = ledger
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._day = _today(clock())
        self._ledger_usd = 0.0  # the day's exploration spend, as of the last refresh
        self._local_usd = 0.0  # spent here since
        self._reserved_usd = 0.0  # held by explorations in flight here
        self._refreshed = 0.0
        self._refreshing: asyncio.Task[None] | None = None

    @property
    def spent_usd(self) -> float:
        """Spent today (by every replica, as far as this one knows) plus what is held in flight here."""
        self._roll_over()
        return self._ledger_usd + self._local_usd + self._reserved_usd

    def reserve(self, estimate_usd: float) -> bool:
        """Hold `estimate_usd` of today's cap; False (nothing held) when it does not fit."""
        self._maybe_refresh()
        if self.spent_usd + estimate_usd > self.daily_usd:
            return False
        self._reserved_usd += estimate_usd
        return True

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """An exploration ended: release what it held, count what it spent."""
        self._reserved_usd = max(0.0, self._reserved_usd - reserved_usd)
        self._roll_over()
        self._local_usd += actual_usd

    def _roll_over(self) -> None:
        today = _today(self._clock())
        if today != self._day:
            self._day, self._ledger_usd, self._local_usd = today, 0.0, 0.0

    def _maybe_refresh(self) -> None:
        if self._ledger is None or self._clock() - self._refreshed < self._refresh_seconds:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshed = self._clock()
            self._refreshing = asyncio.create_task(self.refresh())

    async def refresh(self) -> None:
        """Read the day's exploration spend from the ledger (all replicas' records that landed)."""
        if self._ledger is None:
            return
        started = self._clock()
        midnight = datetime.fromtimestamp(started, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        window = ledger_pb2.TimeWindow()
        window.since.FromDatetime(midnight)
        try:
            stats = await self._ledger.GetStats(
                ledger_pb2.GetStatsRequest(window=window, group_by=[]), timeout=2
            )
        except grpc.aio.AioRpcError as error:
            log.info("exploration_budget_unavailable", code=error.code().name)
            return
        # What this replica spent before the read is in the ledger's figure (its records reach the
        # ledger within a second or so): the local count starts again from here.
        self._roll_over()
        self._ledger_usd = stats.totals.exploration_cost_usd
        self._local_usd = 0.0

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)


class Explorer:
    """Which answered requests to explore, and what exploration may spend."""

    def __init__(
        self, rate: float, budget: ExplorationBudget, draw: Callable[[], float] = random.random
    ) -> None:
        self.rate = rate
        self.budget = budget
        self._draw = draw
        self._tasks: set[asyncio.Task[None]] = set()

    def sampled(self) -> bool:
        return self.rate > 0 and self._draw() < self.rate

    def start(self, exploring: Coroutine[Any, Any, None]) -> None:
        """Run an exploration in the background, kept until it ends (shutting down waits for its records)."""
        task = asyncio.create_task(exploring)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Let explorations in flight finish for up to `timeout` seconds, then cancel the rest: a
        cancelled one still records what it spent."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.budget.close()
