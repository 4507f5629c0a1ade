"""The ledger's outcomes (ExportOutcomes) as the tuner reads them, and the tiers' reference prices."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from feedback_loop.tuning import Run
from llmroute.ledger.v1 import ledger_pb2
from service_kit.policy import TIER_NAMES, Policy, category_name

# A typical request, to compare the tiers' prices where the outcomes say nothing of a tier's cost.
_TYPICAL_INPUT, _TYPICAL_OUTPUT = 500, 300


def judged_tiers(outcomes: Iterable[ledger_pb2.Outcome]) -> set[int]:
    """Tiers whose routed answers the judge graded (so their passes are seen, not only failures)."""
    return {
        e.tier
        for o in outcomes
        for e in o.evidence
        if e.kind == ledger_pb2.EVIDENCE_KIND_JUDGE and e.tier == o.routed_tier
    }


def to_run(outcome: ledger_pb2.Outcome, judged: set[int]) -> Run:
    """The assessments the fit may use (see feedback_loop.tuning): of the routed tier itself, and of
    the tier below it by exploration or the caller's "a cheaper tier would have done"."""
    routed, answered = outcome.routed_tier, outcome.answer_tier
    assessments: list[tuple[int, bool]] = []
    for e in outcome.evidence:
        kind, tier = e.kind, e.tier
        if (kind == ledger_pb2.EVIDENCE_KIND_EXPLORATION and tier == routed - 1) or (
            kind == ledger_pb2.EVIDENCE_KIND_JUDGE and tier == routed
        ):
            assessments.append((tier, e.adequate))
        elif kind == ledger_pb2.EVIDENCE_KIND_VALIDATOR and tier == routed and tier in judged:
            assessments.append((tier, False))
        elif (
            kind == ledger_pb2.EVIDENCE_KIND_FEEDBACK
            and answered == routed
            and (tier == routed or e.adequate)
        ):
            assessments.append((tier, e.adequate))
    return Run(
        score=outcome.score,
        routed_tier=routed,
        family=outcome.family,
        category=category_name(outcome.category),
        cost_usd=outcome.cost_usd,
        escalated=answered != routed,
        assessments=tuple(dict.fromkeys(assessments)),  # one of each
    )


def to_runs(outcomes: Sequence[ledger_pb2.Outcome]) -> list[Run]:
    judged = judged_tiers(outcomes)
    return [to_run(o, judged) for o in outcomes if 1 <= o.routed_tier <= 4]


def reference_costs(policy: Policy) -> np.ndarray:
    """Each tier's cheapest priced model for a typical request (500 tokens in, 300 out), in US dollars:
    the tuner scales these to the costs it observes, for tiers the outcomes say too little about."""
    from service_kit.pricing import PriceBook  # LiteLLM's map: imported only when needed

    prices = PriceBook.from_litellm()
    costs = []
    for name in TIER_NAMES:
        known = [
            prices.cost(spec.model, _TYPICAL_INPUT, _TYPICAL_OUTPUT)
            for spec in policy.tiers[name]
            if prices.price(spec.model) is not None
        ]
        costs.append(min((c.usd for c in known), default=np.nan))
    values = np.array(costs)
    if np.isnan(values).all():
        return np.array([1.0, 2.0, 4.0, 8.0]) * 1e-4
    return np.where(np.isnan(values), np.nanmax(values), values)
