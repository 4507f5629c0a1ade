"""Hit rate and false-hit rate of the semantic cache on hand-written near-duplicate pairs, with and without the guard.

Each pair in `classifier_training/data/cache_pairs.jsonl` is two conversations, `a` and `b`, labelled with
`expect_hit` (paraphrases: the cache should answer `b` from `a`), a `kind` saying what differs
(negation, "do not", numbers, entities, language, task, antonyms, earlier turns, system prompt) and a
`split`: "holdout" pairs were written after the guard's word lists were frozen.
For every pair a fresh cache stores `a`, then looks up `b`:

- hit rate: share of `expect_hit` pairs answered from the cache;
- false-hit rate: share of the other pairs answered from the cache (a wrong reuse).

Run: `python -m classifier_training.cache_eval` for the detail by threshold, split and kind;
`make eval-classifier` prints the summary at the configured threshold (`rates`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier_svc.cache import CachedStrategy
from classifier_svc.settings import ClassifierSettings
from difficulty import Conversation, Message, Verdict, embeddings
from llmroute.common.v1 import common_pb2

__all__ = ["PAIRS_PATH", "Pair", "PairResult", "evaluate", "load_pairs", "main", "rates", "summarize"]

PAIRS_PATH = Path(__file__).resolve().parent / "data" / "cache_pairs.jsonl"
THRESHOLDS = (0.90, 0.93, 0.95, 0.97, 0.99)


@dataclass(frozen=True, slots=True)
class Pair:
    id: str
    kind: str
    expect_hit: bool
    a: Conversation
    b: Conversation
    note: str
    # "dev": seen while the guard was built; "holdout": written after its word lists were frozen.
    split: str = "dev"


@dataclass(frozen=True, slots=True)
class PairResult:
    pair: Pair
    hit: bool


def _conversation(value: str | list[list[str]]) -> Conversation:
    if isinstance(value, str):
        return Conversation.user(value)
    return Conversation(tuple(Message(role, content) for role, content in value))


def load_pairs(path: Path = PAIRS_PATH) -> list[Pair]:
    pairs = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                pairs.append(
                    Pair(
                        row["id"],
                        row["kind"],
                        bool(row["expect_hit"]),
                        _conversation(row["a"]),
                        _conversation(row["b"]),
                        row.get("note", ""),
                        row.get("split", "dev"),
                    )
                )
    return pairs


class _Fixed:
    """The strategy behind the cache: always the same verdict (only hit or miss is measured)."""

    name = "fixed"

    async def warm_up(self) -> None:
        return None

    async def classify(self, conversation: Conversation) -> Verdict:
        return Verdict(score=0.5, confidence=1.0)


def _memoised_embed() -> tuple[dict[str, np.ndarray], Callable[[list[str]], np.ndarray]]:
    memo: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in memo]
        if missing:
            for text, vector in zip(missing, embeddings.embed(missing), strict=True):
                memo[text] = vector
        return np.stack([memo[t] for t in texts])

    return memo, embed


async def evaluate(
    pairs: Sequence[Pair],
    *,
    min_similarity: float,
    guard: bool,
    embed: Callable[[list[str]], np.ndarray] | None = None,
) -> list[PairResult]:
    """Store `a`, look up `b`, in a fresh cache per pair."""
    results = []
    for pair in pairs:
        cache = CachedStrategy(
            _Fixed(), min_similarity=min_similarity, guard=guard, embed=embed or embeddings.embed
        )
        await cache.classify(pair.a)
        verdict = await cache.classify(pair.b)
        results.append(PairResult(pair, verdict.source == common_pb2.CLASSIFIER_SOURCE_CACHE))
    return results


def summarize(results: Sequence[PairResult]) -> tuple[float, float]:
    """(hit rate on expect_hit pairs, false-hit rate on the others)."""
    should = [r.hit for r in results if r.pair.expect_hit]
    must_not = [r.hit for r in results if not r.pair.expect_hit]
    return (sum(should) / max(len(should), 1), sum(must_not) / max(len(must_not), 1))


async def _run(path: Path, default_threshold: float) -> None:
    pairs = load_pairs(path)
    _, embed = _memoised_embed()
    should, must_not = sum(p.expect_hit for p in pairs), sum(not p.expect_hit for p in pairs)
    print(f"pairs: {len(pairs)} ({should} should hit, {must_not} must not) from {path.name}")
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print()
    print("threshold  guard  hit rate  false-hit rate")
    by_config: dict[tuple[float, bool], list[PairResult]] = {}
    for threshold in sorted({*THRESHOLDS, default_threshold}):
        for guard in (False, True):
            results = await evaluate(pairs, min_similarity=threshold, guard=guard, embed=embed)
            by_config[threshold, guard] = results
            hit_rate, false_hit_rate = summarize(results)
            marker = "  <- configured" if threshold == default_threshold else ""
            print(
                f"{threshold:9.2f}  {'on ' if guard else 'off'}  {hit_rate:8.1%}  {false_hit_rate:14.1%}{marker}"
            )
    print()
    print(f"by split at threshold {default_threshold:.2f}, guard on:")
    for split in sorted({p.split for p in pairs}):
        results = [r for r in by_config[default_threshold, True] if r.pair.split == split]
        hit_rate, false_hit_rate = summarize(results)
        print(
            f"  {split:<8} {len(results):3d} pairs  hit rate {hit_rate:6.1%}  false-hit rate {false_hit_rate:6.1%}"
        )
    print()
    print(f"by kind at threshold {default_threshold:.2f} (hits / pairs), guard off -> on:")
    groups = sorted({(p.kind, p.expect_hit) for p in pairs}, key=lambda group: (not group[1], group[0]))
    for kind, expect_hit in groups:
        off = [
            r
            for r in by_config[default_threshold, False]
            if (r.pair.kind, r.pair.expect_hit) == (kind, expect_hit)
        ]
        on = [
            r
            for r in by_config[default_threshold, True]
            if (r.pair.kind, r.pair.expect_hit) == (kind, expect_hit)
        ]
        label = "should hit" if expect_hit else "must not"
        print(
            f"  {kind:<11} {label:<10} {sum(r.hit for r in off):3d} -> {sum(r.hit for r in on):3d} / {len(on)}"
        )
    on = by_config[default_threshold, True]
    false_hits = [r.pair.id for r in on if r.hit and not r.pair.expect_hit]
    missed = [r.pair.id for r in on if not r.hit and r.pair.expect_hit]
    print()
    print(f"false hits with the guard: {', '.join(false_hits) or 'none'}")
    print(f"missed paraphrases with the guard: {', '.join(missed) or 'none'}")


def rates(path: Path = PAIRS_PATH, threshold: float | None = None) -> dict[str, dict[str, str]]:
    """Hit and false-hit rates at one threshold (default: the settings'), guard off and on, and on the
    holdout pairs alone: the rows `make eval-classifier` prints. Starts its own event loop."""
    if threshold is None:
        threshold = ClassifierSettings.model_fields["cache_min_similarity"].default
    pairs = load_pairs(path)
    _, embed = _memoised_embed()

    async def run() -> dict[str, list[PairResult]]:
        return {
            f"guard {'on' if guard else 'off'}": await evaluate(
                pairs, min_similarity=threshold, guard=guard, embed=embed
            )
            for guard in (False, True)
        }

    by_guard = asyncio.run(run())
    by_guard["guard on, holdout pairs only"] = [r for r in by_guard["guard on"] if r.pair.split == "holdout"]
    rows = {}
    for label, results in by_guard.items():
        hit_rate, false_hit_rate = summarize(results)
        rows[f"threshold {threshold:.2f}, {label}"] = {
            "pairs (should hit / must not)": f"{len(results)} ({sum(r.pair.expect_hit for r in results)}"
            f" / {sum(not r.pair.expect_hit for r in results)})",
            "hit rate": f"{hit_rate:.1%}",
            "false-hit rate": f"{false_hit_rate:.1%}",
        }
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS_PATH)
    parser.add_argument(
        "--threshold",
        type=float,
        default=ClassifierSettings.model_fields["cache_min_similarity"].default,
        help="the threshold to detail (default: the settings' default)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    asyncio.run(_run(args.pairs, args.threshold))
    print(f"\n({time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()
