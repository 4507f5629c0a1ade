"""The gateway against a scripted router: what it sends (request, credentials, deadline), and how every
gRPC status it can get back is answered in OpenAI's error shape, read by the real `openai` SDK."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2
from openai.types.chat import ChatCompletionMessageParam

from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2
from service_kit.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from tests.gateway.conftest import Harness, answer

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Is this spam? 'You won a cruise'"}]


_clients: list[openai.AsyncOpenAI] = []


def client(harness: Harness, max_retries: int = 0) -> openai.AsyncOpenAI:
    sdk = openai.AsyncOpenAI(base_url=harness.url + "/v1", api_key="sk-test-key", max_retries=max_retries)
    _clients.append(sdk)
    return sdk


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _clients:
        await _clients.pop().close()


async def test_request_translation_and_what_reaches_the_router(harness: Harness) -> None:
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"spam": {"type": "boolean"}},
        "required": ["spam"],
    }
    messages: list[ChatCompletionMessageParam] = [
        {"role": "developer", "content": "Answer in JSON."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Spam?"}, {"type": "text", "text": "'Win!'"}],
        },
    ]
    raw = await client(harness).chat.completions.with_raw_response.create(
        model="llmroute/simple",
        messages=messages,
        max_completion_tokens=64,
        temperature=0.2,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}},
        user="moderation",
        top_p=0.5,
        extra_headers={"Idempotency-Key": "order-77", "X-Request-Id": "trace-9"},
        extra_body={"llmroute": {"max_cost_usd": 0.01}},
    )
    (seen,) = harness.upstream.seen
    request = seen.request
    assert seen.method == "Route"
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Answer in JSON."),
        ("user", "Spam?\n'Win!'"),
    ]
    assert request.caller == "moderation" and request.request_id == "order-77"
    options = request.options
    assert options.force_tier == common_pb2.TIER_SIMPLE and not options.force_model
    assert options.max_output_tokens == 64 and options.temperature == pytest.approx(0.2)
    assert options.json_output and json.loads(options.json_schema) == schema
    assert options.max_cost_usd == pytest.approx(0.01)
    # Credentials travel unchanged; the tracing id as the services' x-request-id; the deadline is set.
    assert seen.metadata["authorization"] == "Bearer sk-test-key"
    assert seen.metadata["x-request-id"] == "trace-9"
    assert seen.time_remaining is not None and 40 < seen.time_remaining <= 42

    completion = raw.parse()
    assert completion.model == "gpt-5-nano"  # the model that answered, not the one asked for
    assert completion.choices[0].message.content == "Yes, spam."
    assert completion.usage is not None and completion.usage.prompt_tokens == 12
    assert completion.usage.completion_tokens == 3 and completion.usage.total_tokens == 15
    llmroute = (completion.model_extra or {})["llmroute"]
    assert llmroute["tier"] == "simple" and llmroute["score"] == pytest.approx(0.0312)
    assert llmroute["cost_usd"] == pytest.approx(0.000004)
    assert llmroute["baseline_cost_usd"] == pytest.approx(0.0001)
    assert llmroute["ignored_params"] == ["top_p"]
    assert raw.headers["x-llmroute-tier"] == "simple"
    assert float(raw.headers["x-llmroute-cost-usd"]) == pytest.approx(0.000004)
    assert float(raw.headers["x-llmroute-baseline-cost-usd"]) == pytest.approx(0.0001)
    assert float(raw.headers["x-llmroute-score"]) == pytest.approx(0.0312)
    assert raw.headers["x-llmroute-request-id"] == "req-1" and raw.request_id == "req-1"


@pytest.mark.parametrize(
    ("model", "force_tier", "force_model"),
    [
        ("llmroute/auto", common_pb2.TIER_UNSPECIFIED, ""),
        ("auto", common_pb2.TIER_UNSPECIFIED, ""),
        ("llmroute/reasoning", common_pb2.TIER_REASONING, ""),
        ("claude-haiku-4-5", common_pb2.TIER_UNSPECIFIED, "claude-haiku-4-5"),
    ],
)
async def test_the_model_name_routes_forces_a_tier_or_forces_a_model(
    harness: Harness, model: str, force_tier: int, force_model: str
) -> None:
    await client(harness).chat.completions.create(model=model, messages=USER)
    options = harness.upstream.seen[0].request.options
    assert (options.force_tier, options.force_model) == (force_tier, force_model)
    assert not options.HasField("max_output_tokens") and not options.HasField("temperature")


async def test_streaming_sends_deltas_then_the_answering_model_and_a_usage_chunk(harness: Harness) -> None:
    stream = await client(harness).chat.completions.create(
        model="llmroute/auto", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert harness.upstream.seen[0].method == "RouteStream"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Yes, spam."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    *_, finish, usage = chunks
    assert finish.choices[0].finish_reason == "stop" and finish.model == "gpt-5-nano"
    assert (finish.model_extra or {})["llmroute"]["tier"] == "simple"
    assert usage.choices == [] and usage.usage is not None and usage.usage.total_tokens == 15


async def test_without_include_usage_every_chunk_has_a_choice(harness: Harness) -> None:
    # Code written for OpenAI reads chunk.choices[0]: no usage chunk unless it was asked for.
    stream = await client(harness).chat.completions.create(model="llmroute/auto", messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(len(c.choices) == 1 for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def _budget() -> ServiceError:
    return ResourceExhausted(
        "moderation daily budget of $1.00 is spent ($1.0200)",
        reason=Reason.BUDGET_EXCEEDED,
        metadata={"scope": "moderation", "period": "daily", "hard_limit_usd": 1.0, "spent_usd": "1.02"},
    )


# gRPC status (as the router builds it) → HTTP status, the SDK's exception, OpenAI error code, param.
ERRORS = [
    (
        InvalidArgument([("options.max_output_tokens", "must be a number of tokens between 1 and 128000")]),
        400,
        openai.BadRequestError,
        "invalid_argument",
        "max_tokens",
    ),
    (
        InvalidArgument(
            [("options.force_model", "'gpt-9' is not a model of the routing policy")],
            reason=Reason.FORCED_MODEL_NOT_ALLOWED,
        ),
        400,
        openai.BadRequestError,
        "model_not_found",
        "model",
    ),
    (
        ServiceError("missing API key", reason=Reason.API_KEY_MISSING),
        401,
        openai.AuthenticationError,
        "api_key_missing",
        None,
    ),
    (
        # A reason outside the catalogue on purpose: the gateway passes any reason on, lower-cased.
        PermissionDenied("this key may not route", reason="KEY_NOT_ALLOWED"),  # type: ignore[arg-type]
        403,
        openai.PermissionDeniedError,
        "key_not_allowed",
        None,
    ),
    (_budget(), 429, openai.RateLimitError, "insufficient_quota", None),
    (
        ResourceExhausted(
            "no candidate fits max_cost_usd=1e-09",
            reason=Reason.MAX_COST_EXCEEDED,
            metadata={"max_cost_usd": 1e-9, "cheapest_estimate_usd": "0.000010"},
        ),
        402,
        openai.APIStatusError,
        "max_cost_exceeded",
        "llmroute.max_cost_usd",
    ),
    (
        ServiceError("request id bound to another request", reason=Reason.IDEMPOTENCY_KEY_REUSED),
        409,
        openai.ConflictError,
        "idempotency_key_reused",
        "Idempotency-Key",
    ),
    (
        FailedPrecondition(
            "forced model cannot be used now: cooldown",
            reason=Reason.FORCED_MODEL_UNAVAILABLE,
            metadata={"model": "gpt-5-nano", "skipped_reason": "cooldown"},
        ),
        503,
        openai.InternalServerError,
        "forced_model_unavailable",
        "model",
    ),
    (
        Unavailable("every candidate failed", reason=Reason.ALL_PROVIDERS_FAILED),
        503,
        openai.InternalServerError,
        "all_providers_failed",
        None,
    ),
    (
        DeadlineExceeded("the deadline passed", reason=Reason.DEADLINE_EXCEEDED),
        504,
        openai.InternalServerError,
        "deadline_exceeded",
        None,
    ),
]
ERRORS[2][0].code = grpc.StatusCode.UNAUTHENTICATED
ERRORS[6][0].code = grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("error", "status", "exception", "code", "param"), ERRORS, ids=lambda v: getattr(v, "reason", None)
)
async def test_grpc_statuses_become_openai_errors(
    harness: Harness,
    error: ServiceError,
    status: int,
    exception: type[openai.APIStatusError],
    code: str,
    param: str | None,
) -> None:
    def fail(request: object) -> None:
        raise error

    harness.upstream.route = fail
    with pytest.raises(exception) as raised:
        await client(harness).chat.completions.create(model="llmroute/auto", messages=USER, max_tokens=10)
    assert raised.value.status_code == status
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["code"] == code and body["param"] == param and body["type"]
    assert body["llmroute"]["grpc_code"] == error.code.name and body["llmroute"]["reason"] == error.reason
    if error.metadata:
        assert body["llmroute"]["metadata"] == error.metadata


async def test_a_spent_budget_is_not_retried_and_says_when_it_resets(harness: Harness) -> None:
    def fail(request: object) -> None:
        raise _budget()

    harness.upstream.route = fail
    # An SDK that retries 429 twice still makes one call: the gateway says retrying cannot help.
    with pytest.raises(openai.RateLimitError) as raised:
        await client(harness, max_retries=2).chat.completions.create(model="llmroute/auto", messages=USER)
    assert len(harness.upstream.seen) == 1
    headers = raised.value.response.headers
    assert headers["x-should-retry"] == "false"
    assert 0 < int(headers["retry-after"]) <= 86_400
    assert raised.value.body["type"] == "insufficient_quota"  # type: ignore[index]


async def test_the_router_unreachable_is_503_and_not_ready(harness: Harness) -> None:
    async with httpx.AsyncClient(base_url=harness.url) as http:
        assert (await http.get("/readyz")).json() == {"status": "ready", "router": "SERVING"}
        await harness.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        reply = await http.get("/readyz")
        assert reply.status_code == 503 and reply.json()["router"] == "NOT_SERVING"
        assert (await http.get("/healthz")).status_code == 200  # alive: only not ready


async def test_errors_before_the_first_delta_get_their_status_after_it_an_error_event(
    harness: Harness,
) -> None:
    harness.upstream.stream = lambda request: [_budget()]
    with pytest.raises(openai.RateLimitError):
        await client(harness).chat.completions.create(model="llmroute/auto", messages=USER, stream=True)

    harness.upstream.stream = lambda request: [
        "Half an ans",
        Unavailable("the provider's stream broke", reason=Reason.PROVIDER_STREAM_BROKEN),
    ]
    stream = await client(harness).chat.completions.create(model="llmroute/auto", messages=USER, stream=True)
    received = []
    with pytest.raises(openai.APIError) as raised:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["Half an ans"]
    assert raised.value.body["code"] == "provider_stream_broken"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "llmroute/auto", "messages": USER, "temperature": "hot"}, "temperature"),
        ({"model": "llmroute/auto", "messages": USER, "max_tokens": 1.5}, "max_tokens"),
        ({"model": "llmroute/cheapest", "messages": USER}, "model"),
        ({"messages": USER}, "model"),
        ({"model": "llmroute/auto", "messages": "hello"}, "messages"),
        ({"model": "llmroute/auto", "messages": USER, "n": 2}, "n"),
        ({"model": "llmroute/auto", "messages": USER, "tools": [{"type": "function"}]}, "tools"),
        (
            {
                "model": "llmroute/auto",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            },
            "messages[0].content[0]",
        ),
        (
            {"model": "llmroute/auto", "messages": USER, "response_format": {"type": "json_schema"}},
            "response_format.json_schema.schema",
        ),
        ({"model": "llmroute/auto", "messages": USER, "llmroute": {"budget": 1}}, "llmroute.budget"),
    ],
)
async def test_requests_it_cannot_translate_are_400_with_the_parameter(
    harness: Harness, body: dict[str, object], param: str
) -> None:
    async with httpx.AsyncClient(base_url=harness.url) as http:
        reply = await http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert harness.upstream.seen == []  # nothing reached the router


async def test_not_json_and_unknown_paths_answer_in_openai_shape(harness: Harness) -> None:
    async with httpx.AsyncClient(base_url=harness.url) as http:
        reply = await http.post("/v1/chat/completions", content=b"{not json")
        assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"
        reply = await http.get("/v1/embeddings")
        assert reply.status_code == 404 and "error" in reply.json()


async def test_a_client_that_goes_away_cancels_the_router_call(harness: Harness) -> None:
    async def slow(request: object) -> object:
        await asyncio.sleep(30)
        return answer()

    harness.upstream.route = slow
    async with httpx.AsyncClient(base_url=harness.url, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/chat/completions", json={"model": "llmroute/auto", "messages": USER})
    await asyncio.wait_for(harness.upstream.cancelled.wait(), timeout=5)


async def test_a_client_that_leaves_a_stream_cancels_the_router_call(harness: Harness) -> None:
    harness.upstream.stream = lambda request: ["Hello", 30.0, answer()]
    async with (
        httpx.AsyncClient(base_url=harness.url) as http,
        http.stream(
            "POST", "/v1/chat/completions", json={"model": "auto", "messages": USER, "stream": True}
        ) as reply,
    ):
        first = await reply.aiter_lines().__anext__()
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["content"] == "Hello"
    await asyncio.wait_for(harness.upstream.cancelled.wait(), timeout=5)


async def test_stats_translates_the_query_and_forwards_credentials(harness: Harness) -> None:
    def stats(request: ledger_pb2.GetStatsRequest) -> ledger_pb2.GetStatsResponse:
        reply = ledger_pb2.GetStatsResponse(totals=ledger_pb2.Totals(requests=3, cost_usd=0.25))
        reply.breakdowns.add(group_by=ledger_pb2.GROUP_BY_TIER).groups.add(key="simple").totals.requests = 3
        return reply

    harness.upstream.stats = stats
    async with httpx.AsyncClient(base_url=harness.url, headers={"Authorization": "Bearer sk-ops"}) as http:
        reply = await http.get("/stats?last_minutes=60&group_by=tier,model&group_by=caller&caller=moderation")
        assert reply.status_code == 200
        body = reply.json()
        bad = await http.get("/stats?group_by=planet")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
    (seen,) = harness.upstream.seen
    assert seen.metadata["authorization"] == "Bearer sk-ops"
    assert seen.request.window.last_minutes == 60 and seen.request.caller == "moderation"
    assert list(seen.request.group_by) == [
        ledger_pb2.GROUP_BY_TIER,
        ledger_pb2.GROUP_BY_MODEL,
        ledger_pb2.GROUP_BY_CALLER,
    ]
    assert body["totals"]["requests"] == 3 and body["totals"]["cost_usd"] == 0.25
    assert body["totals"]["baseline_cost_usd"] == 0.0  # zeros are there too
    assert body["breakdowns"][0] == {
        "group_by": "GROUP_BY_TIER",
        "groups": [
            {"key": "simple", "totals": {**body["breakdowns"][0]["groups"][0]["totals"], "requests": 3}}
        ],
    }


async def test_responses_are_not_held_back_by_nagle(harness: Harness) -> None:
    # Without TCP_NODELAY on accepted connections, a response written in two pieces waits for the
    # client's delayed ACK: about 40 ms per request on Linux.
    async with httpx.AsyncClient(base_url=harness.url) as http:
        await http.get("/healthz")
        timings = []
        for _ in range(10):
            started = time.perf_counter()
            await http.get("/healthz")
            timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.030


async def test_a_body_over_the_limit_is_413_before_parsing(harness: Harness) -> None:
    huge = {"model": "auto", "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    async with httpx.AsyncClient(base_url=harness.url) as http:
        reply = await http.post("/v1/chat/completions", json=huge)
    assert reply.status_code == 413 and reply.json()["error"]["type"] == "invalid_request_error"
    assert harness.upstream.seen == []
