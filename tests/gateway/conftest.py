"""The gateway in process (uvicorn on 127.0.0.1:0) in front of a scripted router and ledger.

`ScriptedUpstream` implements the real RouterService and LedgerService servicers and the health
service on one gRPC server: each test says what the next call answers (a reply or a rich status built
by service_kit.errors, exactly as the router builds them), and reads what the gateway sent (request,
metadata, deadline). The end-to-end tests (test_openai_e2e.py) run the real services instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.server import create_server
from gateway.settings import GatewaySettings
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from service_kit.errors import ServiceError


def answer(content: str = "Yes, spam.", model: str = "gpt-5-nano", **fields: Any) -> router_pb2.RouteResponse:
    reply = router_pb2.RouteResponse(
        request_id=fields.pop("request_id", "req-1"),
        run_id="run-1",
        content=content,
        finish_reason="stop",
        model=model,
        tier=common_pb2.TIER_SIMPLE,
        usage=common_pb2.Usage(input_tokens=12, output_tokens=3, cost_usd=0.000004, baseline_cost_usd=0.0001),
        price_map_version="litellm-test",
        **fields,
    )
    reply.decision.score = 0.0312
    reply.decision.source = common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    return reply


@dataclass
class Seen:
    """One call as the upstream received it."""

    method: str
    request: Any
    metadata: dict[str, str | bytes]  # bytes for the -bin keys
    time_remaining: float | None


# What a scripted call does: return a reply, raise a ServiceError, or stream events (RouteStream).
Script = Callable[[Any], Any]


@dataclass
class ScriptedUpstream(router_pb2_grpc.RouterServiceServicer, ledger_pb2_grpc.LedgerServiceServicer):
    route: Script = lambda request: answer()
    # RouteStream: a list of deltas, then the summary; a ServiceError in the list aborts there, a float
    # pauses that many seconds.
    stream: Callable[[Any], list[Any]] = lambda request: ["Yes", ", spam.", answer("Yes, spam.")]
    stats: Script = lambda request: ledger_pb2.GetStatsResponse()
    # WatchSpend: snapshots, a ServiceError in the list aborts there; the stream then stays open.
    watch: Callable[[Any], list[Any]] = lambda request: [ledger_pb2.WatchSpendResponse()]
    seen: list[Seen] = field(default_factory=list)
    called: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def _record(self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        self.seen.append(Seen(method, request, metadata, context.time_remaining()))
        self.called.set()

    async def Route(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self._record("Route", request, context)
        try:
            result = self.route(request)
            if asyncio.iscoroutine(result):
                result = await result
        except ServiceError as error:
            await context.abort_with_status(error.to_status())
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return result

    async def RouteStream(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        self._record("RouteStream", request, context)
        for event in self.stream(request):
            if isinstance(event, float):  # a pause (the provider thinking), cancellable
                try:
                    await asyncio.sleep(event)
                except asyncio.CancelledError:
                    self.cancelled.set()
                    raise
                continue
            if isinstance(event, ServiceError):
                await context.abort_with_status(event.to_status())
            if isinstance(event, str):
                yield router_pb2.RouteStreamResponse(delta=router_pb2.ContentDelta(content=event))
            else:
                yield router_pb2.RouteStreamResponse(summary=event)

    async def WatchSpend(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        self._record("WatchSpend", request, context)
        for event in self.watch(request):
            if isinstance(event, ServiceError):
                await context.abort_with_status(event.to_status())
            yield event
        try:
            await asyncio.Event().wait()  # open until the gateway cancels it
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def GetStats(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self._record("GetStats", request, context)
        try:
            return self.stats(request)
        except ServiceError as error:
            await context.abort_with_status(error.to_status())


@dataclass
class Harness:
    upstream: ScriptedUpstream
    health: health.aio.HealthServicer
    # The gateway's base URL, and the scripted services' gRPC address.
    url: str
    upstream_address: str


@contextlib.asynccontextmanager
async def serve_gateway(settings: GatewaySettings) -> AsyncIterator[str]:
    """The gateway serving in this event loop on a free port; yields its base URL."""
    server, sock = create_server(settings)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    # The ledger methods it leaves out answer UNIMPLEMENTED, as the generated servicer's do at run time;
    # mypy-protobuf's stubs declare them abstract.
    upstream = ScriptedUpstream()  # type: ignore[abstract]
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServiceServicer_to_server(upstream, server)
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(upstream, server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    settings = GatewaySettings(
        port=0,
        router_address=f"127.0.0.1:{port}",
        ledger_address=f"127.0.0.1:{port}",
        route_timeout_seconds=42,
    )
    try:
        async with serve_gateway(settings) as url:
            yield Harness(upstream, checker, url, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)
