"""State router replicas share through Redis (`ROUTER_REDIS_URL`), optional: bound idempotency keys with
their runs (in flight and finished), and circuit breakers.

Without Redis each replica keeps both in memory, as a single router always has. With it:
- **Idempotency**: a key is claimed in Redis by the run that answers it. A retry on any replica is
  refused if its request differs, waits while the run is in flight (its owner renews a lease every
  few seconds; a crashed owner's lease lapses and a waiter takes the run over), and gets the finished
  answer replayed. A run that failed is run again by the next retry.
- **Cooldowns**: a model one replica puts in cooldown is in cooldown on every replica within half a
  second, until its expiry or a successful probe anywhere.

Redis down: each call that needs it falls back to the replica's own memory (a request already
claimed in Redis is finished there when it can be), the router keeps serving, logs
`shared_state_unavailable`, reports it in the responses' warnings (`shared_state_unavailable`), in
health (the component `llmroute.shared_state` goes NOT_SERVING; the router itself stays SERVING) and in
metrics (`llmroute_router_shared_state_up` 0, `llmroute_router_shared_state_errors_total`), and uses
Redis again as soon as a call succeeds.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Hashable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog
from prometheus_client import Counter, Gauge
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from llmroute.router.v1 import router_pb2
from router_svc.cooldown import Cooldowns
from router_svc.idempotency import IdempotencyCache, IdempotencyKeyReused, replayed

log = structlog.get_logger()

_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
LEASE_SECONDS = 15.0
RENEW_SECONDS = 5.0
SYNC_SECONDS = 0.5
HEALTH_COMPONENT = "llmroute.shared_state"

SHARED_STATE_UP = Gauge(
    "llmroute_router_shared_state_up", "1 while Redis answers; 0 while the router runs on local state."
)
SHARED_STATE_ERRORS = Counter(
    "llmroute_router_shared_state_errors", "Redis calls that failed, each answered from local state."
)

# Claim a key for a run: "own" (run it), "reused" (another request), "done" + response, or "wait".
_CLAIM = """
local e = redis.call('HMGET', KEYS[1], 'fp', 'state', 'lease', 'response')
local now, lease, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if not e[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'running', 'owner', ARGV[2], 'lease', now + lease)
  redis.call('PEXPIRE', KEYS[1], math.max(ttl, lease))
  return {'own'}
end
if e[1] ~= ARGV[1] then return {'reused'} end
if e[2] == 'done' then return {'done', e[4]} end
if e[2] == 'failed' or tonumber(e[3]) < now then
  redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[2], 'lease', now + lease)
  redis.call('PEXPIRE', KEYS[1], math.max(ttl, lease))
  return {'own'}
end
return {'wait'}
"""
# End the owner's run: state "done" with the response, or "failed"; only the owner may.
_END = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if ARGV[2] == 'done' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'response', ARGV[3])
else
  redis.call('HSET', KEYS[1], 'state', 'failed')
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""
_RENEW = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'lease', tonumber(ARGV[2]))
return 1
"""


def idempotency_key(prefix: str, key: Hashable) -> str:
    """The Redis key of an idempotency key (caller, request_id): a digest, never the ids themselves."""
    return f"{prefix}idem:{hashlib.sha256(repr(key).encode()).hexdigest()[:32]}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class SharedState:
    """The Redis connection, and whether it works now."""

    def __init__(self, url: str, prefix: str = "llmroute:") -> None:
        # One retry on a fresh connection for a connection error: after Redis restarts, every pooled
        # connection is dead, and without it each would fail one call (and that call go local).
        self.redis: aioredis.Redis = aioredis.from_url(
            url,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[redis.exceptions.ConnectionError],
        )
        self.prefix = prefix
        self.available = True
        self.last_error = ""
        SHARED_STATE_UP.set(1)  # until a call says otherwise

    def down(self, error: BaseException) -> None:
        SHARED_STATE_ERRORS.inc()
        if self.available:
            log.error("shared_state_unavailable", error=type(error).__name__)
            SHARED_STATE_UP.set(0)
        self.available = False
        self.last_error = type(error).__name__

    def up(self) -> None:
        if not self.available:
            log.info("shared_state_available")
        SHARED_STATE_UP.set(1)
        self.available = True
        self.last_error = ""

    def health(self) -> dict[str, str]:
        return {"shared_state": "redis" if self.available else f"local ({self.last_error})"}

    async def close(self) -> None:
        await self.redis.aclose()


