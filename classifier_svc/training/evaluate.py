"""Evaluates classification strategies and baselines on the held-out split: ``make eval-classifier``.

For every entry of ``SCORERS`` (strategies and baselines) it scores each held-out prompt in process,
then prints APGR and the strong-call share needed for 95% of the strong model's accuracy on MMLU
(held-out subjects) and GSM8K (held-out prompts), the concordance with the hand labels on the
held-out app prompts, and the per-call latency (p50/p99). It draws quality against strong-call share
to ``docs/img/classifier_eval.png``.

Adding a strategy: register a factory that returns a ``Scorer`` (any object with
``score(conversation) -> float``; ``StrategyScorer`` wraps anything implementing ``Strategy``)::

    from classifier_svc.training.evaluate import SCORERS, StrategyScorer
    SCORERS["llm"] = lambda: StrategyScorer(LlmStrategy(...))

or pass ``--with package.module:factory`` on the command line. Extra reports (semantic-cache hits and
false hits, cascade escalation rate...) go in ``REPORTS``: each gets the ``EvalSet`` and returns a
mapping that is printed under its name.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from classifier_svc import embeddings
from classifier_svc import features as hand
from classifier_svc.settings import DEFAULT_ARTIFACT_DIR
from classifier_svc.strategies.base import Conversation, Strategy
from classifier_svc.strategies.heuristic import HeuristicStrategy
from classifier_svc.strategies.learned import DifficultyModel, LearnedStrategy, encode_turns
from classifier_svc.training import data, metrics

__all__ = [
    "REPORTS",
    "SCORERS",
    "EvalSet",
    "Scorer",
    "StrategyScorer",
    "evaluate",
    "heldout_report",
]

DEFAULT_PLOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "classifier_eval.png"
DATASETS = ("mmlu", "gsm8k")


class Scorer(Protocol):
    """Anything that turns a conversation into a difficulty score (higher = send to the strong model)."""

    name: str

    def score(self, conversation: Conversation) -> float: ...


class StrategyScorer:
    """A ``Strategy`` (async ``classify``; ``classify_sync`` used when it has one) as a ``Scorer``."""

    def __init__(self, strategy: Strategy, name: str | None = None) -> None:
        self.strategy = strategy
        self.name = name or strategy.name
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(strategy.warm_up())
        self._sync = getattr(strategy, "classify_sync", None)

    def score(self, conversation: Conversation) -> float:
        if self._sync is not None:
            return float(self._sync(conversation).score)
        return float(self._loop.run_until_complete(self.strategy.classify(conversation)).score)


class _RandomScorer:
    """Uniform random scores from a fixed seed: the APGR = 0.5 reference."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def score(self, conversation: Conversation) -> float:
        return float(self._rng.random())


class _LengthScorer:
    """Characters in the user turns: longer prompts are harder."""

    name = "prompt length"

    def score(self, conversation: Conversation) -> float:
        return float(sum(len(m.content) for m in conversation.messages if m.role == "user"))


class _LiteLLMComplexityScorer:
    """LiteLLM's complexity_router, scored in process (no provider calls).

    ``heuristic``: the weighted keyword/shape score behind its tiers. ``heuristic_v2``: its trained
    tier-success predictor; the score is 1 - P(the SIMPLE tier succeeds).
    """

    def __init__(self, classifier_type: str) -> None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        from litellm.router_strategy.complexity_router.complexity_router import ComplexityRouter

        config = {"classifier_type": classifier_type} if classifier_type != "heuristic" else None
        self._router = ComplexityRouter("eval", ctx=None, complexity_router_config=config)
        self._type = classifier_type
        self.name = f"litellm complexity_router ({classifier_type})"

    def score(self, conversation: Conversation) -> float:
        prompt = conversation.last_user
        if self._type == "heuristic":
            _tier, score, _signals = self._router.classify(prompt, conversation.system or None)
            return float(score)
        forecast = self._router._classify_with_heuristic_v2(prompt).heuristic_v2_forecast
        assert forecast is not None
        return 1.0 - float(forecast["probabilities"]["SIMPLE"])


def _learned(artifact_dir: Path = DEFAULT_ARTIFACT_DIR) -> Scorer:
    return StrategyScorer(LearnedStrategy(artifact_dir))


