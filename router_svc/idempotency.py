"""Route is idempotent by (caller, request_id): a retry gets the first answer instead of a second bill."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

from llmroute.router.v1 import router_pb2


class ResponseCache:
    """Finished responses for `ttl` seconds (bounded LRU), and in-flight calls shared by duplicates."""

    def __init__(
        self, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._done: OrderedDict[Hashable, tuple[float, router_pb2.RouteResponse]] = OrderedDict()
        self._running: dict[Hashable, asyncio.Future[router_pb2.RouteResponse]] = {}
        # How many times each key was routed and failed: a retry after a failure routes again, and
        # its attempts must not reuse the ledger's (request_id, attempt) keys of the failed run.
        self._failed_runs: OrderedDict[Hashable, int] = OrderedDict()

    def failed_runs(self, key: Hashable) -> int:
        return self._failed_runs.get(key, 0)

    async def get_or_run(
        self, key: Hashable, run: Callable[[], Awaitable[router_pb2.RouteResponse]]
    ) -> router_pb2.RouteResponse:
        if self._max == 0 or self._ttl == 0:
            return await run()
        hit = self._done.get(key)
        if hit is not None and hit[0] > self._clock():
            self._done.move_to_end(key)
            return hit[1]
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[router_pb2.RouteResponse] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            response = await run()
        except BaseException as error:
            # Failures are not remembered: a retry routes again. Waiters see the same error.
            self._failed_runs[key] = self._failed_runs.get(key, 0) + 1
            self._failed_runs.move_to_end(key)
            while len(self._failed_runs) > max(self._max, 1):
                self._failed_runs.popitem(last=False)
            if not future.done():
                future.set_exception(error if isinstance(error, Exception) else asyncio.CancelledError())
                future.exception()  # mark retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._running[key]
        future.set_result(response)
        self._done[key] = (self._clock() + self._ttl, response)
        self._done.move_to_end(key)
        while len(self._done) > self._max:
            self._done.popitem(last=False)
        return response
