"""Sets the policy's tier thresholds from a target quality or strong-call share: ``make calibrate``.

Like RouteLLM's ``calibrate_threshold``: pick the score threshold that sends the wanted share of a
reference workload to the strong side. The learned score is P(cheap model fails where the strong one
succeeds), so the four tiers cut one scale:

- ``complex`` (the strong-call threshold): with ``--quality Q`` (the default, 0.95), the smallest
  share whose routed quality on the outcome-labelled part of the workload reaches Q x the strong
  model's (one threshold for all sources, as in production); with ``--strong-share S``, a share S of
  the workload scores at or above it;
- ``reasoning``: the top ``--reasoning-share`` of the workload (a part of the strong side);
- ``moderate``: the next ``--moderate-share`` below ``complex`` goes to the mid-price tier.

Quantiles of one score distribution are ordered by construction (moderate <= complex <= reasoning).

The workload is, by default, the out-of-fold scores that training stored with the artifact (prompts
the model did not see), mixed like application traffic rather than exams (``DEFAULT_MIX``): the
multimodel outcomes (open questions, code, math, constrained writing; real scores of two models) 0.5,
the hand-labelled app prompts 0.3 (no model outcomes: they shape the tier shares, not the quality),
MMLU 0.1 and GSM8K 0.1. ``--mix`` changes the weights (a source left out gets none; deployment
outcomes trained with ``train --outcomes`` are the source ``outcomes``); ``--prompts`` scores a JSONL
sample of your own traffic instead. Only the ``thresholds:`` block of the policy is rewritten, in
place, so its comments survive; the result is validated with the policy schema before the file is
replaced.

    make calibrate                                   # the shipped thresholds (quality 0.95, DEFAULT_MIX)
    make calibrate ARGS="--strong-share 0.35"
    make calibrate ARGS="--quality 0.95 --dry-run"
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier_training import tiers
from difficulty import DEFAULT_ARTIFACT_DIR
from difficulty.model import CALIBRATION_FILE
from service_kit import policy_file
from service_kit.policy import DEFAULT_POLICY_PATH, PolicyError, Thresholds

__all__ = [
    "DEFAULT_MIX",
    "DEFAULT_QUALITY",
    "Workload",
    "calibrate",
    "load_oof_workload",
    "rewrite_thresholds",
    "thresholds_for",
]

DEFAULT_MODERATE_SHARE = 0.25
DEFAULT_REASONING_SHARE = 0.10
DEFAULT_QUALITY = 0.95
# Application-like traffic: mostly open-ended and task prompts, exams with less weight.
DEFAULT_MIX = {"multimodel": 0.5, "app": 0.3, "mmlu": 0.1, "gsm8k": 0.1}


@dataclass(frozen=True)
class Workload:
    """Scores of a reference workload; labels where known (NaN otherwise); a weight per prompt."""

    score: np.ndarray
    weight: np.ndarray
    dataset: np.ndarray
    cheap: np.ndarray
    strong: np.ndarray


def load_oof_workload(artifact_dir: Path, mix: Mapping[str, float] | None = None) -> Workload:
    path = Path(artifact_dir) / CALIBRATION_FILE
    with np.load(path, allow_pickle=False) as npz:
        score, cheap, strong, dataset = (npz[k] for k in ("score", "cheap", "strong", "dataset"))
    names = sorted(set(dataset.tolist()))
    mix = dict(mix) if mix else dict(DEFAULT_MIX)
    unknown = set(mix) - set(names)
    if unknown:
        raise ValueError(f"unknown sources in --mix: {sorted(unknown)}; available: {names}")
    if not any(share > 0 for share in mix.values()):
        raise ValueError("--mix gives no source a positive weight")
    weight = np.zeros(len(score))
    for name, share in mix.items():
        rows = dataset == name
        weight[rows] = share / rows.sum()
    labelled = dataset != "app"
    return Workload(
        score=score.astype(np.float64),
        weight=weight / weight.sum(),
        dataset=dataset,
        cheap=np.where(labelled, cheap, np.nan),
        strong=np.where(labelled, strong, np.nan),
    )


def load_prompt_workload(path: Path, artifact_dir: Path) -> Workload:
    """A JSONL sample of traffic: {"prompt": ...} or {"messages": [{"role", "content"}...]},
    optionally with "cheap_ok"/"strong_ok" (needed for --quality)."""
    from difficulty import Conversation, LearnedStrategy

    strategy = LearnedStrategy(artifact_dir)
    scores, cheap, strong = [], [], []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "messages" in row:
            conversation = Conversation.of(*((m["role"], m["content"]) for m in row["messages"]))
        else:
            conversation = Conversation.user(row["prompt"])
        scores.append(strategy.classify_sync(conversation).score)
        cheap.append(float(row.get("cheap_ok", np.nan)))
        strong.append(float(row.get("strong_ok", np.nan)))
    n = len(scores)
    return Workload(
        np.array(scores), np.full(n, 1.0 / n), np.array(["prompts"] * n), np.array(cheap), np.array(strong)
    )


def _weighted_upper_quantile(score: np.ndarray, weight: np.ndarray, share: float) -> float:
    """The threshold t such that the weight of prompts with score >= t is as close as possible to ``share``
    without going under it (ties are routed together, so the share is met or exceeded)."""
    if share <= 0:
        return 1.0
    order = np.argsort(-score, kind="stable")
    s, w = score[order], weight[order]
    cumulative = np.cumsum(w) / w.sum()
    i = min(int(np.searchsorted(cumulative, share - 1e-12)), len(s) - 1)
    return float(s[i])


def share_for_quality(workload: Workload, quality: float) -> float:
    """The smallest share of the workload to send to the strong side so that the routed accuracy of the
    labelled prompts (weighted as in the workload) reaches ``quality`` x the strong model's accuracy.

    One threshold for every source, as in production; prompts with equal scores move together.
    """
    labelled = ~np.isnan(workload.cheap) & ~np.isnan(workload.strong)
    if not labelled.any():
        raise ValueError("--quality needs labelled prompts (cheap_ok / strong_ok)")
    score, weight = workload.score[labelled], workload.weight[labelled]
    cheap, strong = workload.cheap[labelled], workload.strong[labelled]
    target = quality * float(weight @ strong)
    order = np.argsort(-score, kind="stable")
    ends = np.flatnonzero(np.r_[score[order][1:] != score[order][:-1], True])
    routed = float(weight @ cheap) + np.r_[0.0, np.cumsum((weight * (strong - cheap))[order])[ends]]
    reached = np.flatnonzero(routed >= target - 1e-12)
    if reached.size == 0:
        return 1.0
    k = int(reached[0])
    if k == 0:
        return 0.0
    threshold = score[order][ends[k - 1]]
    return float(workload.weight[workload.score >= threshold].sum() / workload.weight.sum())


def thresholds_for(
    workload: Workload,
    strong_share: float,
    moderate_share: float = DEFAULT_MODERATE_SHARE,
    reasoning_share: float = DEFAULT_REASONING_SHARE,
) -> Thresholds:
    if not 0 <= strong_share <= 1:
        raise ValueError("the strong-call share must be in [0, 1]")
    reasoning_share = min(reasoning_share, strong_share)
    moderate_share = min(moderate_share, 1 - strong_share)
    complex_t = _weighted_upper_quantile(workload.score, workload.weight, strong_share)
    reasoning_t = max(_weighted_upper_quantile(workload.score, workload.weight, reasoning_share), complex_t)
    moderate_t = min(
        _weighted_upper_quantile(workload.score, workload.weight, strong_share + moderate_share), complex_t
    )
    # Thresholds keep 4 decimals in the YAML; round outward so each tier still gets its share.
    return Thresholds(
        moderate=float(np.floor(moderate_t * 1e4) / 1e4),
        complex=float(np.floor(complex_t * 1e4) / 1e4),
        reasoning=float(np.floor(reasoning_t * 1e4) / 1e4),
    )


def rewrite_thresholds(text: str, thresholds: Thresholds) -> str:
    """The policy text with only the values inside its ``thresholds:`` block replaced."""
    return policy_file.rewrite(text, thresholds)


def write_policy(path: Path, thresholds: Thresholds) -> str:
    """Rewrites the thresholds in place (atomically), after validating the whole new policy."""
    new_text = rewrite_thresholds(Path(path).read_text(), thresholds)
    policy_file.write(path, new_text)
    return new_text


def tier_shares(workload: Workload, thresholds: Thresholds) -> dict[str, float]:
    s, w = workload.score, workload.weight
    return {
        "simple": float(w[s < thresholds.moderate].sum()),
        "moderate": float(w[(s >= thresholds.moderate) & (s < thresholds.complex)].sum()),
        "complex": float(w[(s >= thresholds.complex) & (s < thresholds.reasoning)].sum()),
        "reasoning": float(w[s >= thresholds.reasoning].sum()),
    }


def calibrate(
    workload: Workload,
    strong_share: float | None = None,
    quality: float | None = None,
    moderate_share: float = DEFAULT_MODERATE_SHARE,
    reasoning_share: float = DEFAULT_REASONING_SHARE,
) -> tuple[Thresholds, dict[str, object]]:
    if (strong_share is None) == (quality is None):
        raise ValueError("give exactly one of strong_share and quality")
    if quality is not None:
        strong_share = share_for_quality(workload, quality)
    assert strong_share is not None
    thresholds = thresholds_for(workload, strong_share, moderate_share, reasoning_share)
    report: dict[str, object] = {
        "target": {"strong_share": strong_share}
        if quality is None
        else {"quality": quality, "strong_share": strong_share},
        "thresholds": thresholds.model_dump(),
        "tier_shares": tier_shares(workload, thresholds),
    }
    labelled = ~np.isnan(workload.cheap) & ~np.isnan(workload.strong)
    for name in sorted(set(workload.dataset[labelled].tolist())):
        rows = labelled & (workload.dataset == name)
        point = tiers.operating_point(
            workload.score[rows], workload.cheap[rows], workload.strong[rows], thresholds
        )
        report[f"{name}_quality_vs_strong"] = point["quality vs strong at thresholds"]
        report[f"{name}_strong_share"] = point["strong share at thresholds"]
    return thresholds, report


def _parse_mix(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    mix = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        mix[name.strip()] = float(value)
    return mix


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--strong-share", type=float, help="share of the workload for the strong tiers (complex+reasoning)"
    )
    target.add_argument(
        "--quality",
        type=float,
        help=f"routed quality as a fraction of the strong model's (default {DEFAULT_QUALITY})",
    )
    parser.add_argument("--moderate-share", type=float, default=DEFAULT_MODERATE_SHARE)
    parser.add_argument("--reasoning-share", type=float, default=DEFAULT_REASONING_SHARE)
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY_PATH)
    parser.add_argument("--artifact-dir", type=Path, default=DEFAULT_ARTIFACT_DIR)
    parser.add_argument(
        "--mix",
        help="source weights of the default workload (default "
        + ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items())
        + ")",
    )
    parser.add_argument("--prompts", type=Path, help="JSONL sample of traffic to calibrate on instead")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the thresholds, do not write the policy"
    )
    args = parser.parse_args(argv)
    if args.strong_share is None and args.quality is None:
        args.quality = DEFAULT_QUALITY
    try:
        workload = (
            load_prompt_workload(args.prompts, args.artifact_dir)
            if args.prompts
            else load_oof_workload(args.artifact_dir, _parse_mix(args.mix))
        )
        thresholds, report = calibrate(
            workload, args.strong_share, args.quality, args.moderate_share, args.reasoning_share
        )
        if not args.dry_run:
            write_policy(args.policy, thresholds)
            report["written_to"] = str(args.policy)
    except (OSError, ValueError, PolicyError) as error:
        sys.exit(f"calibrate: {error}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
