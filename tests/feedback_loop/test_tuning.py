"""The tuner on outcomes drawn from known curves: it must find what full knowledge would, say how sure
it is, refuse when it cannot be sure enough, and add offsets only where a group really differs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from feedback_loop.tuning import (
    Curve,
    Model,
    NotEnoughOutcomes,
    Run,
    Target,
    Traffic,
    assign,
    evaluate,
    optimise,
    thresholds_of,
    tune,
)
from service_kit import policy_file
from service_kit.policy import DEFAULT_POLICY_PATH, Offsets, Thresholds, load_policy

COSTS = np.array([0.0002, 0.001, 0.01, 0.05])
TRUE = [Curve(0.5, 1.5), Curve(-1.0, 1.5), Curve(-2.5, 1.5)]  # P(tier k fails | score)
STATIC = Thresholds(moderate=0.162, complex=0.2007, reasoning=0.4128)


def world(
    n: int, seed: int, harder: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scores, the tier each request needs (1..4) and a family; `harder` shifts a family's curves."""
    rng = np.random.default_rng(seed)
    scores = rng.beta(2, 5, n)
    families = list(rng.choice(["open", "multiple_choice"], n))
    u = rng.random(n)
    need = np.ones(n, dtype=int)
    for i, family in enumerate(families):
        shift = (harder or {}).get(family, 0.0)
        for curve in TRUE:
            need[i] += u[i] < float(Curve(curve.a + shift, curve.b)(np.array([scores[i]]))[0])
    return scores, need, families


def observed(
    scores: np.ndarray,
    need: np.ndarray,
    families: list[str],
    thresholds: Thresholds,
    explore: float,
    seed: int,
) -> list[Run]:
    """What the ledger would show: each routed answer graded, and a share explored one tier down."""
    rng = np.random.default_rng(seed)
    runs = []
    for score, needed, family in zip(scores, need, families, strict=True):
        tier = (
            1
            + int(score >= thresholds.moderate)
            + int(score >= thresholds.complex)
            + int(score >= thresholds.reasoning)
        )
        assessments = [(tier, bool(needed <= tier))]
        if tier > 1 and rng.random() < explore:
            assessments.append((tier - 1, bool(needed <= tier - 1)))
        runs.append(
            Run(
                float(score),
                tier,
                family=family,
                cost_usd=float(COSTS[tier - 1]),
                assessments=tuple(assessments),
            )
        )
    return runs


def policy_with(thresholds: Thresholds):  # type: ignore[no-untyped-def]
    return load_policy(DEFAULT_POLICY_PATH).model_copy(update={"thresholds": thresholds})


def test_the_cut_points_are_the_best_monotone_assignment() -> None:
    """The O(n) prefix-minimum search finds what trying every triple of cut points finds."""
    rng = np.random.default_rng(3)
    traffic = Traffic.of(rng.beta(2, 5, 60))
    model = Model([*TRUE], COSTS)
    for price in (0.0, 0.01, 0.1, 1.0):
        cuts = assign(model, traffic, price, [None, None, None])
        value = np.stack(
            [traffic.weights * (COSTS[t] + price * model.failure(t + 1, traffic.scores)) for t in range(4)]
        )
        prefix = np.concatenate([np.zeros((4, 1)), np.cumsum(value, axis=1)], axis=1)
        n = len(traffic.scores)

        def total(i: int, j: int, k: int, p: np.ndarray = prefix, n: int = n) -> float:
            return float(p[0, i] + p[1, j] - p[1, i] + p[2, k] - p[2, j] + p[3, n] - p[3, k])

        best = min(total(i, j, k) for i in range(n + 1) for j in range(i, n + 1) for k in range(j, n + 1))
        assert total(*cuts) == pytest.approx(best, rel=1e-12, abs=1e-15)


def test_tuning_finds_what_full_knowledge_would() -> None:
    scores, need, families = world(4000, seed=1)
    runs = observed(scores, need, families, STATIC, explore=0.1, seed=2)
    truth_model, traffic = Model([*TRUE], COSTS), Traffic.of(scores)
    for aim_bound in (False, True):
        result = tune(
            runs,
            policy_with(STATIC),
            Target(quality=0.95),
            COSTS,
            bootstrap=40,
            max_interval=0.1,
            aim_bound=aim_bound,
        )
        truth = evaluate(truth_model, traffic, result.proposed.thresholds)
        # At the quality it truly reaches, it costs about what fully informed thresholds would.
        oracle, _ = optimise(truth_model, traffic, Target(quality=truth.quality), STATIC)
        assert truth.cost <= oracle.cost * 1.1
        if aim_bound:  # aiming the interval's lower bound: the true quality is at the target or above
            assert truth.quality >= 0.95 - 0.005
        else:  # aiming the estimate: the true quality is near the target
            assert abs(truth.quality - 0.95) < 0.02
        # The static thresholds overspend on this traffic; the proposal saves, and says so.
        assert result.proposed.cost < result.current.cost * 0.9
        assert result.quality.low <= result.quality.value <= result.quality.high
        assert not result.refused and result.offsets == Offsets()  # the families do not differ here


