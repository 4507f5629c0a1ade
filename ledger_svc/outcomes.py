"""The feedback loop's evidence: what the records and the callers' verdicts say about the tier each
routed run needed, and the misclassification report built from it.

Evidence on a run, each on the answer of one tier t (1 simple ... 4 reasoning):
- a validator rejected the answer (outcome ESCALATED or VALIDATION_FAILED, not by the judge): t too low;
- the judge graded it: FAIL, t too low; PASS, t enough;
- exploration (the next tier down answered in the background, the judge compared the two answers):
  PASS, that cheaper tier was enough; FAIL, it was not;
- caller feedback on the answer: GOOD, the answering tier was enough; BAD, it was not (and, with a
  needed tier, at least that one); OVERKILL, a cheaper tier would have done (the needed tier, else one
  below the answering tier).
Together they bound the needed tier: at least `lo`, at most `hi` (None: no upper bound known).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ledger_svc.records import to_usd
from ledger_svc.schema import feedback, usage_records
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2

SIMPLE, REASONING = common_pb2.TIER_SIMPLE, common_pb2.TIER_REASONING
_REJECTED = (common_pb2.ATTEMPT_OUTCOME_ESCALATED, common_pb2.ATTEMPT_OUTCOME_VALIDATION_FAILED)
_PASS, _FAIL = common_pb2.JUDGE_VERDICT_PASS, common_pb2.JUDGE_VERDICT_FAIL
_GOOD, _BAD, _OVERKILL = (
    ledger_pb2.FEEDBACK_VERDICT_GOOD,
    ledger_pb2.FEEDBACK_VERDICT_BAD,
    ledger_pb2.FEEDBACK_VERDICT_OVERKILL,
)
_BATCH = 500


@dataclass(slots=True)
class Run:
    """One routed run, its classification, its spend and the evidence on it."""

    request_id: str
    caller: str
    run_id: str
    ts: int
    score: float
    category: int
    family: str
    classifier_source: int
    classifier_version: str
    policy_version: str
    routed_tier: int
    answer_tier: int
    model: str
    cost_nusd: int
    exploration_nusd: int
    escalated: bool
    answer_cost_nusd: int  # the answering attempt alone
    explored_cost_nusd: int  # the exploration call alone (its grading excluded)
    evidence: list[tuple[int, int, bool, int]] = field(default_factory=list)  # kind, tier, adequate, needed

    @property
    def bounds(self) -> tuple[int, int | None]:
        """(lo, hi): the needed tier is at least lo and at most hi (None: unknown)."""
        lo: int = SIMPLE
        hi: int | None = None
        for _kind, tier, adequate, _needed in self.evidence:
            if adequate:
                hi = tier if hi is None else min(hi, tier)
            else:
                lo = max(lo, min(tier + 1, REASONING))
        for kind, _tier, adequate, needed in self.evidence:
            if kind == ledger_pb2.EVIDENCE_KIND_FEEDBACK and not adequate and needed:
                lo = max(lo, needed)
        return lo, hi

    @property
    def explored(self) -> tuple[int, bool] | None:
        """(tier, sufficient) of the exploration, if the run was explored."""
        for kind, tier, adequate, _ in self.evidence:
            if kind == ledger_pb2.EVIDENCE_KIND_EXPLORATION:
                return tier, adequate
        return None

    def verdict(self) -> str:
        """'too_low', 'adequate', 'too_high', 'inconsistent' or '' (no evidence), for the routed tier."""
        if not self.evidence:
            return ""
        lo, hi = self.bounds
        if hi is not None and lo > hi:
            return "inconsistent"
        if lo > self.routed_tier:
            return "too_low"
        if hi is not None and hi < self.routed_tier:
            return "too_high"
        return "adequate"

    def to_pb(self) -> ledger_pb2.Outcome:
        lo, hi = self.bounds
        outcome = ledger_pb2.Outcome(
            request_id=self.request_id,
            caller=self.caller,
            run_id=self.run_id,
            score=self.score,
            category=self.category,  # type: ignore[arg-type]
            family=self.family,
            classifier_source=self.classifier_source,  # type: ignore[arg-type]
            classifier_version=self.classifier_version,
            policy_version=self.policy_version,
            routed_tier=self.routed_tier,  # type: ignore[arg-type]
            answer_tier=self.answer_tier,  # type: ignore[arg-type]
            model=self.model,
            cost_usd=to_usd(self.cost_nusd),
            exploration_cost_usd=to_usd(self.exploration_nusd),
            evidence=[
                ledger_pb2.Evidence(kind=k, tier=t, adequate=a, needed_tier=n)  # type: ignore[arg-type]
                for k, t, a, n in self.evidence
            ],
            needed_at_least=lo if self.evidence else 0,  # type: ignore[arg-type]
            needed_at_most=hi or 0,  # type: ignore[arg-type]
            consistent=hi is None or lo <= hi,
        )
        outcome.time.FromMicroseconds(self.ts)
        return outcome


def _runs_query(since_us: int, until_us: int, caller: str | None) -> Any:
    r = usage_records.c
    explored = r.exploration == sa.true()
    main = ~explored
    first = r.attempt == 1
    answer = sa.and_(r.final == sa.true(), main)

    def at_first(column: Any) -> Any:
        return sa.func.max(sa.case((first, column)))

    validator_fail = sa.and_(main, r.outcome.in_(_REJECTED), r.judge_verdict != _FAIL)
    query = (
        sa.select(
            r.request_id,
            r.caller,
            r.run_id,
            sa.func.min(r.ts),
            at_first(r.score),
            at_first(r.category),
            at_first(r.family),
            at_first(r.classifier_source),
            at_first(r.classifier_version),
            at_first(r.policy_version),
            at_first(r.tier),
            sa.func.max(sa.case((answer, r.tier))),
            sa.func.max(sa.case((answer, r.model))),
            sa.func.sum(sa.case((main, r.cost_nusd + r.classifier_nusd + r.judge_nusd), else_=0)),
            sa.func.sum(sa.case((explored, r.cost_nusd + r.judge_nusd), else_=0)),
            sa.func.sum(sa.case((r.outcome == common_pb2.ATTEMPT_OUTCOME_ESCALATED, 1), else_=0)),
            sa.func.sum(sa.case((answer, r.cost_nusd), else_=0)),
            sa.func.sum(sa.case((explored, r.cost_nusd), else_=0)),
            sa.func.max(sa.case((validator_fail, r.tier))),
            sa.func.max(sa.case((sa.and_(main, r.judge_verdict == _FAIL), r.tier))),
            sa.func.min(sa.case((sa.and_(main, r.judge_verdict == _PASS), r.tier))),
            sa.func.min(sa.case((sa.and_(explored, r.judge_verdict == _PASS), r.tier))),
            sa.func.max(sa.case((sa.and_(explored, r.judge_verdict == _FAIL), r.tier))),
        )
        .where(r.ts >= since_us, r.ts < until_us)
        .group_by(r.request_id, r.caller, r.run_id)
        .order_by(sa.func.min(r.ts), r.request_id, r.caller, r.run_id)
    )
    if caller is not None:
        query = query.where(r.caller == caller)
    return query


def _run(row: Sequence[Any]) -> Run | None:
    (rid, caller, run_id, ts, score, category, family, source, version, policy, routed, answer_tier, model,
     cost, exploration, escalations, answer_cost, explored_cost,
     validator_fail, judge_fail, judge_pass, explore_pass, explore_fail) = row  # fmt: skip
    if score is None or routed is None:  # attempt 1 is outside the window
        return None
    run = Run(
        rid, caller, run_id, int(ts), float(score), int(category), family or "", int(source), version or "",
        policy or "", int(routed), int(answer_tier or 0), model or "", int(cost or 0), int(exploration or 0),
        bool(escalations), int(answer_cost or 0), int(explored_cost or 0),
    )  # fmt: skip
    for kind, tier, adequate in (
        (ledger_pb2.EVIDENCE_KIND_VALIDATOR, validator_fail, False),
        (ledger_pb2.EVIDENCE_KIND_JUDGE, judge_fail, False),
        (ledger_pb2.EVIDENCE_KIND_JUDGE, judge_pass, True),
        (ledger_pb2.EVIDENCE_KIND_EXPLORATION, explore_pass, True),
        (ledger_pb2.EVIDENCE_KIND_EXPLORATION, explore_fail, False),
    ):
        if tier is not None:
            run.evidence.append((kind, int(tier), adequate, 0))
    return run


def _attach_feedback(runs: list[Run], rows: Iterable[Any]) -> None:
    by_key = {(run.request_id, run.caller, run.run_id): run for run in runs}
    for row in rows:
        run = by_key.get((row.request_id, row.caller, row.run_id))
        if run is None or not run.answer_tier:
            continue
        if row.verdict == _GOOD:
            run.evidence.append((ledger_pb2.EVIDENCE_KIND_FEEDBACK, run.answer_tier, True, 0))
        elif row.verdict == _BAD:
            run.evidence.append((ledger_pb2.EVIDENCE_KIND_FEEDBACK, run.answer_tier, False, row.needed_tier))
        elif row.verdict == _OVERKILL:
            tier = row.needed_tier or max(SIMPLE, run.answer_tier - 1)
            run.evidence.append((ledger_pb2.EVIDENCE_KIND_FEEDBACK, tier, True, row.needed_tier))


async def runs(
    conn: Any, since_us: int, until_us: int, caller: str | None, with_evidence_only: bool = False
) -> AsyncIterator[list[Run]]:
    """The window's runs, oldest first, in batches, with their evidence."""
    result = await conn.stream(_runs_query(since_us, until_us, caller).execution_options(yield_per=_BATCH))
    async for partition in result.partitions(_BATCH):
        batch = [run for run in map(_run, partition) if run is not None]
        ids = sorted({run.request_id for run in batch})
        if ids:
            found = await conn.execute(
                sa.select(feedback).where(feedback.c.request_id.in_(ids)).order_by(feedback.c.id)
            )
            _attach_feedback(batch, found)
        if with_evidence_only:
            batch = [run for run in batch if run.evidence]
        if batch:
            yield batch


