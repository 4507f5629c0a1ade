"""Classifier latency in process: the learned model, the heuristic, and the cache in front of them.

Target (issue): local classification <= 1 ms p50 in process. Run: `python -m benchmarks.classifier_bench`.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import yaml

from classifier_svc.cache import CachedStrategy
from devstack.demo import WORKLOAD
from difficulty import DEFAULT_ARTIFACT_DIR, Conversation, HeuristicStrategy, LearnedStrategy, embeddings


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.99) - 1)]


async def main() -> None:
    prompts = [item["prompt"] for item in yaml.safe_load(WORKLOAD.read_text())]
    # Distinct conversations: each demo prompt with a different closing word, so nothing repeats (an
    # identifier such as a ticket number would be stripped before scoring, leaving repeats).
    words = ("please", "thanks", "quickly", "today", "carefully", "briefly", "now", "again", "kindly", "soon")
    conversations = [
        Conversation.user(f"{p} {words[n % 10]}{' indeed' if n >= 10 else ''}")
        for n in range(20)
        for p in prompts
    ]
    learned = LearnedStrategy(DEFAULT_ARTIFACT_DIR)
    await learned.warm_up()
    rows = []
    for name, strategy in (("learned", learned), ("heuristic", HeuristicStrategy())):
        for conversation in conversations[:20]:
            await strategy.classify(conversation)
        embeddings.forget()  # each row embeds its prompts afresh, as new traffic would
        latencies = []
        for conversation in conversations:
            started = time.perf_counter()
            await strategy.classify(conversation)
            latencies.append((time.perf_counter() - started) * 1e6)
        rows.append((name, *_percentiles(latencies)))
    cached = CachedStrategy(learned)
    await cached.warm_up()
    embeddings.forget()
    misses, hits = [], []
    for conversation in conversations:
        started = time.perf_counter()
        await cached.classify(conversation)
        misses.append((time.perf_counter() - started) * 1e6)
    for conversation in conversations:
        started = time.perf_counter()
        await cached.classify(conversation)
        hits.append((time.perf_counter() - started) * 1e6)
    rows.append(("learned behind the cache, miss", *_percentiles(misses)))
    rows.append(("learned behind the cache, exact hit", *_percentiles(hits)))
    rows.append(
        ("heuristic behind a 10k-entry cache, new", *_percentiles(await _full_cache_lookups(prompts)))
    )
    print(
        f"\nClassifier latency in process ({len(conversations)} distinct prompts; target: local <= 1000 us p50)"
    )
    print(f"{'strategy':<38} {'p50 us':>8} {'p99 us':>8}")
    for name, p50, p99 in rows:
        print(f"{name:<38} {p50:>8.0f} {p99:>8.0f}")


async def _full_cache_lookups(prompts: list[str], entries: int = 10_000) -> list[float]:
    """Microseconds per new prompt through a cache holding `entries` prompts (the default size):
    embed, scan every entry, then either a similar hit (about 40% of these) or the inner strategy,
    a store and an eviction."""
    cache = CachedStrategy(HeuristicStrategy(), max_entries=entries)
    for n in range(entries):
        await cache.classify(Conversation.user(f"{prompts[n % len(prompts)]} (order {n})"), skip_cache=True)
    embeddings.forget()
    latencies = []
    for n in range(300):
        started = time.perf_counter()
        await cache.classify(Conversation.user(f"{prompts[n % len(prompts)]} (case {n})"))
        latencies.append((time.perf_counter() - started) * 1e6)
    return latencies


if __name__ == "__main__":
    asyncio.run(main())