def test_too_few_outcomes_are_refused_with_how_many_more_are_needed() -> None:
    scores, need, families = world(300, seed=4)
    runs = observed(scores, need, families, STATIC, explore=0.1, seed=5)
    result = tune(runs, policy_with(STATIC), Target(quality=0.95), COSTS, bootstrap=40, max_interval=0.01)
    assert result.refused and "more assessed requests are needed" in result.refused
    needed = int(result.refused.split("about ")[1].split(" more")[0])
    assert needed > 0
    with pytest.raises(NotEnoughOutcomes, match="assessments of each kind"):
        tune([Run(0.3, 2, assessments=((2, True),))] * 20, policy_with(STATIC), Target(quality=0.95), COSTS)


def test_other_targets_are_met() -> None:
    scores, need, families = world(3000, seed=6)
    runs = observed(scores, need, families, STATIC, explore=0.1, seed=7)
    share = tune(runs, policy_with(STATIC), Target(strong_share=0.2), COSTS, bootstrap=10, max_interval=1)
    assert share.proposed.mix[2] + share.proposed.mix[3] <= 0.2
    budget = tune(runs, policy_with(STATIC), Target(budget_usd=0.002), COSTS, bootstrap=10, max_interval=1)
    assert budget.proposed.cost <= 0.002


def test_an_offset_only_for_a_family_that_really_differs() -> None:
    scores, need, families = world(6000, seed=8, harder={"multiple_choice": 1.5})
    runs = observed(scores, need, families, STATIC, explore=0.15, seed=9)
    result = tune(runs, policy_with(STATIC), Target(quality=0.95), COSTS, bootstrap=10, max_interval=1)
    assert set(result.offsets.family) <= {"multiple_choice", "open"}
    assert result.offsets.family.get("multiple_choice", 0) > result.offsets.family.get("open", 0)


def test_the_policy_file_keeps_its_comments_and_gains_offsets(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(DEFAULT_POLICY_PATH.read_text())
    new = policy_file.rewrite(
        path.read_text(),
        Thresholds(moderate=0.3, complex=0.5, reasoning=0.9),
        Offsets(family={"open": -0.05}),
    )
    written = policy_file.write(path, new)
    assert written.thresholds == Thresholds(moderate=0.3, complex=0.5, reasoning=0.9)
    assert written.offsets.family == {"open": -0.05}
    assert "# What every request is compared against" in path.read_text()  # comments survive
    again = policy_file.rewrite(path.read_text(), written.thresholds, Offsets())  # offsets removed
    assert "offsets:" not in again and yaml.safe_load(again)["thresholds"]["complex"] == 0.5
    with pytest.raises(Exception, match="thresholds"):
        policy_file.write(path, new.replace("complex: 0.5000", "complex: 0.1000"))  # out of order
    assert load_policy(path).thresholds.complex == 0.5  # the old file stays


def test_thresholds_between_bins() -> None:
    traffic = Traffic(np.array([0.1, 0.2, 0.3]), np.ones(3))
    assert thresholds_of(traffic, (0, 2, 3)) == Thresholds(moderate=0.0, complex=0.25, reasoning=1.0)


def test_a_change_that_only_adds_quality_needs_no_confidence() -> None:
    """Under-routed traffic: a few hundred outcomes cannot narrow the interval, but spending more for
    more quality is applied at once (only a change that could lose quality waits for confidence)."""
    lenient = Thresholds(moderate=0.6, complex=0.8, reasoning=0.95)  # nearly everything on simple
    scores, need, families = world(400, seed=13)
    runs = observed(scores, need, families, lenient, explore=0.1, seed=14)
    result = tune(runs, policy_with(lenient), Target(quality=0.95), COSTS, bootstrap=40, max_interval=0.01)
    assert result.quality.high - result.quality.low > 0.01  # too few outcomes for that confidence...
    assert result.proposed.quality > result.current.quality and result.proposed.cost > result.current.cost
    assert not result.refused  # ...and yet applied
