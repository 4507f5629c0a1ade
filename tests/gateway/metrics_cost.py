"""What the metrics middleware (gateway/metrics.py) adds per request: an ASGI app that answers at once,
called 100,000 times bare and wrapped, in one process. Run from the repository root:
`.venv/bin/python -m tests.gateway.metrics_cost`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.metrics import MetricsMiddleware

N = 100_000


class _Route:
    path = "/v1/chat/completions"


async def _app(scope: Any, receive: Any, send: Any) -> None:
    scope["route"] = _Route()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _send(message: Any) -> None:
    pass


async def _receive() -> Any:
    return {}


async def _per_call(app: Any) -> float:
    started = time.perf_counter()
    for _ in range(N):
        await app({"type": "http", "method": "POST"}, _receive, _send)
    return (time.perf_counter() - started) / N * 1e6


async def main() -> None:
    wrapped = MetricsMiddleware(_app)
    bare, counted = [], []
    for _ in range(3):
        bare.append(await _per_call(_app))
        counted.append(await _per_call(wrapped))
    print(f"bare {min(bare):.1f} us, with the middleware {min(counted):.1f} us per request (best of 3)")


if __name__ == "__main__":
    asyncio.run(main())
