"""The feedback loop's evidence in the ledger: outcomes per run, the misclassification report, and
exploration spend kept apart (its own line in GetStats, not charged to the caller's budget)."""

from __future__ import annotations

import grpc
import pytest

from llmroute.common.v1 import common_pb2 as C
from llmroute.ledger.v1 import ledger_pb2 as L
from tests.ledger.conftest import Ledger
from tests.ledger.ledger_helpers import now_us, record

S, M, X, R = C.TIER_SIMPLE, C.TIER_MODERATE, C.TIER_COMPLEX, C.TIER_REASONING
ESCALATED, OK = C.ATTEMPT_OUTCOME_ESCALATED, C.ATTEMPT_OUTCOME_OK
PASS, FAIL = C.JUDGE_VERDICT_PASS, C.JUDGE_VERDICT_FAIL


def scenario(at: int) -> list[L.UsageRecord]:
    """Six runs of caller "app", each with another kind of evidence."""

    def rec(rid: str, attempt: int, tier: int, **kw: object) -> L.UsageRecord:
        kw.setdefault("score", {"a": 0.05, "b": 0.45, "c": 0.2, "d": 0.8, "e": 0.01, "f": 0.3}[rid])
        return record(rid, attempt, at=at + attempt, caller="app", run_id=f"run-{rid}", tier=tier,
                      policy_version="v1-test", family="open", **kw)  # type: ignore[arg-type]  # fmt: skip

    return [
        # a: simple rejected by a validator, escalated; moderate passed the judge.
        rec("a", 1, S, outcome=ESCALATED, error="empty", cost=0.001),
        rec("a", 2, M, final=True, cost=0.002, judge_verdict=PASS),
        # b: complex answered; exploration showed moderate was as good (cheaper).
        rec("b", 1, X, final=True, cost=0.010),
        rec("b", 1001, M, cost=0.002, judge=0.0005, exploration=True, judge_verdict=PASS),
        # c: moderate answered; the caller says it was bad and complex was needed.
        rec("c", 1, M, final=True, cost=0.002),
        # d: reasoning answered; the caller says simple would have done.
        rec("d", 1, R, final=True, cost=0.050),
        # e: simple answered; nothing known.
        rec("e", 1, S, final=True, cost=0.0001),
        # f: moderate passed the judge, but the caller says it was bad: the evidence disagrees.
        rec("f", 1, M, final=True, cost=0.002, judge_verdict=PASS),
    ]


async def _feedback(ledger: Ledger) -> None:
    for rid, verdict, needed in (
        ("c", L.FEEDBACK_VERDICT_BAD, X),
        ("d", L.FEEDBACK_VERDICT_OVERKILL, S),
        ("f", L.FEEDBACK_VERDICT_BAD, C.TIER_UNSPECIFIED),
    ):
        await ledger.stub.RecordFeedback(
            L.RecordFeedbackRequest(request_id=rid, caller="app", verdict=verdict, needed_tier=needed)
        )


async def test_outcomes_bound_the_needed_tier_of_every_run(ledger: Ledger) -> None:
    await ledger.stub.RecordUsage(L.RecordUsageRequest(records=scenario(now_us() - 60_000_000)))
    await _feedback(ledger)
    outcomes = {
        o.request_id: o
        async for batch in ledger.stub.ExportOutcomes(L.ExportOutcomesRequest())
        for o in batch.outcomes
    }
    assert set(outcomes) == set("abcdef")
    bounds = {rid: (o.needed_at_least, o.needed_at_most, o.consistent) for rid, o in outcomes.items()}
    assert bounds == {
        "a": (M, M, True),  # simple failed, moderate passed
        "b": (S, M, True),  # moderate was enough
        "c": (X, 0, True),  # at least complex
        "d": (S, S, True),  # simple would have done
        "e": (0, 0, True),  # no evidence
        "f": (X, M, False),  # judge says moderate was enough, the caller says it was not
    }
    a = outcomes["a"]
    assert (a.routed_tier, a.answer_tier, a.score, a.family, a.policy_version) == (
        S,
        M,
        0.05,
        "open",
        "v1-test",
    )
    assert [(e.kind, e.tier, e.adequate) for e in a.evidence] == [
        (L.EVIDENCE_KIND_VALIDATOR, S, False),
        (L.EVIDENCE_KIND_JUDGE, M, True),
    ]
    b = outcomes["b"]
    assert b.cost_usd == pytest.approx(0.010) and b.exploration_cost_usd == pytest.approx(0.0025)
    only = [
        o.request_id
        async for batch in ledger.stub.ExportOutcomes(L.ExportOutcomesRequest(with_evidence_only=True))
        for o in batch.outcomes
    ]
    assert sorted(only) == list("abcdf")


