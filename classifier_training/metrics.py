"""Routing-quality metrics as RouteLLM measures them (see /work/shared/data/routing/README.md).

Route to the strong model when ``score >= threshold`` and sweep the threshold from "never" to "always".
Prompts with equal scores move to the strong model together; across such a block quality is
interpolated linearly, which equals breaking the tie at random. Row order never matters.

The curve is piecewise linear through the points (share routed, quality) at the edges of the tie
blocks, so APGR (the mean of PGR over shares in [0, 1]) is its exact trapezoid integral.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "RoutingCurve",
    "RoutingReport",
    "apgr",
    "concordance",
    "routing_curve",
    "routing_report",
    "share_for_quality",
    "strong_share_at",
]


@dataclass(frozen=True, slots=True)
class RoutingCurve:
    """Quality against the share of prompts sent to the strong model, at the edges of tie blocks."""

    share: NDArray[np.float64]  # from 0 to 1, increasing
    quality: NDArray[np.float64]  # accuracy at that share
    threshold: NDArray[np.float64]  # the score threshold that routes that share (inf at share 0)
    acc_cheap: float
    acc_strong: float

    def quality_at(self, share: float) -> float:
        return float(np.interp(share, self.share, self.quality))

    def pgr(self) -> NDArray[np.float64]:
        gap = self.acc_strong - self.acc_cheap
        if gap == 0:
            return np.zeros_like(self.quality)
        return (self.quality - self.acc_cheap) / gap


def routing_curve(scores: ArrayLike, cheap_ok: ArrayLike, strong_ok: ArrayLike) -> RoutingCurve:
    """The quality curve of a score: highest scores go to the strong model first, ties together."""
    s = np.asarray(scores, dtype=np.float64)
    cheap = np.asarray(cheap_ok, dtype=np.float64)
    strong = np.asarray(strong_ok, dtype=np.float64)
    if not (s.shape == cheap.shape == strong.shape) or s.ndim != 1 or s.size == 0:
        raise ValueError("scores, cheap_ok and strong_ok must be non-empty 1-d arrays of equal length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    n = s.size
    # Sort by score, descending; the order inside a tie block is irrelevant because only block sums are used.
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    gain = (strong - cheap)[order]
    # Block ends: the last index of each run of equal scores.
    ends = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    cum_gain = np.cumsum(gain)[ends]
    acc_cheap = float(cheap.mean())
    share = np.r_[0.0, (ends + 1) / n]
    quality = acc_cheap + np.r_[0.0, cum_gain] / n
    threshold = np.r_[np.inf, s_sorted[ends]]
    return RoutingCurve(share, quality, threshold, acc_cheap, float(strong.mean()))


def apgr(scores: ArrayLike, cheap_ok: ArrayLike, strong_ok: ArrayLike) -> float:
    """Average performance-gap recovered over strong-call shares in [0, 1]; random routing scores 0.5."""
    curve = routing_curve(scores, cheap_ok, strong_ok)
    pgr = curve.pgr()
    return float(np.sum((pgr[1:] + pgr[:-1]) * np.diff(curve.share)) / 2)


def share_for_quality(curve: RoutingCurve, target_quality: float) -> float:
    """The smallest strong-call share at which the interpolated quality reaches ``target_quality``."""
    q, p = curve.quality, curve.share
    if q[0] >= target_quality:
        return 0.0
    above = np.flatnonzero(q >= target_quality)
    if above.size == 0:
        return 1.0 if q[-1] >= target_quality else float("nan")
    j = int(above[0])
    # Linear interpolation inside the segment (j-1, j) where the curve crosses the target.
    frac = (target_quality - q[j - 1]) / (q[j] - q[j - 1])
    return float(p[j - 1] + frac * (p[j] - p[j - 1]))


def strong_share_at(
    scores: ArrayLike, cheap_ok: ArrayLike, strong_ok: ArrayLike, fraction_of_strong: float = 0.95
) -> float:
    """The smallest share of strong calls whose quality reaches ``fraction_of_strong`` x strong accuracy."""
    curve = routing_curve(scores, cheap_ok, strong_ok)
    return share_for_quality(curve, fraction_of_strong * curve.acc_strong)


@dataclass(frozen=True, slots=True)
class RoutingReport:
    n: int
    acc_cheap: float
    acc_strong: float
    apgr: float
    strong_share_at_95: float


def routing_report(scores: ArrayLike, cheap_ok: ArrayLike, strong_ok: ArrayLike) -> RoutingReport:
    curve = routing_curve(scores, cheap_ok, strong_ok)
    pgr = curve.pgr()
    return RoutingReport(
        n=int(np.asarray(scores).size),
        acc_cheap=curve.acc_cheap,
        acc_strong=curve.acc_strong,
        apgr=float(np.sum((pgr[1:] + pgr[:-1]) * np.diff(curve.share)) / 2),
        strong_share_at_95=share_for_quality(curve, 0.95 * curve.acc_strong),
    )


def concordance(score: ArrayLike, label: ArrayLike) -> float:
    """Share of pairs with different labels that the score orders the same way (ties count half).

    0.5 is random, 1 is perfect; used for the hand-labelled app prompts, which have no model outcomes.
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    ds = np.sign(s[:, None] - s[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    pairs = dy != 0
    if not pairs.any():
        return float("nan")
    return float(((ds * dy)[pairs] + 1).sum() / 2 / pairs.sum())