# name -> factory. Order is the order of the printed table and of the plot legend.
SCORERS: dict[str, Callable[[], Scorer]] = {
    "random": _RandomScorer,
    "prompt length": _LengthScorer,
    "litellm complexity_router (heuristic)": lambda: _LiteLLMComplexityScorer("heuristic"),
    "litellm complexity_router (heuristic_v2)": lambda: _LiteLLMComplexityScorer("heuristic_v2"),
    "heuristic": lambda: StrategyScorer(HeuristicStrategy()),
    "learned": _learned,
}
BASELINES = frozenset(
    {
        "random",
        "prompt length",
        "litellm complexity_router (heuristic)",
        "litellm complexity_router (heuristic_v2)",
    }
)


@dataclass
class EvalSet:
    """The held-out conversations with their labels."""

    outcomes: list[data.Outcome]
    apps: list[data.AppPrompt]
    conversations: list[Conversation] = field(init=False)
    dataset: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.conversations = [Conversation.user(o.prompt) for o in self.outcomes] + [
            Conversation.of(*a.messages) for a in self.apps
        ]
        self.dataset = np.array([o.dataset for o in self.outcomes] + ["app"] * len(self.apps))

    @property
    def cheap(self) -> np.ndarray:
        return np.array([o.cheap_ok for o in self.outcomes], dtype=float)

    @property
    def strong(self) -> np.ndarray:
        return np.array([o.strong_ok for o in self.outcomes], dtype=float)

    @property
    def app_target(self) -> np.ndarray:
        return np.array([a.target for a in self.apps])


# name -> report(eval_set) -> mapping; e.g. the semantic cache's hit / false-hit counts.
REPORTS: dict[str, Callable[[EvalSet], Mapping[str, object]]] = {}


@dataclass
class Result:
    name: str
    scores: np.ndarray
    latency_us: np.ndarray
    by_dataset: dict[str, metrics.RoutingReport]
    app_concordance: float

    def row(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name}
        for d, r in self.by_dataset.items():
            out[f"{d}_apgr"] = round(r.apgr, 3)
            out[f"{d}_strong_share_at_95"] = round(r.strong_share_at_95, 3)
        out["app_concordance"] = round(self.app_concordance, 3)
        out["latency_p50_us"] = round(float(np.percentile(self.latency_us, 50)), 1)
        out["latency_p99_us"] = round(float(np.percentile(self.latency_us, 99)), 1)
        return out


def score_all(scorer: Scorer, eval_set: EvalSet, name: str | None = None) -> Result:
    scores = np.empty(len(eval_set.conversations))
    latency = np.empty(len(eval_set.conversations))
    for i, conversation in enumerate(eval_set.conversations):
        started = time.perf_counter_ns()
        scores[i] = scorer.score(conversation)
        latency[i] = (time.perf_counter_ns() - started) / 1000
    return _result(name or scorer.name, scores, latency, eval_set)


def _result(name: str, scores: np.ndarray, latency: np.ndarray, eval_set: EvalSet) -> Result:
    n = len(eval_set.outcomes)
    bench = scores[:n]
    by_dataset = {}
    for d in DATASETS:
        rows = eval_set.dataset[:n] == d
        if rows.any():
            by_dataset[d] = metrics.routing_report(bench[rows], eval_set.cheap[rows], eval_set.strong[rows])
    app = metrics.concordance(scores[n:], eval_set.app_target) if eval_set.apps else float("nan")
    return Result(name, scores, latency, by_dataset, app)


def heldout_report(
    model: DifficultyModel, outcomes: Sequence[data.Outcome], apps: Sequence[data.AppPrompt]
) -> dict[str, object]:
    """The held-out metrics of an artifact (batch scoring; the same numbers as the strategy's)."""
    eval_set = EvalSet(list(outcomes), list(apps))
    prompts = [o.prompt for o in outcomes]
    emb = [np.nan_to_num(embeddings.embed(prompts))]
    feats = [np.stack([hand.prompt_features(p) for p in prompts])]
    for app in apps:
        e, f = encode_turns(hand.user_turns(app.messages))
        emb.append(e[None, :])
        feats.append(f[None, :])
    scores = model.predict(np.concatenate(emb), np.concatenate(feats)).score
    result = _result("learned", scores, np.zeros(1), eval_set)
    row = result.row()
    row.pop("latency_p50_us")
    row.pop("latency_p99_us")
    row.pop("name")
    for d, r in result.by_dataset.items():
        row[f"{d}_acc_cheap"] = round(r.acc_cheap, 4)
        row[f"{d}_acc_strong"] = round(r.acc_strong, 4)
        row[f"{d}_n"] = r.n
    return row


