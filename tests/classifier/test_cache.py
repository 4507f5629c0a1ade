"""The semantic cache: exact and similar hits, the meaning guard, TTL, LRU eviction, no cross-system-prompt reuse."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from classifier_svc.cache import CachedStrategy
from classifier_svc.cache_guard import compatible, signature
from classifier_svc.factory import build_strategy
from classifier_svc.settings import ClassifierSettings
from classifier_training.cache_eval import evaluate, load_pairs, summarize
from difficulty import Conversation, Overhead, Strategy, Verdict
from llmroute.common.v1 import common_pb2
from service_kit.policy import DEFAULT_POLICY_PATH, Thresholds, load_policy

POLICY_THRESHOLDS = load_policy(DEFAULT_POLICY_PATH).thresholds


def policy_thresholds() -> Thresholds:
    """The shipped policy's thresholds (the server passes its live policy's)."""
    return POLICY_THRESHOLDS


class Counting:
    """An inner strategy that numbers its verdicts (score = call number / 1000) and counts its calls."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0
        self.warmed = False

    async def warm_up(self) -> None:
        self.warmed = True

    async def classify(self, conversation: Conversation) -> Verdict:
        self.calls += 1
        return Verdict(
            score=self.calls / 1000,
            confidence=0.9,
            category=common_pb2.CATEGORY_CODE,
            rationale=f"call {self.calls}",
            source=common_pb2.CLASSIFIER_SOURCE_LLM,
            version="counting/1",
            overhead=Overhead(model="m", input_tokens=100, output_tokens=10, cost_usd=0.001),
        )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cached(inner: Strategy, **kwargs: object) -> CachedStrategy:
    return CachedStrategy(inner, **kwargs)  # type: ignore[arg-type]


SYSTEM_A = ("system", "You are a helpful assistant.")
SYSTEM_B = ("system", "You are a pirate. Answer only in pirate speak.")


async def test_the_cache_is_a_strategy_and_warms_its_inner_strategy() -> None:
    inner = Counting()
    strategy: Strategy = cached(inner)

    await strategy.warm_up()

    assert inner.warmed and strategy.name == "cached-counting"


async def test_an_exact_repeat_is_served_from_the_cache_with_no_overhead() -> None:
    inner = Counting()
    cache = cached(inner)

    first = await cache.classify(Conversation.user("How do I reverse a list in Python?"))
    # Case and whitespace are folded by the exact hash.
    second = await cache.classify(Conversation.user("  how do I   reverse a list in python?"))

    assert inner.calls == 1
    assert first.source == common_pb2.CLASSIFIER_SOURCE_LLM and first.overhead.input_tokens == 100
    assert second.source == common_pb2.CLASSIFIER_SOURCE_CACHE
    assert (
        second.score == first.score and second.category == first.category and second.version == "counting/1"
    )
    assert second.overhead == Overhead()
    assert second.rationale == "cache hit (exact): call 1"
    assert (cache.stats.hits, cache.stats.exact_hits, cache.stats.misses) == (1, 1, 1)


async def test_a_paraphrase_is_a_similar_hit() -> None:
    inner = Counting()
    cache = cached(inner)

    await cache.classify(Conversation.user("How do I reverse a list in Python?"))
    verdict = await cache.classify(Conversation.user("How can I reverse a Python list?"))

    assert inner.calls == 1
    assert verdict.source == common_pb2.CLASSIFIER_SOURCE_CACHE
    assert verdict.rationale.startswith("cache hit (similarity 0.9")
    assert (cache.stats.similar_hits, cache.stats.exact_hits) == (1, 0)


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        (
            "Use recursion to compute the factorial of n in Python.",
            "Do not use recursion to compute the factorial of n in Python.",
        ),
        ("List 3 uses of copper.", "List 30 uses of copper."),
        ("Explain recursion with an example.", "Explain recursion without an example."),
    ],
)
async def test_the_guard_refuses_near_duplicates_that_flip_meaning(stored: str, asked: str) -> None:
    unguarded, guarded = Counting(), Counting()
    without_guard = cached(unguarded, min_similarity=0.9, guard=False)
    with_guard = cached(guarded, min_similarity=0.9)

    for cache in (without_guard, with_guard):
        await cache.classify(Conversation.user(stored))
        await cache.classify(Conversation.user(asked))

    # The embeddings alone call these the same request...
    assert unguarded.calls == 1
    # ...the guard does not.
    assert guarded.calls == 2 and with_guard.stats.guard_rejections == 1


