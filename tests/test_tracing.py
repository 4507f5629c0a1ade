"""One trace across the services: a Route's server span, the classifier and ledger calls it makes, and
its provider call, all in one trace, with the request id on the router's span (in-memory exporter)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from classifier_svc.server import create_server as create_classifier
from classifier_svc.settings import ClassifierSettings
from ledger_client import LedgerReporter
from ledger_svc.settings import LedgerSettings
from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.server import create_server as create_router
from service_kit import tracing
from tests.ledger.conftest import start_ledger, stop_ledger
from tests.router.conftest import router_settings


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer

    spans = InMemorySpanExporter()
    assert tracing.configure("tests", SimpleSpanProcessor(spans))
    yield spans
    # The instrumentors' constructors carry no annotations (opentelemetry-instrumentation-grpc).
    GrpcAioInstrumentorServer().uninstrument()  # type: ignore[no-untyped-call]
    GrpcAioInstrumentorClient().uninstrument()  # type: ignore[no-untyped-call]
    tracing._instrumented = False


@pytest.fixture
async def services(
    exporter: InMemorySpanExporter, tmp_path: Path, simulator_url: str
) -> AsyncIterator[tuple[str, str]]:
    """A ledger, a classifier and a router, started once tracing is on: (router, ledger) addresses."""
    ledger = await start_ledger(
        LedgerSettings(port=0, database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    )
    classifier = await create_classifier(
        ClassifierSettings(port=0, strategy="heuristic", cache_enabled=False)
    )
    address = f"127.0.0.1:{ledger.running.port}"
    settings = router_settings(
        f"127.0.0.1:{classifier.port}", simulator_url, tmp_path, ledger_address=address, budgets_enabled=True
    )
    router = await create_router(settings, usage_sink=LedgerReporter(address, tmp_path / "spool.db"))
    try:
        yield f"127.0.0.1:{router.port}", address
    finally:
        await router.stop(0)
        await classifier.stop(0)
        await stop_ledger(ledger)


ROUTE = "/llmroute.router.v1.RouterService/Route"


async def test_a_route_is_one_trace_through_classifier_ledger_and_provider(
    exporter: InMemorySpanExporter, services: tuple[str, str]
) -> None:
    async with grpc.aio.insecure_channel(services[0]) as channel:
        reply = await router_pb2_grpc.RouterServiceStub(channel).Route(
            router_pb2.RouteRequest(
                messages=[common_pb2.ChatMessage(role="user", content="Is this spam? 'free cruise'")],
                caller="tracing",
                request_id="trace-me-1",
            )
        )
    spans = exporter.get_finished_spans()
    [route] = [s for s in spans if s.name == ROUTE and s.kind.name == "SERVER"]
    assert route.attributes is not None
    assert route.attributes[tracing.REQUEST_ID] == reply.request_id == "trace-me-1"
    in_trace = {s.name for s in spans if s.context.trace_id == route.context.trace_id}
    assert "/llmroute.classifier.v1.ClassifierService/Classify" in in_trace  # the classifier's own span
    # The budget check and the hold, on the ledger.
    assert any(name.startswith("/llmroute.ledger.v1.LedgerService/") for name in in_trace)
    [call] = [s for s in spans if s.name == "provider_call"]
    assert call.context.trace_id == route.context.trace_id
    assert call.attributes is not None
    assert call.attributes["llmroute.model"] == reply.model


async def test_a_chat_completion_through_the_gateway_is_one_trace_from_the_gateway_on(
    exporter: InMemorySpanExporter, services: tuple[str, str]
) -> None:
    import httpx

    from gateway.settings import GatewaySettings
    from tests.gateway.conftest import serve_gateway

    gateway = GatewaySettings(port=0, router_address=services[0], ledger_address=services[1])
    async with serve_gateway(gateway) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        reply = await http.post(
            "/v1/chat/completions",
            json={
                "model": "llmroute/auto",
                "messages": [{"role": "user", "content": "Is this spam? 'cruise'"}],
            },
            headers={"Idempotency-Key": "trace-gw-1"},
        )
        assert reply.status_code == 200, reply.text
    spans = exporter.get_finished_spans()
    [client] = [s for s in spans if s.name == ROUTE and s.kind.name == "CLIENT"]  # the gateway's call
    [server] = [s for s in spans if s.name == ROUTE and s.kind.name == "SERVER"]
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    in_trace = {s.name for s in spans if s.context.trace_id == client.context.trace_id}
    assert {"/llmroute.classifier.v1.ClassifierService/Classify", "provider_call"} <= in_trace
    assert server.attributes is not None
    assert server.attributes[tracing.REQUEST_ID] == "trace-gw-1"
