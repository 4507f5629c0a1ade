"""The semantic cache's exact entries shared by classifier replicas through Redis (127.0.0.1:6379)."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from classifier_svc.cache import CachedStrategy
from classifier_svc.shared_cache import SharedVerdicts
from difficulty import Conversation, Overhead, Verdict
from llmroute.common.v1 import common_pb2
from tests.waiting import eventually

REDIS = "redis://127.0.0.1:6379/0"


class Counting:
    """A strategy that counts what it is asked (the expensive LLM classifier, in production)."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    async def warm_up(self) -> None:
        return None

    async def classify(self, conversation: Conversation) -> Verdict:
        self.calls += 1
        return Verdict(
            score=0.42, confidence=0.9, category=common_pb2.CATEGORY_CODE, rationale="llm: moderate",
            source=common_pb2.CLASSIFIER_SOURCE_LLM, version="llm/test", family="open",
            overhead=Overhead(model="m", input_tokens=100, output_tokens=10, cost_usd=0.001),
        )  # fmt: skip


async def test_a_verdict_one_replica_computed_is_found_by_another() -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    replicas = [Counting(), Counting()]
    caches = [CachedStrategy(inner, shared=SharedVerdicts(REDIS, prefix)) for inner in replicas]
    conversation = Conversation.user("Refactor this function to use a generator instead of a list.")
    first = await caches[0].classify(conversation)
    client = aioredis.from_url(REDIS)

    async def written() -> bool:  # the write to Redis is in the background
        return bool([key async for key in client.scan_iter(f"{prefix}*")])

    await eventually(written, "the verdict written to Redis")
    second = await caches[1].classify(conversation)
    assert replicas[0].calls == 1 and replicas[1].calls == 0  # the second replica paid for nothing
    assert (
        first.source == common_pb2.CLASSIFIER_SOURCE_LLM
        and second.source == common_pb2.CLASSIFIER_SOURCE_CACHE
    )
    assert (second.score, second.category, second.family) == (0.42, common_pb2.CATEGORY_CODE, "open")
    assert second.overhead.cost_usd == 0 and "shared" in second.rationale
    assert (await caches[1].classify(conversation)).rationale.startswith("cache hit (exact)")  # now local too
    async for key in client.scan_iter(f"{prefix}*"):
        assert b"Refactor" not in key  # a digest, never the prompt
        await client.delete(key)
    await client.aclose()


async def test_a_redis_that_is_down_is_a_miss() -> None:
    inner = Counting()
    cache = CachedStrategy(inner, shared=SharedVerdicts("redis://127.0.0.1:1/0"))
    verdict = await cache.classify(Conversation.user("Translate to Italian: good evening"))
    assert inner.calls == 1 and verdict.source == common_pb2.CLASSIFIER_SOURCE_LLM
