"""Prometheus metrics: what every service counts about its RPCs, and the endpoint that serves them.

Each service process has one registry (prometheus_client's default) and, when its `*_METRICS_PORT` is
set, serves it at `http://HOST:PORT/metrics`. Names follow Prometheus conventions: `llmroute_` first,
base units (seconds), `_total` on counters.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RPCS = Counter("llmroute_rpcs", "RPCs handled, by method and status code.", ["method", "code"])
RPC_SECONDS = Histogram(
    "llmroute_rpc_duration_seconds",
    "Time from an RPC's arrival to its last response or its status.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def observe_rpc(method: str, code: str, seconds: float) -> None:
    RPCS.labels(method, code).inc()
    RPC_SECONDS.labels(method).observe(seconds)


def serve(host: str, port: int) -> int:
    """Serve /metrics on a thread of its own (scrapes never wait for the event loop); returns the port."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_address[1])
