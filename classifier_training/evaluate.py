"""Evaluates classification strategies and baselines on the held-out split: ``make eval-classifier``.

For every entry of ``SCORERS`` (strategies and baselines) it scores each held-out prompt in process,
then prints APGR and the strong-call share needed for 95% of the strong model's accuracy on MMLU
(held-out subjects) and GSM8K (held-out prompts), the concordance with the hand labels on the
held-out app prompts, and the per-call latency (p50/p99). It draws quality against strong-call share
to ``docs/img/classifier_eval.png``.

The strategies that call an LLM (``LLM_BACKED``: ``cascade`` and ``llm``) are scored on a seeded
subsample (``--llm-per-dataset``, 150 MMLU and 150 GSM8K prompts plus the app prompts), next to
``learned`` on the same prompts, with what their pipeline did: the cascade's escalation rate, LLM
answers and failures, and the LLM overhead per 1k prompts. They use the configured LLM
(``CLASSIFIER_LLM_BASE_URL``, or the model provider's key such as ``ANTHROPIC_API_KEY``); without
one, the bundled simulator, started in process with no simulated latency, and the rows say
"(simulator)". The simulator's score is a keyword heuristic: those rows measure the pipeline
(latency overhead, escalation, cost accounting), not an LLM's judgement.

Adding a strategy: register a factory that returns a ``Scorer`` (any object with
``score(conversation) -> float``; ``StrategyScorer`` wraps anything implementing ``Strategy``)::

    from classifier_training.evaluate import SCORERS, StrategyScorer
    SCORERS["mine"] = lambda: StrategyScorer(MyStrategy(...))

or pass ``--with package.module:factory`` on the command line. Extra reports go in ``REPORTS``: each
gets the ``EvalSet`` and returns rows (row name -> column -> value), printed as a table under its
name; the semantic cache's hit and false-hit rates are one.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from classifier_svc.factory import build_strategy
from classifier_svc.settings import ClassifierSettings
from classifier_training import cache_eval, data, metrics, tiers
from difficulty import (
    DEFAULT_ARTIFACT_DIR,
    Conversation,
    HeuristicStrategy,
    LearnedStrategy,
    Strategy,
    Verdict,
)
from difficulty import features as hand
from difficulty.learned import encode_prompts, encode_turns
from difficulty.model import DifficultyModel
from llmroute.common.v1 import common_pb2
from service_kit.logging import configure_logging
from service_kit.policy import DEFAULT_POLICY_PATH, Thresholds, load_policy

__all__ = [
    "LLM_BACKED",
    "REPORTS",
    "SCORERS",
    "EvalSet",
    "Scorer",
    "StrategyScorer",
    "evaluate",
    "heldout_report",
]

DEFAULT_PLOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "classifier_eval.png"
DATASETS = ("mmlu", "gsm8k", "multimodel")
DEFAULT_LLM_PER_DATASET = 150


class Scorer(Protocol):
    """Anything that turns a conversation into a difficulty score (higher = send to the strong model)."""

    name: str

    def score(self, conversation: Conversation) -> float: ...


class StrategyScorer:
    """A ``Strategy`` (async ``classify``; ``classify_sync`` used when it has one) as a ``Scorer``.

    Keeps every verdict, for what the pipeline did (sources, LLM overhead) next to the scores.
    """

    def __init__(
        self, strategy: Strategy, name: str | None = None, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """``loop``: the event loop ``classify`` runs on (one the strategy's servers already use)."""
        self.strategy = strategy
        self.name = name or strategy.name
        self.verdicts: list[Verdict] = []
        self._loop = loop or asyncio.new_event_loop()
        self._loop.run_until_complete(strategy.warm_up())
        self._sync = getattr(strategy, "classify_sync", None)

    def score(self, conversation: Conversation) -> float:
        if self._sync is not None:
            verdict = self._sync(conversation)
        else:
            verdict = self._loop.run_until_complete(self.strategy.classify(conversation))
        self.verdicts.append(verdict)
        return float(verdict.score)

    def close(self) -> None:
        self._loop.close()


class _LLMBackedScorer(StrategyScorer):
    """``build_strategy`` with ``strategy`` = cascade or llm, the cache off, over the configured LLM,
    else over the bundled simulator, started on this scorer's event loop (so it answers while
    ``classify`` awaits it)."""

    def __init__(self, strategy: str, artifact_dir: Path = DEFAULT_ARTIFACT_DIR) -> None:
        from classifier_svc.strategies.llm_model import llm_configured

        loop = asyncio.new_event_loop()
        settings = ClassifierSettings(strategy=strategy, cache_enabled=False, artifact_dir=artifact_dir)  # type: ignore[arg-type]
        self._simulator = None
        if llm_configured(settings):
            label = settings.llm_model + (f" at {settings.llm_base_url}" if settings.llm_base_url else "")
        else:
            from simulator import SimulatorSettings, start_simulator

            simulator = SimulatorSettings(host="127.0.0.1", port=0, latency_scale=0.0)
            self._simulator, port = loop.run_until_complete(start_simulator(simulator))
            settings = ClassifierSettings(
                strategy=strategy,  # type: ignore[arg-type]
                cache_enabled=False,
                artifact_dir=artifact_dir,
                llm_base_url=f"http://127.0.0.1:{port}/v1",
            )
            label = "simulator"
        self.simulated = self._simulator is not None
        super().__init__(
            build_strategy(settings, _policy_thresholds(settings)), f"{strategy} ({label})", loop=loop
        )

    def close(self) -> None:
        if self._simulator is not None:
            self._loop.run_until_complete(self._simulator.cleanup())
        super().close()


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
        from litellm.router_strategy.complexity_router.complexity_router import ComplexityRouter

        import service_kit.litellm_offline  # noqa: F401  (litellm, offline, before its submodules)

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


def _policy_thresholds(settings: ClassifierSettings) -> Callable[[], Thresholds]:
    """The thresholds of the settings' policy file, read once (the LLM classifier's verdicts are placed
    on them)."""
    fixed = load_policy(settings.policy_path).thresholds
    return lambda: fixed


def _learned(artifact_dir: Path = DEFAULT_ARTIFACT_DIR) -> Scorer:
    return StrategyScorer(LearnedStrategy(artifact_dir))


def _learned_cached(artifact_dir: Path = DEFAULT_ARTIFACT_DIR) -> Scorer:
    """The learned model behind the semantic cache, as configured: its latency includes the lookup."""
    settings = ClassifierSettings(strategy="local", cache_enabled=True, artifact_dir=artifact_dir)
    return StrategyScorer(build_strategy(settings, _policy_thresholds(settings)), "learned + cache")


# name -> factory. Order is the order of the printed tables and of the plot legend.
SCORERS: dict[str, Callable[[], Scorer]] = {
    "random": _RandomScorer,
    "prompt length": _LengthScorer,
    "litellm complexity_router (heuristic)": lambda: _LiteLLMComplexityScorer("heuristic"),
    "litellm complexity_router (heuristic_v2)": lambda: _LiteLLMComplexityScorer("heuristic_v2"),
    "heuristic": lambda: StrategyScorer(HeuristicStrategy()),
    "learned": _learned,
    "learned + cache": _learned_cached,
    "cascade": lambda: _LLMBackedScorer("cascade"),
    "llm": lambda: _LLMBackedScorer("llm"),
}
BASELINES = frozenset(
    {
        "random",
        "prompt length",
        "litellm complexity_router (heuristic)",
        "litellm complexity_router (heuristic_v2)",
    }
)
# Call an LLM (money, or the simulator's time): scored on the subsample, next to "learned".
LLM_BACKED = frozenset({"cascade", "llm"})
# Ranks as "learned" does (up to a few cache hits): a latency row, left out of the plot.
_NOT_PLOTTED = frozenset({"learned + cache"})


@dataclass
class EvalSet:
    """The held-out conversations with their labels."""

    outcomes: list[data.Outcome]
    apps: list[data.AppPrompt]
    deployed: list[data.DeploymentOutcome] = field(default_factory=list)
    # What the reports on routing at the thresholds read: the learned model's artifact and the policy.
    artifact_dir: Path = DEFAULT_ARTIFACT_DIR
    policy_path: Path = DEFAULT_POLICY_PATH
    conversations: list[Conversation] = field(init=False)
    dataset: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        # Outcome-labelled rows first (benchmarks, then deployment outcomes), then the app prompts.
        self.conversations = (
            [Conversation.user(o.prompt) for o in self.outcomes]
            + [Conversation.of(*r.messages) for r in self.deployed]
            + [Conversation.of(*a.messages) for a in self.apps]
        )
        self.dataset = np.array(
            [o.dataset for o in self.outcomes] + ["outcomes"] * len(self.deployed) + ["app"] * len(self.apps)
        )

    @property
    def labelled(self) -> int:
        """How many rows (the first ones) have model outcomes."""
        return len(self.outcomes) + len(self.deployed)

    @property
    def cheap(self) -> np.ndarray:
        return np.array(
            [o.cheap_ok for o in self.outcomes] + [r.cheap_ok for r in self.deployed], dtype=float
        )

    @property
    def strong(self) -> np.ndarray:
        # A deployment outcome assumes the strong tier's answer adequate.
        return np.array([o.strong_ok for o in self.outcomes] + [1.0] * len(self.deployed), dtype=float)

    @property
    def app_target(self) -> np.ndarray:
        return np.array([a.target for a in self.apps])


Rows = Mapping[str, Mapping[str, object]]


@functools.cache
def _learned_strategy(artifact_dir: Path) -> LearnedStrategy:
    return LearnedStrategy(artifact_dir)


def _learned_score(eval_set: EvalSet) -> Callable[[tiers.Messages], float]:
    strategy = _learned_strategy(eval_set.artifact_dir)
    return lambda messages: strategy.classify_sync(Conversation.of(*messages)).score


def _thresholds(eval_set: EvalSet) -> Thresholds:
    return load_policy(eval_set.policy_path).thresholds


def operating_points_report(eval_set: EvalSet) -> Rows:
    """Each held-out dataset routed by the learned model at the policy's thresholds."""
    score, thresholds = _learned_score(eval_set), _thresholds(eval_set)
    n = eval_set.labelled
    scores = np.array([score(tuple((m.role, m.content) for m in c.messages)) for c in eval_set.conversations])
    rows: dict[str, dict[str, object]] = {}
    for d in (*DATASETS, "outcomes"):
        mask = eval_set.dataset[:n] == d
        if mask.any():
            rows[f"{d} (held out)"] = dict(
                tiers.operating_point(
                    scores[:n][mask], eval_set.cheap[mask], eval_set.strong[mask], thresholds
                )
            )
    app = scores[n:]
    if app.size:
        rows["app prompts (held out, hand labels)"] = {
            "n": float(app.size),
            "strong share at thresholds": float((app >= thresholds.complex).mean()),
            "simple share": float((app < thresholds.moderate).mean()),
        }
    return rows


def multimodel_tasks_report(eval_set: EvalSet) -> Rows:
    """The multimodel held-out part by task, at the policy's thresholds."""
    score, thresholds = _learned_score(eval_set), _thresholds(eval_set)
    rows: dict[str, dict[str, object]] = {}
    held = [o for o in eval_set.outcomes if o.dataset == "multimodel"]
    for task in sorted({o.group for o in held}):
        items = [o for o in held if o.group == task]
        scores = np.array([score((("user", o.prompt),)) for o in items])
        cheap = np.array([o.cheap_ok for o in items], dtype=float)
        strong = np.array([o.strong_ok for o in items], dtype=float)
        point = tiers.operating_point(scores, cheap, strong, thresholds)
        rows[task] = {
            "n": point["n"],
            "cheap quality": float(cheap.mean()),
            "strong quality": float(strong.mean()),
            "strong share at thresholds": point["strong share at thresholds"],
            "quality vs strong at thresholds": point["quality vs strong at thresholds"],
        }
    return rows


def app_confusion_report(eval_set: EvalSet) -> Rows:
    """Every hand-labelled app prompt (both files, train and test parts): hand label -> routed tier."""
    score, thresholds = _learned_score(eval_set), _thresholds(eval_set)
    rows: dict[str, dict[str, object]] = {}
    for name, path in (
        ("app_prompts.jsonl", data.APP_PROMPTS_PATH),
        ("app_prompts_2.jsonl", data.APP_PROMPTS_2_PATH),
    ):
        prompts = data.load_app_prompts(path)
        routed = [tiers.tier_of(thresholds, score(p.messages)) for p in prompts]
        table = tiers.confusion([p.difficulty for p in prompts], routed)
        for label, row in tiers.confusion_rows(table).items():
            rows[f"{name}: {label}"] = row
    return rows


def demo_report(eval_set: EvalSet) -> Rows:
    """The tier of every prompt of the demo workload (devstack/demo_workload.yaml)."""
    score, thresholds = _learned_score(eval_set), _thresholds(eval_set)
    rows: dict[str, dict[str, object]] = {}
    for prompt in tiers.demo_prompts():
        value = score((("user", prompt),))
        rows[" ".join(prompt.split())[:70]] = {
            "score": f"{value:.3f}",
            "tier": tiers.tier_of(thresholds, value),
        }
    return rows


def invariance_report(eval_set: EvalSet, sample: int = 300) -> Rows:
    """Identifier styles appended, inserted and put in front (``tiers.IDENTIFIER_STYLES``): how many
    variants land on another tier than their prompt, over the app prompts, the demo workload and a
    seeded sample of each held-out dataset."""
    score, thresholds = _learned_score(eval_set), _thresholds(eval_set)
    rng = np.random.default_rng(0)
    sets: dict[str, list[tiers.Messages]] = {
        "app prompts (both files)": [
            p.messages
            for path in (data.APP_PROMPTS_PATH, data.APP_PROMPTS_2_PATH)
            for p in data.load_app_prompts(path)
        ],
        "demo workload": [(("user", p),) for p in tiers.demo_prompts()],
    }
    for d in DATASETS:
        held = [o for o in eval_set.outcomes if o.dataset == d]
        if held:
            pick = rng.choice(len(held), size=min(sample, len(held)), replace=False)
            sets[f"{d} (held out, {len(pick)} sampled)"] = [(("user", held[i].prompt),) for i in sorted(pick)]
    rows: dict[str, dict[str, object]] = {}
    for name, conversations in sets.items():
        result = tiers.invariance(score, conversations, thresholds)
        rows[name] = {
            "prompts": result.prompts,
            "variants": result.variants,
            "tier changes": result.tier_changes,
            "score changes": result.score_changes,
        }
    return rows


# name -> report(eval_set) -> rows (row name -> column -> value), printed as a table.
REPORTS: dict[str, Callable[[EvalSet], Rows]] = {
    "learned at the policy's thresholds (strong share = complex + reasoning; quality as a fraction of the "
    "strong model's)": operating_points_report,
    "learned at the policy's thresholds, multimodel held out by task": multimodel_tasks_report,
    "learned at the policy's thresholds, hand-labelled app prompts (all of them): label -> routed tier": (
        app_confusion_report
    ),
    "learned at the policy's thresholds, the demo workload (devstack/demo_workload.yaml)": demo_report,
    "identifier invariance at the policy's thresholds (classifier_training/tiers.py IDENTIFIER_STYLES, "
    "appended, inserted, first line)": invariance_report,
    # The cache compares prompts, not verdicts: these rates hold in front of any strategy.
    f"semantic cache, {cache_eval.PAIRS_PATH.name} (python -m classifier_training.cache_eval for the detail)": (
        lambda eval_set: cache_eval.rates()
    ),
}


@dataclass
class Result:
    name: str
    scores: np.ndarray
    latency_us: np.ndarray
    by_dataset: dict[str, metrics.RoutingReport]
    app_concordance: float
    # What the pipeline did (LLM escalation, answers, failures, overhead, cache hits), when it did any.
    pipeline: dict[str, object] = field(default_factory=dict)

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
    result = _result(name or scorer.name, scores, latency, eval_set)
    if isinstance(scorer, StrategyScorer):
        result.pipeline = pipeline_summary(scorer, latency)
    return result


def pipeline_summary(scorer: StrategyScorer, latency_us: np.ndarray) -> dict[str, object]:
    """What the strategy's pipeline did over the prompts it scored; empty when it only ran locally."""
    verdicts = scorer.verdicts
    n = len(verdicts)
    llm = np.array([v.source == common_pb2.CLASSIFIER_SOURCE_LLM for v in verdicts])
    cached = np.array([v.source == common_pb2.CLASSIFIER_SOURCE_CACHE for v in verdicts])
    # A local verdict that carries an LLM's overhead: the LLM was asked and failed.
    failed = sum(1 for v in verdicts if v.overhead.model and v.source != common_pb2.CLASSIFIER_SOURCE_LLM)
    escalated = None
    for layer in _layers(scorer.strategy):
        # A cascade's CascadeStats: how many prompts it sent to the LLM.
        escalated = getattr(getattr(layer, "stats", None), "escalated", None)
        if escalated is not None:
            break
    if not (llm.any() or cached.any() or failed or escalated is not None):
        return {}
    asked = escalated if escalated is not None else int(llm.sum()) + failed
    model = next((v.overhead.model for v in verdicts if v.overhead.model), "")
    out: dict[str, object] = {
        "prompts": n,
        "sent to the LLM (escalation rate)": asked / n,
        "LLM failed (local answer)": failed,
        "cache hits": float(cached.mean()),
        "p50 ms, not LLM-answered": _ms(latency_us[~llm], 50),
        "p50 ms, LLM-answered": _ms(latency_us[llm], 50),
        "p99 ms, LLM-answered": _ms(latency_us[llm], 99),
        "overhead tokens / prompt": sum(v.overhead.input_tokens + v.overhead.output_tokens for v in verdicts)
        / n,
        "LLM overhead $ / 1k prompts": sum(v.overhead.cost_usd for v in verdicts) / n * 1000,
        "overhead model": model,
    }
    if any("cost unknown" in v.rationale for v in verdicts):
        out["LLM overhead $ / 1k prompts"] = f"unknown: no price for {model}"
    return out


def _ms(latency_us: np.ndarray, percentile: float) -> float | str:
    return float(np.percentile(latency_us, percentile)) / 1000 if latency_us.size else "-"


def _layers(strategy: object) -> list[object]:
    """The strategy and those it wraps (the cache's ``inner``)."""
    layers = []
    while strategy is not None:
        layers.append(strategy)
        strategy = getattr(strategy, "inner", None)
    return layers


def _result(name: str, scores: np.ndarray, latency: np.ndarray, eval_set: EvalSet) -> Result:
    n = eval_set.labelled
    labelled = scores[:n]
    by_dataset = {}
    for d in (*DATASETS, "outcomes"):
        rows = eval_set.dataset[:n] == d
        if rows.any():
            by_dataset[d] = metrics.routing_report(
                labelled[rows], eval_set.cheap[rows], eval_set.strong[rows]
            )
    app = metrics.concordance(scores[n:], eval_set.app_target) if eval_set.apps else float("nan")
    return Result(name, scores, latency, by_dataset, app)


def heldout_report(
    model: DifficultyModel,
    outcomes: Sequence[data.Outcome],
    apps: Sequence[data.AppPrompt],
    deployed: Sequence[data.DeploymentOutcome] = (),
) -> dict[str, object]:
    """The held-out metrics of an artifact (batch scoring; the same numbers as the strategy's)."""
    eval_set = EvalSet(list(outcomes), list(apps), list(deployed))
    emb, feats = [], []
    if outcomes:
        prompt_emb, prompt_feats = encode_prompts([o.prompt for o in outcomes])
        emb.append(prompt_emb)
        feats.append(prompt_feats)
    for messages in [r.messages for r in deployed] + [a.messages for a in apps]:
        e, f = encode_turns(hand.user_turns(messages))
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


def _subsample(
    eval_set: EvalSet, per_dataset: int | None, seed: int = 0, datasets: Sequence[str] = DATASETS
) -> EvalSet:
    """A seeded sample of ``per_dataset`` prompts of each of ``datasets`` (the others are left out)."""
    if per_dataset is None:
        return eval_set
    rng = np.random.default_rng(seed)
    keep: list[data.Outcome] = []
    for d in datasets:
        rows = [o for o in eval_set.outcomes if o.dataset == d]
        idx = np.sort(rng.choice(len(rows), size=min(per_dataset, len(rows)), replace=False))
        keep.extend(rows[i] for i in idx)
    return EvalSet(keep, eval_set.apps, artifact_dir=eval_set.artifact_dir, policy_path=eval_set.policy_path)


@dataclass
class _Panel:
    """One row of the figure: results scored on one evaluation set."""

    title: str
    results: Sequence[Result]
    eval_set: EvalSet


def plot(panels: Sequence[_Panel], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(len(panels), len(DATASETS), figsize=(18, 5 * len(panels)), squeeze=False)
    names = dict.fromkeys(r.name for panel in panels for r in panel.results if r.name not in _NOT_PLOTTED)
    colour = {name: f"C{i % 10}" for i, name in enumerate(names)}
    for panel, axes in zip(panels, grid, strict=True):
        n = panel.eval_set.labelled
        for ax, d in zip(axes, DATASETS, strict=True):
            rows = panel.eval_set.dataset[:n] == d
            if not rows.any():
                ax.set_axis_off()  # a panel without this dataset (the LLM subsample has no multimodel rows)
                continue
            cheap, strong = panel.eval_set.cheap[rows], panel.eval_set.strong[rows]
            for result in panel.results:
                if result.name in _NOT_PLOTTED:
                    continue
                curve = metrics.routing_curve(result.scores[:n][rows], cheap, strong)
                report = result.by_dataset[d]
                style = "--" if result.name in BASELINES else ":" if "(simulator)" in result.name else "-"
                ax.plot(curve.share, curve.quality, style, color=colour[result.name],
                        lw=2 if result.name == "learned" else 1.2,
                        label=f"{result.name} (APGR {report.apgr:.2f})")  # fmt: skip
            target = 0.95 * strong.mean()
            ax.axhline(target, color="grey", lw=0.8, ls=":")
            ax.text(0.01, target, " 95% of strong", va="bottom", fontsize=8, color="grey")
            ax.set_title(f"{d.upper()} {panel.title} (n={int(rows.sum())})", fontsize=10)
            ax.set_xlabel("share of prompts sent to the strong model")
            ax.set_ylabel("quality (accuracy, or the task's score)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Routing quality vs strong-call share (make eval-classifier)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _load_factory(spec: str) -> tuple[str, Callable[[], Scorer]]:
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return attr, factory


def _score(names: Sequence[str], eval_set: EvalSet) -> list[Result]:
    results = []
    for name in names:
        scorer = SCORERS[name]()
        try:
            results.append(score_all(scorer, eval_set, getattr(scorer, "name", name)))
        finally:
            close = getattr(scorer, "close", None)
            if close is not None:
                close()
    return results


def _counts(eval_set: EvalSet) -> dict[str, int]:
    return {d: int((eval_set.dataset == d).sum()) for d in (*DATASETS, "app")}


def evaluate(
    names: Sequence[str] | None = None,
    per_dataset: int | None = None,
    plot_path: Path | None = DEFAULT_PLOT,
    out: Callable[[str], None] = print,
    llm_per_dataset: int = DEFAULT_LLM_PER_DATASET,
    artifact_dir: Path = DEFAULT_ARTIFACT_DIR,
    policy_path: Path = DEFAULT_POLICY_PATH,
) -> list[Result]:
    """Scores ``names`` (default: all of ``SCORERS``), prints the tables and reports, draws the plot.

    Those in ``LLM_BACKED`` are scored on a seeded subsample of ``llm_per_dataset`` prompts per
    dataset (with "learned" on the same prompts); the others on the whole held-out split, or on
    ``per_dataset`` prompts per dataset when it is given. The reports route with the artifact in
    ``artifact_dir`` and the thresholds of ``policy_path``.
    """
    outcomes = data.load_outcomes()
    _train, test = data.split_outcomes(outcomes)
    _mm_train, mm_test = data.split_multimodel(data.load_multimodel(), outcomes)
    _apps_train, apps_test = data.split_app_prompts(data.load_app_prompts())
    eval_set = _subsample(
        EvalSet([*test, *mm_test], apps_test, artifact_dir=artifact_dir, policy_path=policy_path), per_dataset
    )
    names = list(names or SCORERS)
    local = [n for n in names if n not in LLM_BACKED]
    with_llm = [n for n in names if n in LLM_BACKED]

    out(f"held-out split (seed {data.SPLIT_SEED}): {_counts(eval_set)}")
    results = _score(local, eval_set)
    _print_table(results, out)
    panels = [_Panel("held out", results, eval_set)]

    llm_results: list[Result] = []
    if with_llm:
        # MMLU and GSM8K only, as before the multimodel rows were added: every prompt is an LLM call.
        subset = _subsample(eval_set, llm_per_dataset, datasets=("mmlu", "gsm8k"))
        llm_results = _score(["learned", *with_llm], subset)
        out(
            f"\nstrategies that call an LLM, on a seeded subsample (seed 0) of the same split: {_counts(subset)}"
        )
        out("(learned on the same prompts, for reference)")
        _print_table(llm_results, out)
        if any("(simulator)" in r.name for r in llm_results):
            out(
                "(simulator): no LLM configured, so the bundled simulator answered in process, with no simulated "
                "latency. Its score is a keyword heuristic: these rows measure the pipeline (latency overhead, "
                "escalation, cost accounting), not an LLM's judgement. Set CLASSIFIER_LLM_BASE_URL or the "
                "provider's key (ANTHROPIC_API_KEY for the default model) to score a real one."
            )
        panels.append(_Panel("seeded subsample", llm_results, subset))

    pipelines = {r.name: r.pipeline for r in (*results, *llm_results) if r.pipeline}
    if pipelines:
        out("\nwhat the pipeline did:")
        _print_rows(pipelines, out, first_column="strategy")
    for name, report in REPORTS.items():
        out(f"\n{name}:")
        _print_rows(report(eval_set), out, first_column="configuration")
    if plot_path is not None:
        plot(panels, plot_path)
        out(f"\nplot: {plot_path}")
    return results + llm_results


def _print_table(results: Sequence[Result], out: Callable[[str], None]) -> None:
    out(
        "| strategy | MMLU APGR | MMLU strong share @95% | GSM8K APGR | GSM8K strong share @95% "
        "| multimodel APGR | multimodel strong share @95% | app concordance | p50 µs | p99 µs |"
    )
    out("|" + "---|" * 10)
    for result in results:
        r = result.row()
        cells = [str(r["name"])]
        for d in DATASETS:
            apgr, share = r.get(f"{d}_apgr"), r.get(f"{d}_strong_share_at_95")
            cells += [f"{apgr:.3f}" if isinstance(apgr, float) else "-"]
            cells += [f"{share:.1%}" if isinstance(share, float) else "-"]
        cells += [f"{r['app_concordance']:.3f}", f"{r['latency_p50_us']:.0f}", f"{r['latency_p99_us']:.0f}"]
        out("| " + " | ".join(cells) + " |")


def _format(column: str, value: object) -> str:
    if isinstance(value, float):
        if "$" in column:
            return f"{value:.4f}"
        if (
            column in ("sent to the LLM (escalation rate)", "cache hits")
            or "share" in column
            or "quality" in column
        ):
            return f"{value:.1%}"
        if column == "n":
            return f"{value:.0f}"
        return f"{value:.1f}"
    return str(value)


def _print_rows(
    rows: Mapping[str, Mapping[str, object]], out: Callable[[str], None], first_column: str = ""
) -> None:
    """Rows (name -> column -> value) as a Markdown table; a missing value is left blank."""
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    out(f"| {first_column} | " + " | ".join(columns) + " |")
    out("|" + "---|" * (len(columns) + 1))
    for name, row in rows.items():
        out(f"| {name} | " + " | ".join(_format(c, row[c]) if c in row else "" for c in columns) + " |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="evaluate only these registered names")
    parser.add_argument("--with", dest="extra", action="append", default=[], metavar="MODULE:FACTORY",
                        help="also evaluate the Scorer returned by this factory")  # fmt: skip
    parser.add_argument("--per-dataset", type=int, default=None,
                        help="a seeded subsample of this many held-out prompts per dataset")  # fmt: skip
    parser.add_argument("--llm-per-dataset", type=int, default=DEFAULT_LLM_PER_DATASET,
                        help=f"the seeded subsample for {sorted(LLM_BACKED)} (default %(default)s)")  # fmt: skip
    parser.add_argument(
        "--artifact-dir", type=Path, default=DEFAULT_ARTIFACT_DIR, help="the learned model's artifact"
    )
    parser.add_argument(
        "--policy", type=Path, default=DEFAULT_POLICY_PATH, help="the thresholds the reports route with"
    )
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    # The simulator logs every request and the LLM classifier every failed attempt: warnings only.
    configure_logging("classifier-eval", "WARNING", json=False)
    if args.artifact_dir != DEFAULT_ARTIFACT_DIR:
        SCORERS["learned"] = lambda: _learned(args.artifact_dir)
        SCORERS["learned + cache"] = lambda: _learned_cached(args.artifact_dir)
        SCORERS["cascade"] = lambda: _LLMBackedScorer("cascade", args.artifact_dir)
        SCORERS["llm"] = lambda: _LLMBackedScorer("llm", args.artifact_dir)
    for spec in args.extra:
        name, factory = _load_factory(spec)
        SCORERS[name] = factory
    names = args.only or list(SCORERS)
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        sys.exit(f"unknown strategies {unknown}; registered: {list(SCORERS)}")
    started = time.perf_counter()
    evaluate(
        names,
        args.per_dataset,
        None if args.no_plot else args.plot,
        llm_per_dataset=args.llm_per_dataset,
        artifact_dir=args.artifact_dir,
        policy_path=args.policy,
    )
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
