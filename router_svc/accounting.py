"""Step 5 of a Route: accounting for the run — the response the caller gets, and one usage record per
provider attempt handed to the sink (the ledger reporter with its durable spool), on success, failure
or cancel alike. Also the savings counterfactual: what the policy's baseline model would have charged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llmroute.classifier.v1 import classifier_pb2
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2
from llmroute.router.v1 import router_pb2
from router_svc.budgets import BudgetGate
from router_svc.decision import Decision
from router_svc.provider_calls import Outcome
from router_svc.request import PinnedRequest
from router_svc.selection import Plan

# The model name on the record of a request refused before any provider call.
NOT_ROUTED_MODEL = "(not routed)"
# The ledger refuses a record whose error text is longer (ledger_svc/validation.py MAX_ERROR_CHARS): a
# reason and a status fit; a judge's long explanation is cut rather than have its record refused.
ERROR_CHARS = 500
# Exploration attempts are numbered from here, apart from the run's own attempts.
FIRST_EXPLORATION_ATTEMPT = 1001


class UsageSink(Protocol):
    """Where usage records go (the ledger reporter with its durable spool)."""

    async def start(self) -> None:
        """Begin delivering (recover what an earlier process left in the spool)."""
        ...

    async def close(self) -> None:
        """Deliver or keep durably what was submitted, then stop."""
        ...

    def submit(self, records: Sequence[ledger_pb2.UsageRecord]) -> None:
        """Make the records durable (or hold them) and return; never raises for the sink's sake."""
        ...

    def accepting(self) -> bool:
        """Whether new paid work may start: what it spends can be recorded."""
        ...


@dataclass(slots=True)
class Run:
    """One execution of a request: its decision, plan and attempts, accounted for when it ends."""

    request: PinnedRequest
    decision: Decision
    plan: Plan
    started: float
    outcomes: list[Outcome] = field(default_factory=list)
    answer: Outcome | None = None


class Accounting:
    def __init__(self, sink: UsageSink, budgets: BudgetGate | None) -> None:
        self._sink = sink
        self._budgets = budgets

    def settle(self, run: Run) -> router_pb2.RouteResponse:
        """Build the response and hand every attempt to the sink."""
        response = self._response(run)
        self._sink.submit(self._records(run, response))
        if self._budgets is not None and run.outcomes:
            self._budgets.note_spend(run.request.caller)
        return response

    def not_routed(self, request: PinnedRequest, decision: Decision) -> None:
        """A refused request may still have paid for its classification (the LLM classifier): record it."""
        if decision.verdict.overhead.cost_usd <= 0:
            return
        record = ledger_pb2.UsageRecord(
            request_id=request.request_id,
            run_id=request.run_id,
            policy_version=request.policy.version_id,
            attempt=1,
            caller=request.caller,
            category=decision.verdict.category,
            tier=decision.tier,
            score=decision.verdict.score,
            classifier_source=decision.verdict.source,
            classifier_version=decision.verdict.version,
            model=NOT_ROUTED_MODEL,
            outcome=common_pb2.ATTEMPT_OUTCOME_NOT_ROUTED,
            classifier_cost_usd=decision.verdict.overhead.cost_usd,
            price_map_version=request.prices.version,
            price_known=True,
            classify_ms=decision.classify_ms,
            total_ms=decision.classify_ms,
        )
        record.time.GetCurrentTime()
        self._sink.submit([record])

    def explored(self, request: PinnedRequest, decision: Decision, outcomes: Sequence[Outcome]) -> None:
        """An exploration's attempts: recorded apart from the run's, never the answer."""
        self._sink.submit(
            [
                record(request, decision, o, FIRST_EXPLORATION_ATTEMPT + i, final=False, exploration=True)
                for i, o in enumerate(outcomes)
            ]
        )

    def _response(self, run: Run) -> router_pb2.RouteResponse:
        request, decision, outcomes, answer = run.request, run.decision, run.outcomes, run.answer
        if answer is not None:
            usage = answer.attempt.usage
            usage.baseline_cost_usd, usage.baseline_reasoning_cost_usd = baseline_cost(request, usage)
        response = router_pb2.RouteResponse(
            request_id=request.request_id,
            run_id=request.run_id,
            classification=legacy_classification(decision),
            decision=classification(decision),
            candidates=run.plan.explained,
            attempts=[o.attempt for o in outcomes],
            price_map_version=request.prices.version,
            warnings=decision.warnings,
        )
        for outcome in outcomes:
            usage = outcome.attempt.usage
            response.usage.input_tokens += usage.input_tokens
            response.usage.output_tokens += usage.output_tokens
            response.usage.cached_input_tokens += usage.cached_input_tokens
            response.usage.reasoning_tokens += usage.reasoning_tokens
            response.usage.cost_usd += usage.cost_usd
            if not outcome.attempt.price_known and outcome.attempt.usage.input_tokens:
                response.warnings.append(f"price_unknown:{outcome.attempt.model}")
            if outcome.judge_problem:
                response.warnings.append(f"judge_unavailable:{outcome.judge_problem}")
        if answer is not None:
            response.content = answer.content
            response.finish_reason = answer.finish_reason
            response.model = answer.attempt.model
            response.tier = answer.attempt.tier
            response.simulated = answer.simulated
            response.usage.baseline_cost_usd = answer.attempt.usage.baseline_cost_usd
            response.usage.baseline_reasoning_cost_usd = answer.attempt.usage.baseline_reasoning_cost_usd
            if answer.attempt.outcome != common_pb2.ATTEMPT_OUTCOME_OK:
                response.warnings.append(f"output_rejected:{answer.attempt.error}")
        response.timings.classify_ms = decision.classify_ms
        response.timings.provider_ms = sum(o.attempt.latency_ms for o in outcomes)
        response.timings.total_ms = (time.perf_counter() - run.started) * 1000
        return response

    def _records(self, run: Run, response: router_pb2.RouteResponse) -> list[ledger_pb2.UsageRecord]:
        records = []
        for number, outcome in enumerate(run.outcomes, start=1):
            final = outcome is run.answer
            entry = record(run.request, run.decision, outcome, number, final=final)
            if number == 1:
                entry.classifier_cost_usd = run.decision.verdict.overhead.cost_usd
                entry.classify_ms = response.timings.classify_ms
            if final or number == len(run.outcomes):
                entry.total_ms = response.timings.total_ms
            records.append(entry)
        return records


