"""Step 2 of a Route: the decision the choice follows — a classification and the caller's budget,
asked concurrently, and the tier the pinned policy cuts from the score (once, here).

Never fails for the classifier's sake: an unreachable classifier gives the policy's default tier. A
budget that cannot be checked fails the request only when the router fails closed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import structlog

from difficulty import Verdict
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2
from router_svc.budgets import BudgetGate
from router_svc.classification import Classification, Classified
from router_svc.request import PinnedRequest, bounded
from router_svc.settings import RouterSettings
from service_kit.errors import Reason, Unavailable
from service_kit.policy import TIER_BY_NAME

log = structlog.get_logger()

# Verdicts with a score the policy's thresholds cut (not forced by the caller, not the default tier).
SCORED_SOURCES = frozenset(
    {
        common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL,
        common_pb2.CLASSIFIER_SOURCE_LLM,
        common_pb2.CLASSIFIER_SOURCE_CACHE,
    }
)


@dataclass(slots=True)
class Decision:
    """The classification, the tier it gives under the pinned policy, and what went wrong on the way."""

    verdict: Verdict
    tier: common_pb2.Tier.ValueType
    warnings: list[str]
    # Time inside the classifier (where it ran), and the whole step as this router saw it.
    classifier_ms: float
    classify_ms: float

    @property
    def scored(self) -> bool:
        return self.verdict.source in SCORED_SOURCES


class Decider:
    def __init__(
        self, *, settings: RouterSettings, classifier: Classification, budgets: BudgetGate | None
    ) -> None:
        self._settings = settings
        self._classifier = classifier
        self._budgets = budgets

    async def decide(self, request: PinnedRequest, deadline: float | None) -> Decision:
        """Classification and budget check, concurrently. Near a soft limit, thresholds rise (cheaper tiers)."""
        started = time.perf_counter()
        soft_limit = False
        if self._budgets is None:
            classified, warnings = await self._classify(request, deadline)
        else:
            classifying = asyncio.create_task(self._classify(request, deadline))
            try:
                budget = await self._budgets.check(request.caller)
            except BaseException:
                classifying.cancel()
                raise
            classified, warnings = await classifying
            if not budget.current:
                if (
                    self._settings.budget_fail_mode == "closed"
                    and budget.state == ledger_pb2.BUDGET_STATE_UNSPECIFIED
                ):
                    raise Unavailable(
                        "the caller's budget cannot be checked now (the ledger is unreachable) and this "
                        "router fails closed",
                        reason=Reason.BUDGET_CHECK_UNAVAILABLE,
                    )
                warnings.append("budget_check_unavailable")
            soft_limit = budget.state == ledger_pb2.BUDGET_STATE_SOFT_LIMIT
        decision = Decision(
            classified.verdict,
            self._tier(request, classified.verdict),
            warnings,
            classified.latency_ms,
            0.0,
        )
        if soft_limit and decision.scored:
            decision.tier = request.policy.tier_for(
                decision.verdict.score,
                decision.verdict.family,
                decision.verdict.category,
                shift=self._settings.budget_soft_limit_shift,
            )
            warnings.append("budget_soft_limit")
        decision.classify_ms = (time.perf_counter() - started) * 1000
        return decision

    def _tier(self, request: PinnedRequest, verdict: Verdict) -> common_pb2.Tier.ValueType:
        policy = request.policy
        if verdict.source in SCORED_SOURCES:
            # The router's policy is authoritative for the cut points (the classifier may run another).
            return policy.tier_for(verdict.score, verdict.family, verdict.category)
        if verdict.source == common_pb2.CLASSIFIER_SOURCE_OVERRIDE and request.force_tier:
            return request.force_tier
        return TIER_BY_NAME[policy.default_tier]

    async def _classify(self, request: PinnedRequest, deadline: float | None) -> tuple[Classified, list[str]]:
        """The verdict and warnings; degrades to the default tier's verdict."""
        if request.force_model or request.force_tier:
            forced = Verdict(
                score=0.0,
                confidence=1.0,
                source=common_pb2.CLASSIFIER_SOURCE_OVERRIDE,
                rationale="forced by the caller",
            )
            return Classified(forced, 0.0), []
        timeout = bounded(self._settings.classify_timeout_seconds, deadline)
        try:
            return await self._classifier.classify(
                request.messages, request.trace_id or request.request_id, timeout
            )
        except grpc.aio.AioRpcError as error:
            code = error.code().name
            log.warning("classifier_unavailable", code=code, default_tier=request.policy.default_tier)
            default = Verdict(
                score=0.0,
                confidence=0.0,
                source=common_pb2.CLASSIFIER_SOURCE_DEFAULT,
                rationale=f"classifier unavailable ({code}); policy default tier",
            )
            return Classified(default, 0.0), [f"classifier_unavailable:{code}"]