# ---- the misclassification report ------------------------------------------------------------------


@dataclass
class _Totals:
    runs: int = 0
    with_evidence: int = 0
    verdicts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    evidence_by_kind: list[int] = field(default_factory=lambda: [0] * len(ledger_pb2.EvidenceKind.values()))
    escalated: int = 0
    matrix: list[int] = field(default_factory=lambda: [0] * 16)
    explored: dict[int, list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0])
    )  # tier -> [n, ok]
    saving_nusd: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # tier -> observed saving
    runs_by_tier: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    cost_nusd: int = 0
    exploration_nusd: int = 0

    def add(self, run: Run) -> None:
        self.runs += 1
        self.runs_by_tier[run.routed_tier] += 1
        self.escalated += run.escalated
        self.cost_nusd += run.cost_nusd
        self.exploration_nusd += run.exploration_nusd
        verdict = run.verdict()
        if not verdict:
            return
        self.with_evidence += 1
        self.verdicts[verdict] += 1
        for kind, *_ in run.evidence:
            self.evidence_by_kind[kind] += 1
        lo, _ = run.bounds
        if SIMPLE <= run.routed_tier <= REASONING:
            self.matrix[(run.routed_tier - 1) * 4 + (lo - 1)] += 1
        explored = run.explored
        if explored is not None:
            counts = self.explored[run.routed_tier]
            counts[0] += 1
            if explored[1]:
                counts[1] += 1
                self.saving_nusd[run.routed_tier] += max(0, run.answer_cost_nusd - run.explored_cost_nusd)

    def to_pb(self) -> ledger_pb2.FeedbackTotals:
        explored = sum(n for n, _ in self.explored.values())
        sufficient = sum(ok for _, ok in self.explored.values())
        estimated = 0.0
        for tier, (n, ok) in self.explored.items():
            if ok:  # runs at this tier x sufficient share x mean saving where it sufficed
                estimated += self.runs_by_tier[tier] * (ok / n) * (self.saving_nusd[tier] / ok)
        return ledger_pb2.FeedbackTotals(
            runs=self.runs,
            runs_with_evidence=self.with_evidence,
            too_low=self.verdicts["too_low"],
            adequate=self.verdicts["adequate"],
            too_high=self.verdicts["too_high"],
            inconsistent=self.verdicts["inconsistent"],
            evidence_by_kind=self.evidence_by_kind,
            escalation_rate=self.escalated / self.runs if self.runs else 0.0,
            routed_vs_needed=self.matrix,
            explored=explored,
            explored_sufficient=sufficient,
            over_routing_spend_usd=to_usd(sum(self.saving_nusd.values())),
            estimated_over_routing_spend_usd=round(estimated) / 1e9,
            cost_usd=to_usd(self.cost_nusd),
            exploration_cost_usd=to_usd(self.exploration_nusd),
        )