def test_signatures_compare_what_embeddings_blur() -> None:
    def same(a: str, b: str) -> bool:
        return compatible(signature(a), signature(b))

    assert same("Recommend three books about stoicism.", "Recommend 3 books about stoicism.")
    assert same("What is the capital of France?", "France's capital is what?")
    assert not same("What is the capital of France?", "What is the capital of Germany?")
    assert not same("Sort in ascending order: 3, 1, 2", "Sort in descending order: 3, 1, 2")
    assert not same("Summarize this article.", "Translate this article.")
    assert not same("Write a short poem about the moon.", "Escribe un poema corto sobre la luna.")
    assert not same("Solve 2x + 3 = 11", "Solve 2x^2 + 3x = 11")


async def test_a_different_system_prompt_never_reuses_an_entry() -> None:
    inner = Counting()
    cache = cached(inner)
    question = ("user", "How do I reverse a list in Python?")

    await cache.classify(Conversation.of(SYSTEM_A, question))
    other_system = await cache.classify(Conversation.of(SYSTEM_B, question))
    other_system_paraphrase = await cache.classify(
        Conversation.of(SYSTEM_B, ("user", "How can I reverse a Python list?"))
    )
    same_system = await cache.classify(Conversation.of(SYSTEM_A, question))

    assert other_system.source == common_pb2.CLASSIFIER_SOURCE_LLM
    assert other_system_paraphrase.source == common_pb2.CLASSIFIER_SOURCE_CACHE
    assert other_system_paraphrase.rationale.endswith("call 2")  # from SYSTEM_B's entry, not SYSTEM_A's
    assert same_system.source == common_pb2.CLASSIFIER_SOURCE_CACHE and same_system.rationale.endswith(
        "call 1"
    )
    assert inner.calls == 2


async def test_the_same_follow_up_after_different_turns_is_not_reused() -> None:
    inner = Counting()
    cache = cached(inner)

    await cache.classify(
        Conversation.of(
            ("user", "Write a poem about the sea."), ("assistant", "Waves..."), ("user", "Make it shorter.")
        )
    )
    proof = await cache.classify(
        Conversation.of(
            ("user", "Prove that sqrt(2) is irrational."),
            ("assistant", "Suppose..."),
            ("user", "Make it shorter."),
        )
    )
    alone = await cache.classify(Conversation.user("Make it shorter."))

    assert (
        proof.source != common_pb2.CLASSIFIER_SOURCE_CACHE
        and alone.source != common_pb2.CLASSIFIER_SOURCE_CACHE
    )
    assert inner.calls == 3 and cache.stats.context_rejections >= 1


async def test_entries_expire_after_the_ttl() -> None:
    inner, clock = Counting(), Clock()
    cache = cached(inner, ttl_seconds=60, clock=clock)
    conversation = Conversation.user("How do I reverse a list in Python?")

    await cache.classify(conversation)
    clock.now += 59
    assert (await cache.classify(conversation)).source == common_pb2.CLASSIFIER_SOURCE_CACHE
    clock.now += 2
    assert (await cache.classify(conversation)).source == common_pb2.CLASSIFIER_SOURCE_LLM
    assert (await cache.classify(Conversation.user("How can I reverse a Python list?"))).rationale.endswith(
        "call 2"
    )

    assert inner.calls == 2 and cache.stats.expirations == 1 and len(cache) == 1


async def test_the_least_recently_used_entry_is_evicted() -> None:
    inner = Counting()
    cache = cached(inner, max_entries=2)
    a, b, c = (
        Conversation.user(text) for text in ("Tell me a joke.", "What is 17 times 23?", "Name three rivers.")
    )

    await cache.classify(a)
    await cache.classify(b)
    await cache.classify(a)  # a is now more recent than b
    await cache.classify(c)  # evicts b

    assert len(cache) == 2 and cache.stats.evictions == 1
    assert (await cache.classify(a)).source == common_pb2.CLASSIFIER_SOURCE_CACHE
    assert (await cache.classify(b)).source == common_pb2.CLASSIFIER_SOURCE_LLM
    assert inner.calls == 4


