"""The metrics endpoint: RPCs counted by method and status code, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from service_kit import metrics
from tests.router.conftest import RouterHarness

ROUTE = "/llmroute.router.v1.RouterService/Route"
STREAM = "/llmroute.router.v1.RouterService/RouteStream"
# (metric name, its labels) -> value, from one scrape.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def request(text: str) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=text)], caller="tests"
    )


def stream_request(text: str) -> router_pb2.RouteStreamRequest:
    return router_pb2.RouteStreamRequest(
        messages=[common_pb2.ChatMessage(role="user", content=text)], caller="tests"
    )


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"http://127.0.0.1:{port}/metrics")
    reply.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def rpcs(samples: Samples, method: str, code: str) -> float:
    return samples.get(("llmroute_rpcs_total", frozenset({("method", method), ("code", code)})), 0.0)


def durations(samples: Samples, method: str) -> float:
    return samples.get(("llmroute_rpc_duration_seconds_count", frozenset({("method", method)})), 0.0)


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return metrics.serve("127.0.0.1", 0)


async def test_rpcs_are_counted_by_method_and_status_code(router: RouterHarness, metrics_port: int) -> None:
    before = await scrape(metrics_port)
    await router.stub.Route(request("Is this spam? 'free cruise'"))
    async for _ in router.stub.RouteStream(stream_request("Say hello.")):
        pass
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.stub.Route(router_pb2.RouteRequest(caller="tests"))  # no messages
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await scrape(metrics_port)

    assert rpcs(after, ROUTE, "OK") - rpcs(before, ROUTE, "OK") == 1
    assert rpcs(after, ROUTE, "INVALID_ARGUMENT") - rpcs(before, ROUTE, "INVALID_ARGUMENT") == 1
    assert rpcs(after, STREAM, "OK") - rpcs(before, STREAM, "OK") == 1
    assert durations(after, ROUTE) - durations(before, ROUTE) == 2


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_provider_calls_spend_and_requests_are_counted_as_the_ledger_counts_them(
    router: RouterHarness, metrics_port: int
) -> None:
    before = await scrape(metrics_port)
    reply = await router.stub.Route(request("Is this spam? 'free cruise'"))
    after = await scrape(metrics_port)
    tier = common_pb2.Tier.Name(reply.tier).removeprefix("TIER_").lower()
    source = (
        common_pb2.ClassifierSource.Name(reply.decision.source).removeprefix("CLASSIFIER_SOURCE_").lower()
    )

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("llmroute_router_provider_calls_total", model=reply.model, outcome="ok") == 1
    assert delta("llmroute_router_spend_usd_total", tier=tier, model=reply.model) == pytest.approx(
        reply.usage.cost_usd
    )
    assert delta("llmroute_router_baseline_usd_total", tier=tier) == pytest.approx(
        reply.usage.baseline_cost_usd
    )
    assert delta("llmroute_router_requests_total", tier=tier, source=source) == 1
    assert delta("llmroute_router_simulated_calls_total") == 1
    assert delta("llmroute_router_provider_call_duration_seconds_count", model=reply.model) == 1
    assert value(after, "llmroute_router_models_in_cooldown") == 0