class SharedIdempotency:
    """IdempotencyCache's interface over Redis, falling back to a local one while Redis is down."""

    def __init__(
        self, shared: SharedState, local: IdempotencyCache, ttl_seconds: float, poll: float = 0.05
    ) -> None:
        self._shared = shared
        self._local = local
        self._ttl_ms = int(ttl_seconds * 1000)
        self._poll = poll
        self._replica = uuid.uuid4().hex
        self._claim = shared.redis.register_script(_CLAIM)
        self._end = shared.redis.register_script(_END)
        self._renew = shared.redis.register_script(_RENEW)
        self._owned: dict[Hashable, str] = {}  # key -> Redis key of runs this replica owns there
        self._next_probe = 0.0
        self._renewer: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._local.enabled

    def _redis_key(self, key: Hashable) -> str:
        return idempotency_key(self._shared.prefix, key)

    async def claim(self, key: Hashable, digest: bytes) -> router_pb2.RouteResponse | None:
        if not self.enabled:
            return None
        if not self._shared.available and not await self._probe():
            return await self._local.claim(key, digest)
        rkey = self._redis_key(key)
        delay = self._poll
        while True:
            try:
                result = await self._claim(
                    keys=[rkey],
                    args=[digest.hex(), self._replica, _now_ms(), int(LEASE_SECONDS * 1000), self._ttl_ms],
                )
            except _DOWN as error:
                self._shared.down(error)
                return await self._local.claim(key, digest)
            self._shared.up()
            verdict = result[0].decode() if isinstance(result[0], bytes) else result[0]
            if verdict == "own":
                self._owned[key] = rkey
                self._start_renewing()
                return None
            if verdict == "reused":
                raise IdempotencyKeyReused(
                    "this request_id was already used by this caller for a different request "
                    "(messages or options differ); use a new request_id for a new request",
                    metadata={"request_id": str(key[1]) if isinstance(key, tuple) else str(key)},
                )
            if verdict == "done":
                return replayed(router_pb2.RouteResponse.FromString(result[1]))
            await asyncio.sleep(delay)  # in flight on some replica: wait for it (or its lease to lapse)
            delay = min(0.25, delay * 1.5)

    def finish(self, key: Hashable, response: router_pb2.RouteResponse) -> None:
        rkey = self._owned.pop(key, None)
        if rkey is None:
            self._local.finish(key, response)
            return
        self._spawn(
            self._end(keys=[rkey], args=[self._replica, "done", response.SerializeToString(), self._ttl_ms])
        )

    def fail(self, key: Hashable, error: BaseException) -> None:
        rkey = self._owned.pop(key, None)
        if rkey is None:
            self._local.fail(key, error)
            return
        self._spawn(self._end(keys=[rkey], args=[self._replica, "failed", b"", self._ttl_ms]))

    async def _probe(self) -> bool:
        """While Redis is down, try it again at most once a second (a request never waits for more than
        one connection attempt, and most for none)."""
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + 1.0
        try:
            await self._shared.redis.ping()
        except _DOWN:
            return False
        self._shared.up()
        return True

    def _spawn(self, call: Any) -> None:
        async def run() -> None:
            try:
                await call
            except _DOWN as error:  # the lease lapses and a retry runs again: nothing is lost
                self._shared.down(error)

        task = asyncio.ensure_future(run())
        _background.add(task)
        task.add_done_callback(_background.discard)

    def _start_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        """Keep this replica's runs in flight claimed: a lease lapses only if the replica is gone."""
        while self._owned:
            await asyncio.sleep(RENEW_SECONDS)
            until = _now_ms() + int(LEASE_SECONDS * 1000)
            for rkey in list(self._owned.values()):
                try:
                    await self._renew(keys=[rkey], args=[self._replica, until])
                except _DOWN as error:
                    self._shared.down(error)
                    break

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        await asyncio.gather(*_background, return_exceptions=True)


_background: set[asyncio.Future[None]] = set()


class SharedCooldowns:
    """Publishes the cooldowns this replica opens and applies the ones others opened."""

    def __init__(
        self, shared: SharedState, cooldowns: Cooldowns, clock: Callable[[], float] = time.time
    ) -> None:
        self._shared = shared
        self._cooldowns = cooldowns
        self._clock = clock
        self._key = f"{shared.prefix}cooldowns"
        self._learned: set[str] = set()  # models in cooldown because another replica said so
        cooldowns.listen(self._opened, self._closed)

    def _opened(self, model: str, seconds: float) -> None:
        self._learned.discard(model)
        until = self._clock() + seconds
        self._spawn(self._shared.redis.hset(self._key, model, f"{until:.3f}"))

    def _closed(self, model: str) -> None:
        self._learned.discard(model)
        self._spawn(self._shared.redis.hdel(self._key, model))

    def _spawn(self, call: Any) -> None:
        async def run() -> None:
            try:
                await call
            except _DOWN as error:
                self._shared.down(error)

        task = asyncio.ensure_future(run())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def sync(self) -> None:
        """Apply the cooldowns opened elsewhere; lift those another replica's probe closed."""
        try:
            remote = await self._shared.redis.hgetall(self._key)
        except _DOWN as error:
            self._shared.down(error)
            return
        self._shared.up()
        now = self._clock()
        open_now = set()
        for raw_model, raw_until in remote.items():
            model = raw_model.decode() if isinstance(raw_model, bytes) else str(raw_model)
            until = float(raw_until)
            if until > now:
                open_now.add(model)
                if self._cooldowns.open_elsewhere(model, until - now):
                    self._learned.add(model)
        for model in list(self._learned - open_now):  # closed elsewhere (or expired)
            self._learned.discard(model)
            self._cooldowns.close_elsewhere(model)

    async def run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(SYNC_SECONDS)