def _subsample(eval_set: EvalSet, per_dataset: int | None, seed: int = 0) -> EvalSet:
    if per_dataset is None:
        return eval_set
    rng = np.random.default_rng(seed)
    keep: list[data.Outcome] = []
    for d in DATASETS:
        rows = [o for o in eval_set.outcomes if o.dataset == d]
        idx = np.sort(rng.choice(len(rows), size=min(per_dataset, len(rows)), replace=False))
        keep.extend(rows[i] for i in idx)
    return EvalSet(keep, eval_set.apps)


def plot(results: Sequence[Result], eval_set: EvalSet, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(eval_set.outcomes)
    fig, axes = plt.subplots(1, len(DATASETS), figsize=(12, 5))
    for ax, d in zip(axes, DATASETS, strict=True):
        rows = eval_set.dataset[:n] == d
        cheap, strong = eval_set.cheap[rows], eval_set.strong[rows]
        for result in results:
            curve = metrics.routing_curve(result.scores[:n][rows], cheap, strong)
            report = result.by_dataset[d]
            style = "--" if result.name in BASELINES else "-"
            ax.plot(curve.share, curve.quality, style, lw=2 if result.name == "learned" else 1.2,
                    label=f"{result.name} (APGR {report.apgr:.2f})")  # fmt: skip
        target = 0.95 * strong.mean()
        ax.axhline(target, color="grey", lw=0.8, ls=":")
        ax.text(0.01, target, " 95% of strong", va="bottom", fontsize=8, color="grey")
        ax.set_title(f"{d.upper()} held out (n={int(rows.sum())})")
        ax.set_xlabel("share of prompts sent to the strong model")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Routing quality vs strong-call share (make eval-classifier)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load_factory(spec: str) -> tuple[str, Callable[[], Scorer]]:
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return attr, factory


def evaluate(
    names: Sequence[str] | None = None,
    per_dataset: int | None = None,
    plot_path: Path | None = DEFAULT_PLOT,
    out: Callable[[str], None] = print,
) -> list[Result]:
    _train, test = data.split_outcomes(data.load_outcomes())
    _apps_train, apps_test = data.split_app_prompts(data.load_app_prompts())
    eval_set = _subsample(EvalSet(test, apps_test), per_dataset)
    counts = {d: int((eval_set.dataset == d).sum()) for d in (*DATASETS, "app")}
    out(f"held-out split (seed {data.SPLIT_SEED}): {counts}")
    results = []
    for name in names or list(SCORERS):
        results.append(score_all(SCORERS[name](), eval_set, name))
    _print_table(results, out)
    for name, report in REPORTS.items():
        out(f"\n{name}: {json.dumps(report(eval_set), default=str)}")
    if plot_path is not None:
        plot(results, eval_set, plot_path)
        out(f"\nplot: {plot_path}")
    return results


def _print_table(results: Sequence[Result], out: Callable[[str], None]) -> None:
    header = (
        "| strategy | MMLU APGR | MMLU strong share @95% | GSM8K APGR | GSM8K strong share @95% "
        "| app concordance | p50 µs | p99 µs |"
    )
    out(header)
    out("|" + "---|" * 8)
    for result in results:
        r = result.row()
        out(
            f"| {r['name']} | {r['mmlu_apgr']:.3f} | {r['mmlu_strong_share_at_95']:.1%} | {r['gsm8k_apgr']:.3f} "
            f"| {r['gsm8k_strong_share_at_95']:.1%} | {r['app_concordance']:.3f} | {r['latency_p50_us']:.0f} "
            f"| {r['latency_p99_us']:.0f} |"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="evaluate only these registered names")
    parser.add_argument("--with", dest="extra", action="append", default=[], metavar="MODULE:FACTORY",
                        help="also evaluate the Scorer returned by this factory")  # fmt: skip
    parser.add_argument("--per-dataset", type=int, default=None,
                        help="a seeded subsample of this many held-out prompts per dataset (for slow strategies)")  # fmt: skip
    parser.add_argument(
        "--artifact-dir", type=Path, default=DEFAULT_ARTIFACT_DIR, help="the learned model's artifact"
    )
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.artifact_dir != DEFAULT_ARTIFACT_DIR:
        SCORERS["learned"] = lambda: _learned(args.artifact_dir)
    for spec in args.extra:
        name, factory = _load_factory(spec)
        SCORERS[name] = factory
    names = args.only or list(SCORERS)
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        sys.exit(f"unknown strategies {unknown}; registered: {list(SCORERS)}")
    evaluate(names, args.per_dataset, None if args.no_plot else args.plot)


if __name__ == "__main__":
    main()