def _group_key(dim: int, run: Run) -> str:
    if dim == ledger_pb2.FEEDBACK_GROUP_BY_CATEGORY:
        return (
            common_pb2.Category.Name(common_pb2.Category.ValueType(run.category))
            if run.category in common_pb2.Category.values()
            else str(run.category)
        )
    if dim == ledger_pb2.FEEDBACK_GROUP_BY_TIER:
        return (
            common_pb2.Tier.Name(common_pb2.Tier.ValueType(run.routed_tier))
            if run.routed_tier in common_pb2.Tier.values()
            else str(run.routed_tier)
        )
    if dim == ledger_pb2.FEEDBACK_GROUP_BY_CALLER:
        return run.caller
    if dim == ledger_pb2.FEEDBACK_GROUP_BY_FAMILY:
        return run.family or "(none)"
    band = min(9, max(0, int(run.score * 10)))
    return f"{band / 10:.1f}-{(band + 1) / 10:.1f}"


class Report:
    """Accumulates runs into the totals and the requested breakdowns."""

    def __init__(self, group_by: Sequence[int]) -> None:
        self._total = _Totals()
        self._groups: dict[int, dict[str, _Totals]] = {dim: defaultdict(_Totals) for dim in group_by}

    def add(self, batch: Iterable[Run]) -> None:
        for run in batch:
            self._total.add(run)
            for dim, groups in self._groups.items():
                groups[_group_key(dim, run)].add(run)

    def totals_pb(self) -> ledger_pb2.FeedbackTotals:
        return self._total.to_pb()

    def breakdowns_pb(self) -> list[ledger_pb2.FeedbackBreakdown]:
        return [
            ledger_pb2.FeedbackBreakdown(
                group_by=dim,  # type: ignore[arg-type]
                groups=[
                    ledger_pb2.FeedbackGroup(key=key, totals=totals.to_pb())
                    for key, totals in sorted(groups.items())
                ],
            )
            for dim, groups in self._groups.items()
        ]