async def test_skip_cache_asks_the_inner_strategy_and_refreshes_the_entry() -> None:
    inner = Counting()
    cache = cached(inner)
    conversation = Conversation.user("How do I reverse a list in Python?")

    await cache.classify(conversation)
    fresh = await cache.classify(conversation, skip_cache=True)
    again = await cache.classify(conversation)

    assert fresh.source == common_pb2.CLASSIFIER_SOURCE_LLM and fresh.rationale == "call 2"
    assert again.rationale == "cache hit (exact): call 2"
    assert len(cache) == 1 and cache.stats.bypassed == 1


async def test_verdicts_refused_by_should_store_are_not_cached() -> None:
    inner = Counting()
    cache = cached(inner, should_store=lambda verdict: False)
    conversation = Conversation.user("How do I reverse a list in Python?")

    await cache.classify(conversation)
    await cache.classify(conversation)

    assert inner.calls == 2 and len(cache) == 0


def _random_embed(texts: list[str]) -> np.ndarray:
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")
        vector = np.random.default_rng(seed).standard_normal(256).astype(np.float32)
        rows.append(vector / np.linalg.norm(vector))
    return np.stack(rows)


async def test_a_full_cache_serves_its_entries_and_evicts_one_per_new_request() -> None:
    # How fast a lookup among 10,000 entries is: `python -m benchmarks.classifier_bench`.
    inner = Counting()
    cache = cached(inner, max_entries=10_000, embed=_random_embed)
    for i in range(10_000):
        await cache.classify(Conversation.user(f"request {i}"), skip_cache=True)
    assert len(cache) == 10_000 and inner.calls == 10_000

    stored = await cache.classify(Conversation.user("request 9876"))
    assert inner.calls == 10_000 and stored.score == 9.877  # the 9,877th call's verdict, from the cache

    for i in range(30):
        await cache.classify(Conversation.user(f"a new request {i}"))  # miss: inner call, store, evict
    assert inner.calls == 10_030
    assert len(cache) == 10_000 and cache.stats.evictions == 30


async def test_the_measured_guard_beats_cosine_alone_on_the_pairs_set() -> None:
    pairs = load_pairs()
    assert len(pairs) >= 100 and {p.kind for p in pairs} >= {"paraphrase", "negation", "do_not", "number"}

    hit_rate_off, false_hit_off = summarize(await evaluate(pairs, min_similarity=0.93, guard=False))
    hit_rate_on, false_hit_on = summarize(await evaluate(pairs, min_similarity=0.93, guard=True))

    assert false_hit_on < 0.05 < 0.3 < false_hit_off
    assert hit_rate_on > 0.7 and hit_rate_off - hit_rate_on < 0.1


async def test_the_factory_puts_the_cache_in_front_when_enabled() -> None:
    on = build_strategy(ClassifierSettings(strategy="heuristic"), policy_thresholds)
    off = build_strategy(ClassifierSettings(strategy="heuristic", cache_enabled=False), policy_thresholds)

    assert isinstance(on, CachedStrategy) and on.inner.name == "heuristic"
    assert off.name == "heuristic"
    await on.warm_up()
    conversation = Conversation.user("Summarize the meeting notes in three bullets.")
    assert (await on.classify(conversation)).source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    assert (await on.classify(conversation)).source == common_pb2.CLASSIFIER_SOURCE_CACHE


def test_remembered_embeddings_are_keyed_by_digest_and_bounded() -> None:
    """A huge prompt costs the embedding memo its vector and a 32-byte digest, never its text."""
    from difficulty import embeddings

    embeddings.forget()
    huge = "word " * 80_000
    first = embeddings.embed([huge])
    assert embeddings.remembered() == 1
    assert all(isinstance(k, bytes) and len(k) == 32 for k in embeddings._vectors)
    assert (embeddings.embed([huge]) == first).all()  # remembered, the same vector
    for i in range(embeddings._REMEMBERED + 10):
        embeddings._vectors[i.to_bytes(32, "big")] = first[0]  # fill without embedding
    embeddings.embed(["one more"])
    assert embeddings.remembered() == embeddings._REMEMBERED
    embeddings.forget()
