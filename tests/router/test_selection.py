"""router_svc/selection.py: which models may answer, cheapest first, and why the others may not."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from difficulty import Verdict
from llmroute.common.v1 import common_pb2
from router_svc import selection
from router_svc.decision import Decision
from router_svc.request import pin
from service_kit.errors import FailedPrecondition, ResourceExhausted
from tests.router.route_parts import PRICES, build, request


def test_candidates_are_cheapest_first_and_the_tiers_above_follow(tmp_path: Path) -> None:
    parts = build(tmp_path)
    plan = parts.router.plan(request(), common_pb2.TIER_MODERATE, common_pb2.CATEGORY_CHAT)
    assert plan.tiers == [common_pb2.TIER_MODERATE, common_pb2.TIER_COMPLEX, common_pb2.TIER_REASONING]
    costs = [c.estimated_cost_usd for c in plan.choices(common_pb2.TIER_MODERATE) if c.price_known]
    assert costs == sorted(costs) and len(costs) >= 2
    assert {c.model for c in plan.explained} == {
        s.model for s in parts.policy.candidates(common_pb2.TIER_MODERATE)
    }


def test_a_model_in_cooldown_is_skipped_with_the_reason(tmp_path: Path) -> None:
    parts = build(tmp_path, cooldown_after_failures=1)
    cheapest = parts.router.plan(request(), common_pb2.TIER_SIMPLE, 0).choices(common_pb2.TIER_SIMPLE)[0]
    parts.cooldowns.failure(cheapest.spec.model)
    plan = parts.router.plan(request(), common_pb2.TIER_SIMPLE, 0)
    assert cheapest.spec.model not in [c.spec.model for c in plan.choices(common_pb2.TIER_SIMPLE)]
    skipped = {c.model: c.skipped_reason for c in plan.explained}
    assert skipped[cheapest.spec.model] == "cooldown"


def test_input_tokens_are_counted_once_per_tokenizer(tmp_path: Path) -> None:
    parts = build(tmp_path)
    with mock.patch.object(selection, "count_tokens", wraps=selection.count_tokens) as counting:
        plan = parts.router.plan(request(), common_pb2.TIER_SIMPLE, 0)
        for tier in plan.tiers:
            plan.choices(tier)
    models = {c.model for c in plan.explained} | {c.spec.model for t in plan.tiers for c in plan.choices(t)}
    tokenizers = {selection._tokenizer_of(m) for m in models}
    assert counting.call_count == len(tokenizers) < len(models)


def test_nothing_under_the_cost_cap_is_refused_with_the_cheapest_estimate(tmp_path: Path) -> None:
    parts = build(tmp_path)
    pinned = pin(request(max_cost_usd=1e-12), parts.policy, PRICES)
    with pytest.raises(ResourceExhausted) as caught:
        parts.router._selector.checked_plan(pinned, _decision(common_pb2.TIER_SIMPLE))
    assert caught.value.reason == "MAX_COST_EXCEEDED"


def test_a_forced_model_that_cannot_be_used_says_why(tmp_path: Path) -> None:
    parts = build(tmp_path, cooldown_after_failures=1)
    model = parts.policy.candidates(common_pb2.TIER_SIMPLE)[0].model
    parts.cooldowns.failure(model)
    pinned = pin(request(force_model=model), parts.policy, PRICES)
    with pytest.raises(FailedPrecondition) as caught:
        parts.router._selector.checked_plan(pinned, _decision(common_pb2.TIER_SIMPLE))
    assert caught.value.reason == "FORCED_MODEL_UNAVAILABLE"


def _decision(tier: common_pb2.Tier.ValueType) -> Decision:
    return Decision(Verdict(score=0.0, confidence=1.0), tier, [], 0.0, 0.0)
