"""The gateway's Prometheus metrics (HTTP requests by route and status, their latency) and `/metrics`.

The metrics are in prometheus_client's default registry, as the services' are (service_kit/metrics.py),
and the app serves that registry at `GET /metrics` on its own port. `route` is the route's template
(`/v1/models/{model_id:path}`, never the path a client sent) or `unmatched`, so a scan of random
paths cannot grow the number of series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "llmroute_gateway_http_requests",
    "HTTP requests answered by the gateway, by route, method and status code.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "llmroute_gateway_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response body (for a stream: the stream's end).",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
HTTP_IN_FLIGHT = Gauge(
    "llmroute_gateway_http_requests_in_flight",
    "HTTP requests the gateway is answering now (open streams included).",
)
# A request that ends without a response (the client went away first) is counted with nginx's 499.
CLIENT_CLOSED = 499


class MetricsMiddleware:
    """Counts and times every HTTP request. A plain ASGI middleware (no BaseHTTPMiddleware): it adds a
    few microseconds and does not buffer or re-wrap streamed bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        # (route, method, status) → its counter and histogram: `labels()` validates and locks on
        # every call, a third of this middleware's cost. Bounded: routes are templates.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = CLIENT_CLOSED

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self._app(scope, receive, send_status)
        except Exception:
            status = 500  # the server's error handler answers 500 outside this middleware
            raise
        finally:
            HTTP_IN_FLIGHT.dec()
            # The router records the matched route in the scope it was given (the same dict).
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            key = (route, scope["method"], status)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (
                    HTTP_REQUESTS.labels(route, key[1], str(status)),
                    HTTP_SECONDS.labels(route, key[1]),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - started)


async def metrics(request: Request) -> Response:
    """GET /metrics: the process's registry in Prometheus' text format."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
