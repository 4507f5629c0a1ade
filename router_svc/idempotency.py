"""Route and RouteStream are idempotent by (caller, request_id), and a key is bound to its request.

The contract (also in router.proto and the README):
- the key is the caller's `request_id`; the `x-request-id` metadata is a tracing id and never a key;
- a key is bound to the request it first came with (a digest of its messages and options) for
  `ttl` seconds after its last run ends: the same key with a different request is refused with
  ALREADY_EXISTS, never answered with another request's answer;
- the same key and request while a run is in flight waits for that run; once a run has answered,
  its response is replayed (`replayed` set) with no provider call;
- a run that failed is not remembered: the next retry runs again, as a new run (its own `run_id`, so
  the ledger keeps both runs' attempts). A run whose client went away is given up: a retry that was
  waiting for it runs itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from service_kit.errors import DeadlineExceeded, Reason, ServiceError


class IdempotencyKeyReused(ServiceError):
    """The request id was already used by this caller for a different request."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = Reason.IDEMPOTENCY_KEY_REUSED


class _Abandoned(Exception):
    """The run's client went away before it finished: whoever waited for it runs instead."""


def fingerprint(messages: Sequence[common_pb2.ChatMessage], options: router_pb2.RouteOptions) -> bytes:
    """What a request id is bound to: a digest of the conversation and the options, as sent."""
    canonical = router_pb2.RouteRequest(messages=messages, options=options)
    return hashlib.sha256(canonical.SerializeToString(deterministic=True)).digest()


def replayed(response: router_pb2.RouteResponse) -> router_pb2.RouteResponse:
    copy = router_pb2.RouteResponse()
    copy.CopyFrom(response)
    copy.replayed = True
    return copy


@dataclass(slots=True)
class _Entry:
    fingerprint: bytes
    expires: float
    response: router_pb2.RouteResponse | None = None
    running: asyncio.Future[router_pb2.RouteResponse] | None = None
    size: int = 0  # the response's serialized bytes, counted against the cache's byte budget


class IdempotencyCache:
    """Per replica, in memory: bound keys with their finished response or in-flight run, an LRU
    bounded in entries and in the bytes of the responses it keeps (a few long answers cannot take the
    memory that ten thousand short ones would)."""

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = 256 << 20,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._ttl > 0 and self._max > 0

    async def claim(self, key: Hashable, digest: bytes) -> router_pb2.RouteResponse | None:
        """The response to replay for `key`, or None: then the caller owns a new run of it and must end
        it with `finish` or `fail`. Raises IdempotencyKeyReused when `key` is bound to another request."""
        if not self.enabled:
            return None
        while True:
            entry = self._entries.get(key)
            if entry is not None and entry.running is None and entry.expires <= self._clock():
                self._drop(key)
                entry = None
            if entry is None:
                self._entries[key] = _Entry(digest, self._clock() + self._ttl, running=self._future())
                self._evict()
                return None
            self._entries.move_to_end(key)
            if entry.fingerprint != digest:
                raise IdempotencyKeyReused(
                    "this request_id was already used by this caller for a different request "
                    "(messages or options differ); use a new request_id for a new request",
                    metadata={"request_id": str(key[1]) if isinstance(key, tuple) else str(key)},
                )
            if entry.response is not None:
                return replayed(entry.response)
            if entry.running is None:  # its last run failed: this retry runs again
                entry.running = self._future()
                return None
            try:
                return replayed(await asyncio.shield(entry.running))
            except _Abandoned:
                continue  # the run was given up; the first waiter here takes it over

    def finish(self, key: Hashable, response: router_pb2.RouteResponse) -> None:
        """The owner's run answered: remember the response and hand it to whoever waits."""
        entry = self._entries.get(key)
        if entry is None or entry.running is None:
            return
        running, entry.running = entry.running, None
        entry.response = response
        entry.size = response.ByteSize()
        self._bytes += entry.size
        entry.expires = self._clock() + self._ttl
        if not running.done():
            running.set_result(response)
        self._evict()

    def fail(self, key: Hashable, error: BaseException) -> None:
        """The owner's run ended without an answer. Waiters get the same error, except when the owner's
        client went away (cancelled, or its deadline passed): then a waiter runs it. Either way the next
        retry runs again."""
        entry = self._entries.get(key)
        if entry is None or entry.running is None:
            return  # finished already (a client that left after its answer) or evicted
        running, entry.running = entry.running, None
        entry.expires = self._clock() + self._ttl
        if not running.done():
            given_up = not isinstance(error, Exception) or isinstance(error, DeadlineExceeded)
            running.set_exception(_Abandoned() if given_up else error)
            running.exception()  # retrieved: no "never retrieved" warning when nobody waits

    def _future(self) -> asyncio.Future[router_pb2.RouteResponse]:
        return asyncio.get_running_loop().create_future()

    def _evict(self) -> None:
        """Oldest first, never a run in flight (its waiters and owner hold on to it), until both the
        entries and the responses' bytes are within their bounds."""
        count, size = len(self._entries), self._bytes
        if count <= self._max and size <= self._max_bytes:
            return
        victims = []
        for key, entry in self._entries.items():
            if count <= self._max and size <= self._max_bytes:
                break
            if entry.running is None:
                victims.append(key)
                count, size = count - 1, size - entry.size
        for key in victims:
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size

    @property
    def bytes(self) -> int:
        """The serialized size of the responses kept."""
        return self._bytes


class Idempotency(Protocol):
    """Bound idempotency keys: in this replica's memory (IdempotencyCache) or shared (SharedIdempotency)."""

    async def claim(self, key: Hashable, digest: bytes) -> router_pb2.RouteResponse | None: ...

    def finish(self, key: Hashable, response: router_pb2.RouteResponse) -> None: ...

    def fail(self, key: Hashable, error: BaseException) -> None: ...
