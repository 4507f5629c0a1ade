"""Fits the policy's thresholds (and per-family or per-category offsets) to a deployment's outcomes.

The model, per tier boundary k (1: simple, 2: moderate, 3: complex): f_k(s) is the probability that
tier k's answer is not good enough for a request the classifier scored s, a logistic curve in logit(s)
that rises with the score. It is fitted from *assessments* of tier k's answers only:
- requests routed to tier k whose answer was assessed: the judge's grade, a validator's rejection
  (counted only where the judge grades that tier, so passes are seen too), or the caller's feedback;
- explorations of tier k: requests routed to tier k+1, answered again by tier k, compared by the judge.
Assessments of a tier reached by escalation are left out: they exist only because the tier below
failed, which would bias the fit. Exploration is what shows the curve above a threshold, where
requests are never routed to tier k otherwise.

Quality is the share of requests routed to a tier whose answer is good enough: for a request of score
s on tier t, 1 - f_t(s), with the top tier taken as always enough (what it cannot do, nothing can). Cost
is the mean cost per request of each tier, from the same outcomes. For a target (a quality, a strong
share or a budget), the thresholds minimise the cost of the observed traffic (every routed request's
score, with or without evidence) under the target: for a price λ on quality, the cheapest monotone
tier assignment is a small dynamic programme over the sorted scores; λ is searched to meet the target.

Uncertainty comes from a bootstrap over the assessed requests: each estimate is reported with a 90%
interval, and the fit is refused when the interval of the quality at the proposed thresholds is wider
than allowed, with an estimate of how many more assessed requests would narrow it enough.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service_kit.policy import TIER_NAMES, Offsets, Policy, Thresholds

TIERS = 4
_EPS = 1e-4
MIN_PER_CLASS = 5  # assessments of each kind (good enough / not) a boundary needs a sloped curve
MIN_FLAT = 30  # assessments a boundary needs at all (then a flat curve, with too few of one kind)
GROUP_MIN_ASSESSMENTS = 200  # a family or category needs this many to get an offset of its own
OFFSET_GRID = np.round(np.arange(-0.1, 0.1001, 0.01), 2)


@dataclass(frozen=True)
class Run:
    """One routed request as the tuner sees it."""

    score: float
    routed_tier: int  # 1..4
    family: str = ""
    category: str = ""
    cost_usd: float = 0.0  # what it cost (exploration excluded)
    escalated: bool = False
    # Assessments usable for the fit: (tier 1..4, good enough).
    assessments: tuple[tuple[int, bool], ...] = ()


@dataclass(frozen=True)
class Curve:
    """P(the tier's answer is not good enough | score) = sigmoid(a + b * logit(score)), for scores at
    or above `floor`; below it, the value at `floor`. The floor is the lowest score the curve was fitted
    on: below the data a rising curve would promise fewer failures than anything observed shows, and
    a tier's failures there are what a cheaper assignment would risk."""

    a: float
    b: float
    n: int = 0
    floor: float = 0.0

    def __call__(self, score: np.ndarray) -> np.ndarray:
        return _sigmoid(self.a + self.b * _logit(np.maximum(score, self.floor)))


@dataclass
class Model:
    """The fitted curves (None: too little evidence for that boundary) and the tiers' costs."""

    curves: list[Curve | None]  # boundaries 1..3 at index 0..2
    costs: np.ndarray  # mean cost per request of tiers 1..4, at index 0..3
    fallback: list[bool] = field(default_factory=lambda: [False] * 3)

    def failure(self, tier: int, score: np.ndarray) -> np.ndarray:
        """P(tier's answer not good enough | score); the top tier is always good enough."""
        if tier >= TIERS:
            return np.zeros_like(score)
        curve = self.curves[tier - 1]
        if curve is None:  # unknown: the nearest fitted tier below bounds it (a weaker tier fails more)
            lower = [c for c in self.curves[: tier - 1] if c is not None]
            return lower[-1](score) if lower else np.clip(score, 0, 1)
        value = curve(score)
        for below in self.curves[: tier - 1]:  # a stronger tier never fails more than a weaker one
            if below is not None:
                value = np.minimum(value, below(score))
        return value


@dataclass(frozen=True)
class Plan:
    thresholds: Thresholds
    quality: float
    cost: float  # mean per request
    mix: tuple[float, float, float, float]  # share of requests per tier


@dataclass
class Estimate:
    """A figure with its bootstrap 90% interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass
class Result:
    current: Plan
    proposed: Plan
    thresholds: dict[str, Estimate]
    quality: Estimate
    cost: Estimate
    offsets: Offsets
    assessments: dict[int, tuple[int, int]]  # boundary -> (good enough, not)
    notes: list[str]
    refused: str = ""  # why no change is proposed, when it is not


class NotEnoughOutcomes(Exception):
    """Too few assessed requests for the requested confidence; says how many more are needed."""


def _logit(score: np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(score, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(s / (1 - s))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -40, 40))))


def _logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Weights and their covariance of a logistic regression (Newton's method, a light ridge)."""
    w = np.zeros(x.shape[1])
    hessian = np.eye(x.shape[1])
    for _ in range(50):
        p = _sigmoid(x @ w)
        gradient = x.T @ (y - p) - ridge * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w += step
        if np.abs(step).max() < 1e-8:
            break
    return w, np.linalg.inv(hessian)


def fit_curve(score: np.ndarray, failed: np.ndarray) -> Curve | None:
    """Logistic regression of `failed` on logit(score), the slope kept non-negative: a harder-scored
    request is never more likely to be fine on the same tier.

    With fewer than MIN_PER_CLASS of either kind, a slope cannot be told from noise: with at least
    MIN_FLAT assessments the curve is flat at the smoothed rate ((failures + 1) / (n + 2)), which is
    what a tier that rarely fails (or rarely succeeds) needs to be weighed at all; with fewer, None."""
    score, failed = np.asarray(score, dtype=np.float64), np.asarray(failed, dtype=np.float64)
    if min(int(failed.sum()), int(len(failed) - failed.sum())) < MIN_PER_CLASS:
        if len(failed) < MIN_FLAT:
            return None
        rate = (failed.sum() + 1) / (len(failed) + 2)
        return Curve(float(math.log(rate / (1 - rate))), 0.0, len(failed))
    w, _ = _logistic(np.column_stack([np.ones_like(score), _logit(score)]), failed)
    if w[1] < 0:  # flat: the share of failures, whatever the score
        rate = np.clip(failed.mean(), _EPS, 1 - _EPS)
        return Curve(float(math.log(rate / (1 - rate))), 0.0, len(failed))
    # The lowest few scores set the floor (one stray low score should not carry the curve down).
    floor = float(np.quantile(score, 0.02))
    return Curve(float(w[0]), float(w[1]), len(failed), floor)


def group_differs(runs: Sequence[Run], member: Sequence[bool], z: float = 3.0) -> bool:
    """Whether a group's tiers fail measurably more or less often than the others' at the same score:
    a logistic fit with a group term, on some boundary, puts that term |z| standard errors from 0."""
    for k in (1, 2, 3):
        rows = [
            (r.score, 0.0 if good else 1.0, float(m))
            for r, m in zip(runs, member, strict=True)
            for t, good in r.assessments
            if t == k
        ]
        if len(rows) < 2 * GROUP_MIN_ASSESSMENTS:
            continue
        score, failed, group = (np.array(c) for c in zip(*rows, strict=True))
        in_group, failures = int(group.sum()), int(failed.sum())
        if (
            min(in_group, len(group) - in_group) < GROUP_MIN_ASSESSMENTS // 2
            or min(failures, len(failed) - failures) < MIN_PER_CLASS
        ):
            continue
        w, cov = _logistic(np.column_stack([np.ones_like(score), _logit(score), group]), failed)
        if abs(w[2]) >= z * math.sqrt(max(cov[2, 2], 1e-12)):
            return True
    return False


def boundary_data(runs: Sequence[Run]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per boundary k: scores and failures of the assessments of tier k."""
    found: dict[int, tuple[list[float], list[float]]] = {k: ([], []) for k in (1, 2, 3)}
    for run in runs:
        for tier, good in run.assessments:
            if tier in found:
                found[tier][0].append(run.score)
                found[tier][1].append(0.0 if good else 1.0)
    return {k: (np.array(s), np.array(f)) for k, (s, f) in found.items()}


def tier_costs(runs: Sequence[Run], fallback: np.ndarray) -> np.ndarray:
    """Mean cost per request of each tier, from requests answered on their first tier; a tier with too
    few such requests takes the fallback scaled to the observed tiers."""
    sums: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        if not run.escalated:
            sums[run.routed_tier].append(run.cost_usd)
    observed = np.array([np.mean(sums[t]) if len(sums[t]) >= 20 else np.nan for t in range(1, TIERS + 1)])
    known = ~np.isnan(observed)
    if known.all():
        return observed
    scale = (
        float(np.median(observed[known] / fallback[known]))
        if known.any() and (fallback[known] > 0).all()
        else 1.0
    )
    return np.where(known, observed, fallback * scale)


def fit_model(runs: Sequence[Run], fallback_costs: np.ndarray) -> Model:
    data = boundary_data(runs)
    curves = [fit_curve(*data[k]) for k in (1, 2, 3)]
    return Model(curves, tier_costs(runs, fallback_costs), [c is None for c in curves])


@dataclass(frozen=True)
class Traffic:
    """The routed requests' scores, binned (0.001 wide: thresholds are set to that precision)."""

    scores: np.ndarray  # sorted bin values
    weights: np.ndarray  # requests per bin

    @classmethod
    def of(cls, scores: np.ndarray) -> Traffic:
        values, counts = np.unique(np.round(np.clip(scores, 0, 1), 3), return_counts=True)
        return cls(values, counts.astype(np.float64))


def assign(
    model: Model, traffic: Traffic, price: float, fixed: Sequence[float | None]
) -> tuple[int, int, int]:
    """The cut indices i1 <= i2 <= i3 into the sorted bins (tier 1 below i1, 2 below i2, 3 below i3, 4
    from i3) minimising the cost plus `price` times the expected failures; `fixed[k-1]` pins the cut of
    boundary k at that score.

    With prefix sums P_t of each tier's per-bin value, the total is A[i1] + B[i2] + C[i3] + P_4[n]
    (A = P_1 - P_2, B = P_2 - P_3, C = P_3 - P_4): minimised over i1 <= i2 <= i3 with a prefix minimum
    of A and a suffix minimum of C, in O(n).
    """
    s, w = traffic.scores, traffic.weights
    value = np.stack([w * (model.costs[t - 1] + price * model.failure(t, s)) for t in range(1, TIERS + 1)])
    prefix = np.concatenate([np.zeros((TIERS, 1)), np.cumsum(value, axis=1)], axis=1)  # [tier, i]
    parts = [prefix[0] - prefix[1], prefix[1] - prefix[2], prefix[2] - prefix[3]]
    for k, at in enumerate(fixed):
        if at is not None:
            pinned = int(np.searchsorted(s, at, side="left"))
            mask = np.full(len(s) + 1, np.inf)
            mask[pinned] = 0.0
            parts[k] = parts[k] + mask
    a, b, c = parts
    best_a = np.minimum.accumulate(a)
    arg_a = _running_argmin(a)
    best_c = np.minimum.accumulate(c[::-1])[::-1]
    arg_c = len(c) - 1 - _running_argmin(c[::-1])[::-1]
    total = best_a + b + best_c
    i2 = int(np.argmin(total))
    return int(arg_a[i2]), i2, int(arg_c[i2])


def _running_argmin(values: np.ndarray) -> np.ndarray:
    """For each i, the index of the minimum of values[: i + 1] (the first one on ties)."""
    best = np.minimum.accumulate(values)
    is_new = np.concatenate([[True], values[1:] < best[:-1]])
    return np.maximum.accumulate(np.where(is_new, np.arange(len(values)), 0))


def thresholds_of(traffic: Traffic, cuts: tuple[int, int, int]) -> Thresholds:
    """Thresholds between the bins where the tier changes (midpoints; 0 before the first bin, 1 after
    the last)."""
    s = traffic.scores
    values = []
    for cut in cuts:
        if cut <= 0:
            values.append(0.0)
        elif cut >= len(s):
            values.append(1.0)
        else:
            values.append(float((s[cut - 1] + s[cut]) / 2))
    return Thresholds(
        moderate=round(values[0], 4), complex=round(values[1], 4), reasoning=round(values[2], 4)
    )


def evaluate(model: Model, traffic: Traffic, thresholds: Thresholds, shift: float = 0.0) -> Plan:
    """Expected quality, cost per request and tier mix of the traffic under these thresholds (scores
    moved by `shift` before the cut, as a policy offset does)."""
    s, w = traffic.scores, traffic.weights
    shifted = s + shift
    tiers = (
        1
        + (shifted >= thresholds.moderate)
        + (shifted >= thresholds.complex)
        + (shifted >= thresholds.reasoning)
    )
    good = np.zeros(len(s))
    for t in range(1, TIERS + 1):
        on = tiers == t
        good[on] = 1 - model.failure(t, s[on])
    total = w.sum()
    simple, moderate, complex_, reasoning = (float(w[tiers == t].sum() / total) for t in range(1, TIERS + 1))
    quality = float((good * w).sum() / total)
    cost = float((model.costs[tiers - 1] * w).sum() / total)
    return Plan(thresholds, quality, cost, (simple, moderate, complex_, reasoning))


@dataclass(frozen=True)
class Target:
    quality: float | None = None
    strong_share: float | None = None
    budget_usd: float | None = None  # mean cost per request

    def met(self, plan: Plan) -> bool:
        if self.quality is not None:
            return plan.quality >= self.quality - 1e-12
        if self.strong_share is not None:
            return plan.mix[2] + plan.mix[3] <= self.strong_share + 1e-12
        assert self.budget_usd is not None
        return plan.cost <= self.budget_usd


def optimise(model: Model, traffic: Traffic, target: Target, current: Thresholds) -> tuple[Plan, float]:
    """The cheapest thresholds meeting a quality target (or the best quality within a strong share or
    a budget), and the price of quality λ they were found at.

    The price search only reaches assignments on the lower convex hull of (cost, quality); where the
    target falls between two of them (bins whose trade-off is alike switch together), the cut points
    are then moved one boundary at a time from the assignment that meets the target toward the
    cheaper one that does not, as far as the target allows."""
    fixed: list[float | None] = [
        getattr(current, name) if model.fallback[k] else None
        for k, name in enumerate(("moderate", "complex", "reasoning"))
    ]

    def cuts_at(price: float) -> tuple[int, int, int]:
        return assign(model, traffic, price, fixed)

    def plan_of(cuts: Sequence[int]) -> Plan:
        return evaluate(model, traffic, thresholds_of(traffic, (cuts[0], cuts[1], cuts[2])))

    low, high = 0.0, float(model.costs.max() * 1e5 + 1.0)
    if target.quality is not None:  # the smallest price that reaches the quality
        if not target.met(plan_of(cuts_at(high))):
            return plan_of(cuts_at(high)), high
        for _ in range(50):
            middle = (low + high) / 2
            low, high = (low, middle) if target.met(plan_of(cuts_at(middle))) else (middle, high)
        return plan_of(_refine(cuts_at(high), cuts_at(low), target, plan_of)), high
    # A strong share or a budget: the largest price (the best quality) that stays within it.
    if not target.met(plan_of(cuts_at(low))):
        return plan_of(cuts_at(low)), low
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if target.met(plan_of(cuts_at(middle))) else (low, middle)
    return plan_of(cuts_at(low)), low


def _refine(
    meets: tuple[int, int, int],
    cheaper: tuple[int, int, int],
    target: Target,
    plan_of: Callable[[Sequence[int]], Plan],
) -> tuple[int, int, int]:
    cuts = list(meets)
    # Cuts moving up are bounded by the next one: the highest first, so each lower one may follow;
    # cuts moving down, the lowest first, for the same reason.
    up = [k for k in (2, 1, 0) if cheaper[k] > meets[k]]
    down = [k for k in (0, 1, 2) if cheaper[k] < meets[k]]
    for k in up + down:
        lo, hi = sorted((cuts[k], cheaper[k]))
        toward = 1 if cheaper[k] > cuts[k] else -1
        best = cuts[k]
        while lo <= hi:  # the furthest position toward the cheaper cut that still meets the target
            middle = (lo + hi) // 2
            trial = list(cuts)
            trial[k] = middle
            if trial != sorted(trial):
                (hi, lo) = (middle - 1, lo) if toward > 0 else (hi, middle + 1)
                continue
            if target.met(plan_of(trial)):
                best = middle
                lo, hi = (middle + 1, hi) if toward > 0 else (lo, middle - 1)
            else:
                lo, hi = (lo, middle - 1) if toward > 0 else (middle + 1, hi)
        cuts[k] = best
    return cuts[0], cuts[1], cuts[2]


def fit_offsets(
    model: Model, runs: Sequence[Run], thresholds: Thresholds, price: float, by: str
) -> dict[str, float]:
    """Per family or category with enough assessments of its own: the score offset that minimises
    cost + price x expected failures over its requests, under curves refitted to it (the shared ones
    where it has too few). Kept only when it clearly beats no offset."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if getattr(run, by):
            groups[getattr(run, by)].append(run)
    if len(groups) < 2:
        return {}
    offsets: dict[str, float] = {}
    for key, members in sorted(groups.items()):
        if sum(len(r.assessments) for r in members) < GROUP_MIN_ASSESSMENTS:
            continue
        if not group_differs(runs, [getattr(r, by) == key for r in runs]):
            continue  # no measurable difference: the shared thresholds serve it
        own = fit_model(members, model.costs)
        own.costs = model.costs
        own.curves = [mine or shared for mine, shared in zip(own.curves, model.curves, strict=True)]
        traffic = Traffic.of(np.array([r.score for r in members]))
        values = []
        for offset in OFFSET_GRID:
            plan = evaluate(own, traffic, thresholds, float(offset))
            values.append(plan.cost + price * (1 - plan.quality))
        best = int(np.argmin(values))
        none = values[int(np.argmin(np.abs(OFFSET_GRID)))]
        if values[best] < none - 0.005 * abs(none) and abs(OFFSET_GRID[best]) >= 0.01:
            offsets[key] = float(OFFSET_GRID[best])
    return offsets


def tune(
    runs: Sequence[Run],
    policy: Policy,
    target: Target,
    fallback_costs: np.ndarray,
    *,
    offsets: bool = True,
    bootstrap: int = 200,
    max_interval: float = 0.04,
    aim_bound: bool = True,
    seed: int = 0,
) -> Result:
    """Fit, propose and qualify (see the module docstring). Raises NotEnoughOutcomes when no boundary
    can be fitted; sets `refused` when the quality's 90% interval at the proposal is wider than
    `max_interval` (with how many more assessed requests would narrow it enough)."""
    if not runs:
        raise NotEnoughOutcomes("no routed requests in the window")
    traffic = Traffic.of(np.array([r.score for r in runs], dtype=np.float64))
    model = fit_model(runs, fallback_costs)
    data = boundary_data(runs)
    counts = {k: (int((data[k][1] == 0).sum()), int((data[k][1] == 1).sum())) for k in (1, 2, 3)}
    if all(c is None for c in model.curves):
        raise NotEnoughOutcomes(
            f"no tier boundary has {MIN_PER_CLASS} assessments of each kind yet (good enough / not): "
            f"{_counts_text(counts)}; enable the judge on the cheap tiers, exploration, or caller feedback"
        )
    notes = [
        f"{TIER_NAMES[k - 1]} tier: too few assessments ({_counts_text({k: counts[k]})}); "
        f"its upper threshold is kept"
        for k in (1, 2, 3)
        if model.fallback[k - 1]
    ]
    proposed, price = optimise(model, traffic, target, policy.thresholds)
    current = evaluate(model, traffic, policy.thresholds)
    # Bootstrap over the assessed requests and the traffic: refit, and re-optimise under each refit
    # (the thresholds' intervals); the refits also give the proposal's quality and cost intervals.
    rng = np.random.default_rng(seed)
    assessed = [r for r in runs if r.assessments]
    plain = [r for r in runs if not r.assessments]
    samples: dict[str, list[float]] = defaultdict(list)
    refits: list[Model] = []
    for _ in range(bootstrap):
        picked = [assessed[i] for i in rng.integers(0, len(assessed), len(assessed))]
        picked += [plain[i] for i in rng.integers(0, len(plain), len(plain))] if plain else []
        refit = fit_model(picked, fallback_costs)
        refit.fallback = model.fallback
        refit.curves = [mine or shared for mine, shared in zip(refit.curves, model.curves, strict=True)]
        refits.append(refit)
        again, _ = optimise(refit, Traffic.of(np.array([r.score for r in picked])), target, policy.thresholds)
        for name in ("moderate", "complex", "reasoning"):
            samples[name].append(getattr(again.thresholds, name))
    if aim_bound and target.quality is not None and refits:
        # Aim the interval, not the estimate: when the quality's 5% bound at the proposal falls short
        # of the target, ask for as much more as it falls short (what the estimate may be off by).
        low = float(np.quantile([evaluate(r, traffic, proposed.thresholds).quality for r in refits], 0.05))
        if low < target.quality:
            shifted = Target(quality=min(0.999, target.quality + (target.quality - low)))
            proposed, price = optimise(model, traffic, shifted, policy.thresholds)
    for refit in refits:
        at_proposal = evaluate(refit, traffic, proposed.thresholds)
        samples["quality"].append(at_proposal.quality)
        samples["cost"].append(at_proposal.cost)
    fitted = Offsets()
    if offsets:
        fitted = Offsets(
            family=fit_offsets(model, runs, proposed.thresholds, price, "family"),
            category=fit_offsets(model, runs, proposed.thresholds, price, "category"),
        )
        if (fitted.family or fitted.category) and refits and target.quality is not None:
            # Offsets move requests between tiers: they stay only if the quality's 5% bound over all
            # the traffic, with them, still reaches the target (else the thresholds alone go).
            with_offsets = [_quality_with_offsets(r, runs, proposed.thresholds, fitted) for r in refits]
            if float(np.quantile(with_offsets, 0.05)) < target.quality:
                notes.append("offsets left out: with them, the quality's 5% bound falls short of the target")
                fitted = Offsets()

    def estimate(name: str, value: float) -> Estimate:
        low, high = np.quantile(samples[name], [0.05, 0.95]) if samples[name] else (value, value)
        return Estimate(value, float(low), float(high))

    quality = estimate("quality", proposed.quality)
    result = Result(
        current=current,
        proposed=proposed,
        thresholds={
            n: estimate(n, getattr(proposed.thresholds, n)) for n in ("moderate", "complex", "reasoning")
        },
        quality=quality,
        cost=estimate("cost", proposed.cost),
        offsets=fitted,
        assessments=counts,
        notes=notes,
    )
    width = quality.high - quality.low
    raises_quality = proposed.quality >= current.quality and proposed.cost >= current.cost
    if width > max_interval and not raises_quality:
        # Only a change that could lower quality needs the confidence; one that spends more for more
        # quality (the served traffic is under-routed) is applied as soon as it is estimated.
        # An interval narrows with the square root of the sample: this many assessed requests in all.
        needed = math.ceil(len(assessed) * (width / max_interval) ** 2)
        result.refused = (
            f"the expected quality at the proposed thresholds is {quality} (its 90% interval is "
            f"{width:.3f} wide, at most {max_interval} allowed): about {needed - len(assessed)} more "
            f"assessed requests are needed ({len(assessed)} now)"
        )
    return result


def _quality_with_offsets(
    model: Model, runs: Sequence[Run], thresholds: Thresholds, offsets: Offsets
) -> float:
    groups: dict[float, list[float]] = defaultdict(list)
    for run in runs:
        shift = offsets.family.get(run.family, 0.0) + offsets.category.get(run.category, 0.0)
        groups[shift].append(run.score)
    total = sum(len(scores) for scores in groups.values())
    return sum(
        evaluate(model, Traffic.of(np.array(scores)), thresholds, shift).quality * len(scores) / total
        for shift, scores in groups.items()
    )


def _counts_text(counts: dict[int, tuple[int, int]]) -> str:
    return ", ".join(
        f"{TIER_NAMES[k - 1]}: {good} good enough / {bad} not" for k, (good, bad) in sorted(counts.items())
    )
