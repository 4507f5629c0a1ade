"""llmroute_client: the one-liner, the async and blocking clients, typed errors, retries that reuse the
request id, the key from the environment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from llmroute.router.v1 import router_pb2, router_pb2_grpc
from llmroute_client import AlreadyExists, AsyncClient, Client, InvalidArgument, route
from tests.router.conftest import RouterHarness

SPAM = "Is this message spam? 'You won a free cruise, click here'"


def address(router: RouterHarness) -> str:
    return f"127.0.0.1:{router.server.port}"


async def test_route_and_stream_against_the_router(router: RouterHarness) -> None:
    async with AsyncClient(address(router)) as client:
        reply = await client.route(SPAM, caller="client-tests", max_output_tokens=50)
        assert reply.content and reply.model and reply.request_id
        text = "".join([piece async for piece in client.stream("Say hello.", caller="client-tests")])
        assert text


async def test_failures_are_typed_with_their_details(router: RouterHarness) -> None:
    async with AsyncClient(address(router)) as client:
        with pytest.raises(InvalidArgument) as bad:
            await client.route(SPAM, force_model="not/a-policy-model")
        assert (
            bad.value.reason == "FORCED_MODEL_NOT_ALLOWED" and "options.force_model" in bad.value.violations
        )
        await client.route(SPAM, request_id="client-key-1")
        with pytest.raises(AlreadyExists) as reused:
            await client.route("another prompt", request_id="client-key-1")
        assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"


class FlakyRouter(router_pb2_grpc.RouterServiceServicer):
    """UNAVAILABLE the first `failures` times, then an answer; remembers what it was sent."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.request_ids: list[str] = []
        self.keys: list[str] = []

    async def Route(self, request, context):  # type: ignore[no-untyped-def]
        self.request_ids.append(request.request_id)
        self.keys.append(dict(context.invocation_metadata()).get("authorization", ""))
        if len(self.request_ids) <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return router_pb2.RouteResponse(request_id=request.request_id, content="answer")


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyRouter, str]]:
    # Route only: RouteStream answers UNIMPLEMENTED, as the generated servicer's methods do at run time
    # (mypy-protobuf's stubs declare them abstract).
    servicer = FlakyRouter(failures=2)  # type: ignore[abstract]
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_unavailable_is_retried_under_the_same_request_id(
    flaky: tuple[FlakyRouter, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, where = flaky
    monkeypatch.setenv("LLMROUTE_API_KEY", "lrk_test_secret")
    async with AsyncClient(where) as client:
        reply = await client.route("hi")
    assert reply.content == "answer"
    assert (
        len(servicer.request_ids) == 3 and len(set(servicer.request_ids)) == 1
    )  # one id: never billed twice
    assert servicer.keys == ["Bearer lrk_test_secret"] * 3


async def test_the_blocking_client_and_the_one_liner_read_the_environment(
    flaky: tuple[FlakyRouter, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, where = flaky
    monkeypatch.setenv("LLMROUTE_ADDRESS", where)
    monkeypatch.delenv("LLMROUTE_API_KEY", raising=False)
    reply = await asyncio.to_thread(route, "hi")  # the server runs on this loop: call from a thread
    assert reply.content == "answer" and servicer.keys[-1] == ""

    def blocking() -> str:
        with Client(retries=0) as client:
            return client.route("again").content

    assert await asyncio.to_thread(blocking) == "answer"
