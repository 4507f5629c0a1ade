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
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog

from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from router_svc.accounting import Accounting, Run
from router_svc.judge import Judge
from router_svc.provider_calls import Outcome, ProviderCaller
from router_svc.selection import Choice, Selector
from router_svc.validators import Answer, Validator, first_failure
from service_kit.errors import ServiceError
from service_kit.policy import NAME_BY_TIER, TIERS

log = structlog.get_logger()


def _today(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


class ExplorationBudget:
    """Today's exploration spend against the daily cap: the ledger's figure plus this replica's since."""

    def __init__(
        self,
        daily_usd: float,
        ledger: ledger_pb2_grpc.LedgerServiceAsyncStub | None,
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


class Exploration:
    """After a sampled answer: the next tier down answers too, in the background, and the judge
    compares; its attempts are recorded apart from the run's (router_svc/accounting.py)."""

    def __init__(
        self,
        *,
        explorer: Explorer,
        judge: Judge,
        selector: Selector,
        caller: ProviderCaller,
        accounting: Accounting,
        validators: Sequence[Validator],
        timeout_seconds: float,
    ) -> None:
        self._explorer = explorer
        self._judge = judge
        self._selector = selector
        self._caller = caller
        self._accounting = accounting
        self._validators = validators
        self._timeout = timeout_seconds

    def maybe_start(self, run: Run) -> None:
        explorer, answer, request = self._explorer, run.answer, run.request
        if answer is None or not explorer.sampled():
            return
        # Every sampled request routed above the cheapest tier, whatever became of its answer (one
        # rejected or escalated included: leaving those out would hide the cheaper tier's failures).
        routed = run.plan.tiers[0]
        if not run.decision.scored or routed == TIERS[0]:
            return  # forced or the classifier's default; or nothing cheaper
        lower = TIERS[TIERS.index(routed) - 1]
        choices = self._selector.plan(request, lower, run.decision.verdict.category).choices(lower)
        if not choices:
            return
        choice = choices[0]
        exhibit_tokens = (sum(len(m["content"]) for m in request.chat) + 2 * len(answer.content)) // 4 + 300
        reserved = choice.estimated_cost_usd + request.prices.cost(self._judge.model, exhibit_tokens, 60).usd
        if not explorer.budget.reserve(reserved):
            log.info(
                "exploration_skipped", reason="daily_budget", spent_usd=round(explorer.budget.spent_usd, 6)
            )
            return
        explorer.start(self._explore(run, answer.content, choice, reserved))

    async def close(self, timeout: float) -> None:
        await self._explorer.drain(timeout)

    async def _explore(self, run: Run, reference: str, choice: Choice, reserved: float) -> None:
        request = run.request
        outcomes: list[Outcome] = []
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            outcome, _ = await self._caller.call_once(request, choice, deadline, outcomes)
            attempt = outcome.attempt
            if attempt.outcome == common_pb2.ATTEMPT_OUTCOME_OK:
                problem = first_failure(
                    Answer(outcome.content, outcome.finish_reason, attempt.usage.output_tokens),
                    request.expectations,
                    self._validators,
                )
                if problem is not None:  # fails the rule-based checks: not good enough, no judge needed
                    attempt.judge_verdict, attempt.error = common_pb2.JUDGE_VERDICT_FAIL, problem
                else:
                    grade = await self._judge.compare(
                        request.chat, reference, outcome.content, request.prices, tier=choice.tier
                    )
                    attempt.judge_cost_usd = grade.cost_usd
                    attempt.judge_verdict = grade.verdict  # type: ignore[assignment]
        except ServiceError as error:  # the exploration's own deadline
            log.info("exploration_failed", reason=error.reason)
        finally:
            spent = sum(o.attempt.usage.cost_usd + o.attempt.judge_cost_usd for o in outcomes)
            self._explorer.budget.settle(reserved, spent)
            self._accounting.explored(request, run.decision, outcomes)
            log.info(
                "exploration_done",
                tier=NAME_BY_TIER.get(choice.tier),
                model=choice.spec.model,
                verdict=[common_pb2.JudgeVerdict.Name(o.attempt.judge_verdict) for o in outcomes],
                cost_usd=spent,
            )
