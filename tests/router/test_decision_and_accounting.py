"""router_svc/decision.py and router_svc/accounting.py: the tier the router decides, and what it records."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2
from router_svc.accounting import ERROR_CHARS, baseline_cost, record
from router_svc.budgets import BudgetVerdict
from router_svc.decision import Decider
from router_svc.provider_calls import Outcome
from router_svc.request import pin
from service_kit.errors import Unavailable
from tests.router.route_parts import PRICES, build, request


class Budgets:
    """A BudgetGate's check, scripted."""

    def __init__(self, verdict: BudgetVerdict) -> None:
        self.verdict = verdict

    async def check(self, caller: str) -> BudgetVerdict:
        return self.verdict


def _decider(
    tmp_path: Path, score: float, verdict: BudgetVerdict, **settings: object
) -> tuple[Decider, object]:
    parts = build(tmp_path, score=score, **settings)
    decider = Decider(
        settings=parts.router._settings,
        classifier=parts.router._decider._classifier,
        budgets=Budgets(verdict),  # type: ignore[arg-type]
    )
    return decider, parts


async def test_the_tier_is_cut_once_by_the_routers_policy(tmp_path: Path) -> None:
    parts = build(tmp_path, score=0.99)
    pinned = pin(request(), parts.policy, PRICES)
    decision = await parts.router._decider.decide(pinned, None)
    assert decision.tier == common_pb2.TIER_REASONING and decision.scored and decision.warnings == []


async def test_near_a_soft_limit_the_same_score_lands_a_tier_cheaper(tmp_path: Path) -> None:
    threshold = build(tmp_path).policy.thresholds.complex
    decider, parts = _decider(tmp_path, threshold + 0.01, BudgetVerdict(ledger_pb2.BUDGET_STATE_SOFT_LIMIT))
    decision = await decider.decide(pin(request(), parts.policy, PRICES), None)  # type: ignore[attr-defined]
    assert decision.tier < common_pb2.TIER_COMPLEX and "budget_soft_limit" in decision.warnings


async def test_an_unreachable_ledger_fails_closed_only_when_told_to(tmp_path: Path) -> None:
    unknown = BudgetVerdict(ledger_pb2.BUDGET_STATE_UNSPECIFIED, current=False)
    decider, parts = _decider(tmp_path, 0.1, unknown, budget_fail_mode="closed")
    with pytest.raises(Unavailable) as caught:
        await decider.decide(pin(request(), parts.policy, PRICES), None)  # type: ignore[attr-defined]
    assert caught.value.reason == "BUDGET_CHECK_UNAVAILABLE"
    decider, parts = _decider(tmp_path, 0.1, unknown, budget_fail_mode="open")
    decision = await decider.decide(pin(request(), parts.policy, PRICES), None)  # type: ignore[attr-defined]
    assert decision.warnings == ["budget_check_unavailable"]


async def test_a_forced_tier_skips_the_classifier(tmp_path: Path) -> None:
    parts = build(tmp_path)
    pinned = pin(request(force_tier=common_pb2.TIER_COMPLEX), parts.policy, PRICES)
    decision = await parts.router._decider.decide(pinned, None)
    assert decision.tier == common_pb2.TIER_COMPLEX and parts.classifier.calls == 0
    assert decision.verdict.source == common_pb2.CLASSIFIER_SOURCE_OVERRIDE


async def test_the_records_carry_the_decision_and_add_up_to_the_response(tmp_path: Path) -> None:
    parts = build(tmp_path, score=0.5)
    response = await parts.router.route(request(), None)
    (record,) = parts.sink.records
    assert (record.request_id, record.run_id, record.caller) == ("r-1", response.run_id, "tests")
    assert record.score == pytest.approx(0.5) and record.classifier_version == "scripted/1"
    assert record.usage.cost_usd == pytest.approx(response.usage.cost_usd) and record.usage.cost_usd > 0
    assert record.final and record.policy_version == parts.policy.version_id
    assert response.usage.baseline_cost_usd == pytest.approx(
        baseline_cost(pin(request(), parts.policy, PRICES), response.attempts[0].usage)[0]
    )


async def test_a_long_error_is_cut_to_what_the_ledger_takes(tmp_path: Path) -> None:
    parts = build(tmp_path)
    response = await parts.router.route(request(), None)
    response.attempts[0].error = "x" * (ERROR_CHARS * 3)
    pinned = pin(request(), parts.policy, PRICES)
    decision = await parts.router._decider.decide(pinned, None)
    entry = record(pinned, decision, Outcome(response.attempts[0]), 1, final=True)
    assert len(entry.error) == ERROR_CHARS
