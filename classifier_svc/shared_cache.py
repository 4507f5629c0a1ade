"""The semantic cache's exact entries shared by classifier replicas through Redis (`CLASSIFIER_REDIS_URL`).

A verdict one replica computed (an LLM classifier's, usually: the ones worth sharing) is found by every
replica for the same conversation: the key is the cache's own digest of the system prompt and the
normalised dialogue, the value the verdict without its overhead, for the cache's TTL. The similarity
search stays in each replica's memory. Redis down: a miss, logged once; the replica keeps its own cache.
"""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from difficulty import Verdict

log = structlog.get_logger()

_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_FIELDS = ("score", "confidence", "category", "rationale", "source", "version", "family")


class SharedVerdicts:
    def __init__(self, url: str, prefix: str = "llmroute:", ttl_seconds: float = 3600.0) -> None:
        self._redis = aioredis.from_url(url, socket_timeout=0.3, socket_connect_timeout=0.3)
        self._prefix = prefix
        self._ttl_ms = int(ttl_seconds * 1000)
        self._available = True
        self._tasks: set[asyncio.Task[None]] = set()

    def _key(self, digest: bytes) -> str:
        return f"{self._prefix}verdict:{digest.hex()}"

    async def get(self, digest: bytes) -> Verdict | None:
        try:
            raw = await self._redis.get(self._key(digest))
        except _DOWN as error:
            self._down(error)
            return None
        self._available = True
        if raw is None:
            return None
        return Verdict(**json.loads(raw))

    def put(self, digest: bytes, verdict: Verdict) -> None:
        value = json.dumps({name: getattr(verdict, name) for name in _FIELDS})

        async def write() -> None:
            try:
                await self._redis.set(self._key(digest), value, px=self._ttl_ms)
            except _DOWN as error:
                self._down(error)

        task = asyncio.create_task(write())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _down(self, error: BaseException) -> None:
        if self._available:
            log.warning("shared_cache_unavailable", error=type(error).__name__)
        self._available = False

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()
