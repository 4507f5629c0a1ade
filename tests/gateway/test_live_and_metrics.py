"""GET /stats/stream (WatchSpend as server-sent events), the spend page's files, and GET /metrics,
against the scripted upstream (conftest.py)."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from llmroute.ledger.v1 import ledger_pb2
from service_kit.errors import PermissionDenied, Reason, ServiceError
from tests.gateway.conftest import Harness


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = Reason.API_KEY_MISSING


def snapshot(requests: int, cost: float) -> ledger_pb2.WatchSpendResponse:
    reply = ledger_pb2.WatchSpendResponse(totals=ledger_pb2.Totals(requests=requests, cost_usd=cost))
    reply.time.FromSeconds(1_796_000_000)
    return reply


async def test_the_stream_sends_each_snapshot_as_an_event_and_ends_the_watch_with_the_client(
    harness: Harness,
) -> None:
    harness.upstream.watch = lambda request: [snapshot(3, 0.25), snapshot(4, 0.5)]
    events = []
    async with (
        httpx.AsyncClient(base_url=harness.url, headers={"Authorization": "Bearer sk-ops"}) as http,
        http.stream("GET", "/stats/stream?last_minutes=60&interval_seconds=2&caller=moderation") as reply,
    ):
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
            if len(events) == 2:
                break
    (seen,) = harness.upstream.seen
    assert seen.method == "WatchSpend" and seen.metadata["authorization"] == "Bearer sk-ops"
    assert (seen.request.last_minutes, seen.request.interval_seconds, seen.request.caller) == (
        60,
        2,
        "moderation",
    )
    assert [e["totals"]["requests"] for e in events] == [3, 4]
    assert events[1]["totals"]["cost_usd"] == 0.5 and events[1]["totals"]["baseline_cost_usd"] == 0.0
    assert events[0]["time"] == "2026-11-30T00:53:20Z"
    # The page went away: the ledger's watch is cancelled, not left running.
    await asyncio.wait_for(harness.upstream.cancelled.wait(), timeout=5)


async def test_a_refusal_before_the_first_snapshot_is_an_http_status(harness: Harness) -> None:
    harness.upstream.watch = lambda request: [
        Unauthenticated("an API key is required", reason=Reason.API_KEY_MISSING)
    ]
    async with httpx.AsyncClient(base_url=harness.url) as http:
        missing = await http.get("/stats/stream")
        harness.upstream.watch = lambda request: [
            PermissionDenied("role read needed", reason=Reason.ROLE_REQUIRED)
        ]
        denied = await http.get("/stats/stream")
        unknown = await http.get("/stats/stream?group_by=tier")
        bad = await http.get("/stats/stream?interval_seconds=soon")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "API_KEY_MISSING".lower()
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "group_by"
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "interval_seconds"
    assert [s.method for s in harness.upstream.seen] == ["WatchSpend", "WatchSpend"]


async def test_an_error_after_the_first_snapshot_is_an_error_event(harness: Harness) -> None:
    harness.upstream.watch = lambda request: [snapshot(1, 0.1), Unauthenticated("the key was revoked")]
    async with httpx.AsyncClient(base_url=harness.url) as http:
        reply = await http.get("/stats/stream")
    blocks = [b for b in reply.text.split("\n\n") if b]
    assert blocks[0].startswith("data: ") and json.loads(blocks[0][6:])["totals"]["requests"] == 1
    assert blocks[1].startswith("event: error\ndata: ")
    assert json.loads(blocks[1].split("data: ", 1)[1])["error"]["type"] == "authentication_error"


async def test_the_page_and_the_vendored_chart_library_are_served(harness: Harness) -> None:
    async with httpx.AsyncClient(base_url=harness.url) as http:
        page = await http.get("/")
        script = await http.get("/static/spend.js")
        library = await http.get("/static/vendor/uplot/uPlot.iife.min.js")
        missing = await http.get("/static/nothing.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="static/spend.js"' in page.text and "<script>" not in page.text
    assert script.status_code == 200 and "stats/stream" in script.text
    assert library.status_code == 200 and "uPlot" in library.text
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert not harness.upstream.seen  # the page's files need no upstream call


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_requests_by_route_template_and_status(harness: Harness) -> None:
    async with httpx.AsyncClient(base_url=harness.url) as http:
        before = samples((await http.get("/metrics")).text)
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        assert (await http.post("/v1/chat/completions", json={"model": "auto"})).status_code == 400
        assert (await http.get("/v1/models/not-a-model")).status_code == 404
        assert (await http.get("/no/such/path/x1")).status_code == 404
        reply = await http.get("/metrics")
    assert reply.headers["content-type"].startswith("text/plain")
    after = samples(reply.text)

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    requests = "llmroute_gateway_http_requests_total"
    chat = "/v1/chat/completions"
    assert grew(requests, route=chat, method="POST", status="200") == 1
    assert grew(requests, route=chat, method="POST", status="400") == 1
    # The route's template, never the path sent: a scan of paths cannot make new series.
    assert grew(requests, route="/v1/models/{model_id:path}", method="GET", status="404") == 1
    assert grew(requests, route="unmatched", method="GET", status="404") == 1
    assert not any("x1" in str(labels) or "not-a-model" in str(labels) for _, labels in after)
    duration = "llmroute_gateway_http_request_duration_seconds"
    assert grew(f"{duration}_count", route=chat, method="POST") == 2
    assert 0 < grew(f"{duration}_sum", route=chat, method="POST") < 5
    assert after[("llmroute_gateway_http_requests_in_flight", frozenset())] == 1  # the scrape itself
