"""The Route path, composed. One request goes through each step in order:

    request.py         pin: a run id, and the policy and prices the run is routed under
    decision.py        classify and check the budget, concurrently; the tier from the score
    selection.py       the eligible candidates of that tier and those above, cheapest first
    provider_calls.py  call one (retries, streaming, the deadline, one place that classifies errors)
    accounting.py      the response, and a usage record per attempt to the ledger's sink

and, after an answer, exploration.py may try the next tier down in the background. The escalation
loop is here: a candidate that fails gives way to the next; an answer the validators (or the judge)
reject escalates to the next tier up.

`Router` knows nothing of gRPC servicers: it takes a parsed `RouteInput` and returns the response
proto, raising `service_kit.errors.ServiceError` subclasses for the caller's mistakes and outages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import structlog

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from router_svc.accounting import Accounting, Run, UsageSink
from router_svc.budgets import BudgetGate
from router_svc.classification import Classification
from router_svc.cooldown import Cooldowns
from router_svc.decision import Decider
from router_svc.exploration import Exploration, Explorer
from router_svc.judge import Judge
from router_svc.provider_calls import Outcome, ProviderCaller
from router_svc.providers import Providers
from router_svc.request import PinnedRequest, RouteInput, pin, raise_if_past
from router_svc.selection import Choice, Plan, Selector
from router_svc.settings import RouterSettings
from router_svc.validators import DEFAULT_VALIDATORS, Answer, Validator, first_failure
from service_kit.errors import InvalidArgument, Reason, ServiceError, Unavailable
from service_kit.litellm_offline import litellm
from service_kit.policy import NAME_BY_TIER, Policy
from service_kit.pricing import PriceBook

log = structlog.get_logger()


class Router:
    def __init__(
        self,
        *,
        settings: RouterSettings,
        policy: Callable[[], Policy],
        prices: Callable[[], PriceBook],
        providers: Providers,
        classifier: Classification,
        usage_sink: UsageSink,
        cooldowns: Cooldowns,
        validators: Sequence[Validator] = DEFAULT_VALIDATORS,
        budgets: BudgetGate | None = None,
        judge: Judge | None = None,
        explorer: Explorer | None = None,
        acompletion: Callable[..., Any] | None = None,
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._prices = prices
        self._sink = usage_sink
        self._validators = validators
        self._judge = judge
        self.budgets = budgets
        self._decider = Decider(settings=settings, classifier=classifier, budgets=budgets)
        self._selector = Selector(providers, cooldowns)
        self._caller = ProviderCaller(
            settings=settings,
            cooldowns=cooldowns,
            budgets=budgets,
            acompletion=acompletion or litellm.acompletion,
        )
        self._accounting = Accounting(usage_sink, budgets)
        self._exploration = (
            Exploration(
                explorer=explorer,
                judge=judge,
                selector=self._selector,
                caller=self._caller,
                accounting=self._accounting,
                validators=validators,
                timeout_seconds=settings.exploration_timeout_seconds,
            )
            if explorer is not None and judge is not None
            else None
        )

    def policy(self) -> Policy:
        """The policy in force now."""
        return self._policy()

    def plan(self, request: RouteInput, tier: common_pb2.Tier.ValueType, category: int) -> Plan:
        """The candidates `request` would have at `tier` now (warm-up asks which models to call)."""
        return self._selector.plan(self._pin(request), tier, category)

    async def close(self, timeout: float = 5.0) -> None:
        """Let background explorations finish (then cancel them): their records reach the sink."""
        if self._exploration is not None:
            await self._exploration.close(timeout)

    async def route(self, request: RouteInput, deadline: float | None) -> router_pb2.RouteResponse:
        run = await self._begin(self._pin(request), deadline)
        try:
            run.answer = await self._answer(run, deadline)
        finally:
            response = self._accounting.settle(run)
        if run.answer is None:
            raise _all_failed(run.outcomes)
        self._explore(run)
        log.info(
            "route_completed",
            model=response.model,
            tier=NAME_BY_TIER.get(response.tier),
            attempts=len(run.outcomes),
            cost_usd=response.usage.cost_usd,
            total_ms=round(response.timings.total_ms, 2),
        )
        return response

    async def route_stream(
        self, request: RouteInput, deadline: float | None
    ) -> AsyncIterator[router_pb2.RouteStreamResponse]:
        """Deltas as the provider sends them, then the summary.

        Fallback to the next candidate happens only before the first delta; output validation and
        escalation need `buffered_stream`, which validates the whole answer before sending it.
        """
        if request.buffered_stream:
            response = await self.route(request, deadline)
            yield router_pb2.RouteStreamResponse(delta=router_pb2.ContentDelta(content=response.content))
            yield router_pb2.RouteStreamResponse(summary=response)
            return
        run = await self._begin(self._pin(request), deadline)
        try:
            for _, choice in self._candidates(run):
                streaming = self._caller.stream(run.request, choice, deadline, run.outcomes)
                async with contextlib.aclosing(streaming) as deltas:
                    async for delta in deltas:
                        yield router_pb2.RouteStreamResponse(delta=router_pb2.ContentDelta(content=delta))
                last = run.outcomes[-1] if run.outcomes else None
                if last is not None and last.attempt.outcome == common_pb2.ATTEMPT_OUTCOME_OK:
                    run.answer = last
                    break
        finally:
            response = self._accounting.settle(run)
        if run.answer is None:
            raise _all_failed(run.outcomes)
        self._explore(run)
        yield router_pb2.RouteStreamResponse(summary=response)

    def _pin(self, request: RouteInput) -> PinnedRequest:
        pinned = pin(request, self._policy(), self._prices())
        if pinned.force_model and not pinned.policy.lists(pinned.force_model):
            model = pinned.force_model[:200]
            raise InvalidArgument(
                [("options.force_model", f"{model!r} is not a model of the routing policy")],
                reason=Reason.FORCED_MODEL_NOT_ALLOWED,
            )
        return pinned

    async def _begin(self, request: PinnedRequest, deadline: float | None) -> Run:
        """Decide and plan: the run, ready for its first call."""
        if not self._sink.accepting():
            # Nothing paid may go unrecorded: refuse before classifying or calling anyone.
            raise Unavailable(
                "the router cannot record usage right now (its spool is failing or full); retry on "
                "another replica or later",
                reason=Reason.USAGE_NOT_RECORDABLE,
            )
        started = time.perf_counter()
        decision = await self._decider.decide(request, deadline)
        try:
            plan = self._selector.checked_plan(request, decision)
        except ServiceError:
            self._accounting.not_routed(request, decision)
            raise
        return Run(request, decision, plan, started)

    def _candidates(self, run: Run, after_tier: int = -1) -> Iterator[tuple[int, Choice]]:
        """Candidates to try in order, with their tier's index in the plan: cheapest first, then the
        next tier up; one the caller's cost cap no longer affords (spent so far plus its estimate) is
        passed over. `after_tier` skips the tiers up to that index."""
        for index, tier in enumerate(run.plan.tiers):
            if index <= after_tier:
                continue
            for choice in run.plan.choices(tier):
                if run.request.max_cost_usd is not None:
                    spent = sum(o.attempt.usage.cost_usd for o in run.outcomes)
                    if spent + choice.estimated_cost_usd > run.request.max_cost_usd:
                        continue
                yield index, choice

    async def _answer(self, run: Run, deadline: float | None) -> Outcome | None:
        """Try candidates in order; escalate one tier up when the answer is rejected."""
        rejected: Outcome | None = None
        rejected_tier = -1
        for index, choice in self._candidates(run):
            if index <= rejected_tier:
                continue  # a rejected answer escalates past the rest of its tier
            outcome = await self._caller.call(run.request, choice, deadline, run.outcomes)
            if outcome is None:
                continue  # provider failure: next candidate
            reason = await self._rejection(run.request, outcome, choice.tier, deadline)
            if reason is None:
                return outcome
            escalate = self._settings.escalate_on_validation_failure and run.plan.any_above(index)
            outcome.attempt.outcome = (
                common_pb2.ATTEMPT_OUTCOME_ESCALATED
                if escalate
                else common_pb2.ATTEMPT_OUTCOME_VALIDATION_FAILED
            )
            outcome.attempt.error = reason
            log.info("output_rejected", model=choice.spec.model, reason=reason, escalate=escalate)
            if not escalate:
                return outcome  # rejected, and nowhere to escalate: better than an error
            rejected, rejected_tier = outcome, index
        # Nothing passed validation: the last rejected answer is still better than an error.
        return rejected

    async def _rejection(
        self, request: PinnedRequest, outcome: Outcome, tier: int, deadline: float | None
    ) -> str | None:
        """Why the answer is rejected (a validator's reason, or the judge's), or None."""
        answer = Answer(outcome.content, outcome.finish_reason, outcome.attempt.usage.output_tokens)
        reason = first_failure(answer, request.expectations, self._validators)
        if reason is not None or self._judge is None or not self._judge.grades(tier):
            return reason
        try:
            async with asyncio.timeout_at(deadline):
                grade = await self._judge.grade(request.chat, outcome.content, request.prices, tier=tier)
        except TimeoutError:
            raise_if_past(deadline)  # the client's deadline passed while the judge was grading
            raise
        outcome.attempt.judge_cost_usd = grade.cost_usd
        outcome.attempt.judge_verdict = grade.verdict  # type: ignore[assignment]
        if grade.passed is None:
            outcome.judge_problem = grade.problem
            return None
        return None if grade.passed else "judge_rejected"

    def _explore(self, run: Run) -> None:
        if self._exploration is not None:
            self._exploration.maybe_start(run)


def _all_failed(outcomes: list[Outcome]) -> Unavailable:
    last = outcomes[-1].attempt if outcomes else None
    return Unavailable(
        f"every candidate model failed ({len(outcomes)} attempts); last error: {last.error if last else 'none'}",
        reason=Reason.ALL_PROVIDERS_FAILED,
        metadata={"attempts": len(outcomes), "last_model": last.model if last else ""},
    )