async def test_the_report_puts_routed_tiers_against_needed_tiers(ledger: Ledger) -> None:
    await ledger.stub.RecordUsage(L.RecordUsageRequest(records=scenario(now_us() - 60_000_000)))
    await _feedback(ledger)
    report = await ledger.stub.GetFeedbackStats(
        L.GetFeedbackStatsRequest(group_by=[L.FEEDBACK_GROUP_BY_TIER, L.FEEDBACK_GROUP_BY_SCORE_BAND])
    )
    t = report.totals
    assert (t.runs, t.runs_with_evidence) == (6, 5)
    assert (t.too_low, t.adequate, t.too_high, t.inconsistent) == (2, 0, 2, 1)
    assert t.escalation_rate == pytest.approx(1 / 6)
    assert (t.explored, t.explored_sufficient) == (1, 1)
    # Where exploration showed moderate would do: the complex answer's cost minus the moderate one's.
    assert t.over_routing_spend_usd == pytest.approx(0.010 - 0.002)
    # One complex run in all, explored and sufficient: the estimate is that same saving.
    assert t.estimated_over_routing_spend_usd == pytest.approx(0.008)
    assert t.exploration_cost_usd == pytest.approx(0.0025)
    kinds = list(t.evidence_by_kind)
    assert kinds[L.EVIDENCE_KIND_VALIDATOR] == 1 and kinds[L.EVIDENCE_KIND_FEEDBACK] == 3
    assert kinds[L.EVIDENCE_KIND_EXPLORATION] == 1 and kinds[L.EVIDENCE_KIND_JUDGE] == 2
    matrix = list(t.routed_vs_needed)
    assert matrix[(S - 1) * 4 + (M - 1)] == 1  # a: routed simple, needed moderate
    assert matrix[(M - 1) * 4 + (X - 1)] == 2  # c and f: routed moderate, needed at least complex
    by_tier = {
        g.key: g.totals for b in report.breakdowns if b.group_by == L.FEEDBACK_GROUP_BY_TIER for g in b.groups
    }
    assert by_tier["TIER_SIMPLE"].too_low == 1 and by_tier["TIER_SIMPLE"].runs == 2
    assert by_tier["TIER_REASONING"].too_high == 1
    bands = {
        g.key for b in report.breakdowns if b.group_by == L.FEEDBACK_GROUP_BY_SCORE_BAND for g in b.groups
    }
    assert bands == {"0.0-0.1", "0.4-0.5", "0.2-0.3", "0.8-0.9", "0.3-0.4"}


async def test_exploration_is_its_own_line_and_not_the_callers_spend(midday_ledger: Ledger) -> None:
    ledger = midday_ledger  # the daily budget's period holds a minute ago at any time of day
    await ledger.stub.SetBudget(
        L.SetBudgetRequest(budget=L.Budget(caller="app", period=L.BUDGET_PERIOD_DAILY, hard_limit_usd=1.0))
    )
    await ledger.stub.RecordUsage(L.RecordUsageRequest(records=scenario(ledger.clock() - 60_000_000)))
    stats = await ledger.stub.GetStats(L.GetStatsRequest(group_by=[L.GROUP_BY_POLICY_VERSION]))
    t = stats.totals
    assert t.exploration_attempts == 1 and t.exploration_cost_usd == pytest.approx(0.0025)
    assert t.attempts == 8 and t.requests == 6  # the exploration attempt is a call, not a request
    assert t.cost_usd == pytest.approx(0.0691)  # exploration is spend
    assert t.failed_attempt_cost_usd == pytest.approx(0.001)  # but not a failed attempt
    assert t.fallback_rate == pytest.approx(1 / 6)  # run b did not need a second attempt
    [policy] = stats.breakdowns
    assert [(g.key, g.totals.requests) for g in policy.groups] == [("v1-test", 6)]
    [budget] = (await ledger.stub.CheckBudget(L.CheckBudgetRequest(caller="app"))).budgets
    assert budget.spent_usd == pytest.approx(0.0691 + 0.0005 - 0.0025)  # the judge counts; exploration not


async def test_the_report_refuses_unknown_dimensions(ledger: Ledger) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ledger.stub.GetFeedbackStats(L.GetFeedbackStatsRequest(group_by=[42]))  # type: ignore[list-item]
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