def classification(decision: Decision) -> router_pb2.Classification:
    """The decision as the router's contract shows it."""
    verdict = decision.verdict
    return router_pb2.Classification(
        tier=decision.tier,
        score=verdict.score,
        confidence=verdict.confidence,
        category=verdict.category,
        source=verdict.source,
        rationale=verdict.rationale,
        version=verdict.version,
        family=verdict.family,
        overhead=_overhead(decision),
        overhead_model=verdict.overhead.model,
        latency_ms=decision.classifier_ms,
    )


def legacy_classification(decision: Decision) -> classifier_pb2.ClassifyResponse:
    """The same, in the classifier's message that `RouteResponse.classification` (deprecated) carries
    for v1 clients that read it."""
    shown = classification(decision)
    legacy = classifier_pb2.ClassifyResponse()
    legacy.ParseFromString(shown.SerializeToString())  # the same field numbers and types, by design
    return legacy


def _overhead(decision: Decision) -> common_pb2.Usage:
    overhead = decision.verdict.overhead
    return common_pb2.Usage(
        input_tokens=overhead.input_tokens, output_tokens=overhead.output_tokens, cost_usd=overhead.cost_usd
    )


def baseline_cost(request: PinnedRequest, usage: common_pb2.Usage) -> tuple[float, float]:
    """The counterfactual: what the baseline model would have charged for the same answer, and the
    part of that for reasoning.

    Input tokens (the cached ones at its cached rate) and the visible output tokens, at the
    baseline's prices; the answering model's reasoning tokens only when the policy configures the
    baseline to reason, since a baseline that does not reason would not have produced them.
    """
    policy, prices = request.policy, request.prices
    visible = max(0, usage.output_tokens - usage.reasoning_tokens)
    reasoning = usage.reasoning_tokens if policy.baseline_reasoning_effort else 0
    total = prices.cost(
        policy.baseline_model, usage.input_tokens, visible + reasoning, usage.cached_input_tokens, reasoning
    ).usd
    price = prices.price(policy.baseline_model)
    return total, (reasoning * price.reasoning_per_token if price is not None else 0.0)


def record(
    request: PinnedRequest,
    decision: Decision,
    outcome: Outcome,
    number: int,
    *,
    final: bool,
    exploration: bool = False,
) -> ledger_pb2.UsageRecord:
    """The ledger's record of one attempt."""
    attempt, verdict = outcome.attempt, decision.verdict
    entry = ledger_pb2.UsageRecord(
        request_id=request.request_id,
        run_id=request.run_id,
        policy_version=request.policy.version_id,
        attempt=number,
        caller=request.caller,
        category=verdict.category,
        tier=attempt.tier,
        score=verdict.score,
        classifier_source=verdict.source,
        classifier_version=verdict.version,
        family=verdict.family,
        model=attempt.model,
        provider=attempt.provider,
        outcome=attempt.outcome,
        error=attempt.error[:ERROR_CHARS],
        usage=attempt.usage,
        price_map_version=request.prices.version,
        price_known=attempt.price_known,
        provider_ms=attempt.latency_ms,
        cache_hit=verdict.source == common_pb2.CLASSIFIER_SOURCE_CACHE,
        final=final,
        judge_cost_usd=attempt.judge_cost_usd,
        judge_verdict=attempt.judge_verdict,
        exploration=exploration,
        simulated=outcome.simulated,
    )
    entry.time.GetCurrentTime()
    return entry
