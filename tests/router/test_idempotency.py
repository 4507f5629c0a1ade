"""Idempotency keys: bound to their request, shared by Route and RouteStream, one provider call per run.

The simulator's own counters are the ground truth for provider calls.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import yaml

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from router_svc.idempotency import IdempotencyCache, IdempotencyKeyReused
from router_svc.server import create_server
from service_kit.pricing import PriceBook
from tests.doubles import RecordingSink
from tests.rich_status import details
from tests.router.conftest import RouterHarness, heuristic_policy, router_settings
from tests.waiting import eventually

ALICE_PROMPT = "Summarize Alice's order history: 3 orders, one refund, address 12 Elm St."
OTHER_PROMPT = "Summarize Bob's order history: 1 order."


def route(
    text: str, request_id: str = "", caller: str = "alice", **options: object
) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=text)],
        request_id=request_id,
        caller=caller,
        options=router_pb2.RouteOptions(**options),  # type: ignore[arg-type]
    )


def stream(
    text: str, request_id: str = "", caller: str = "alice", **options: object
) -> router_pb2.RouteStreamRequest:
    return router_pb2.RouteStreamRequest(
        messages=[common_pb2.ChatMessage(role="user", content=text)],
        request_id=request_id,
        caller=caller,
        options=router_pb2.RouteOptions(**options),  # type: ignore[arg-type]
    )


async def calls(router: RouterHarness) -> int:
    """Provider calls the simulator received (completed, cancelled or in flight)."""
    return int((await router.simulator_stats())["totals"]["requests"])


async def collect(events: object) -> tuple[list[str], router_pb2.RouteResponse]:
    deltas, summary = [], None
    async for event in events:  # type: ignore[attr-defined]
        if event.HasField("delta"):
            deltas.append(event.delta.content)
        else:
            summary = event.summary
    assert summary is not None
    return deltas, summary


async def in_flight(router: RouterHarness) -> int:
    """Provider calls the simulator is answering now."""
    return int((await router.simulator_stats())["in_flight"])


# ---- the cache on its own ------------------------------------------------------------------------


async def test_a_key_is_bound_to_its_request_in_flight_finished_and_failed() -> None:
    now = [0.0]
    cache = IdempotencyCache(ttl_seconds=5, max_entries=10, clock=lambda: now[0])
    assert await cache.claim(("a", "k"), b"one") is None  # owner of the first run
    with pytest.raises(IdempotencyKeyReused):
        await cache.claim(("a", "k"), b"two")  # in flight, another request
    waiter = asyncio.create_task(cache.claim(("a", "k"), b"one"))
    await asyncio.sleep(0)
    cache.finish(("a", "k"), router_pb2.RouteResponse(run_id="r1", content="answer"))
    replay = await waiter
    assert replay is not None and replay.replayed and replay.run_id == "r1"
    with pytest.raises(IdempotencyKeyReused):
        await cache.claim(("a", "k"), b"two")  # finished, another request
    assert await cache.claim(("b", "k"), b"two") is None  # another caller's key is its own
    cache.fail(("b", "k"), RuntimeError("provider down"))
    with pytest.raises(IdempotencyKeyReused):
        await cache.claim(("b", "k"), b"three")  # a failed run still binds the key
    assert await cache.claim(("b", "k"), b"two") is None  # ...and the same request runs again
    now[0] = 100
    assert await cache.claim(("a", "k"), b"two") is None  # expired: the key is free


async def test_waiters_share_an_error_but_run_themselves_when_the_owner_went_away() -> None:
    cache = IdempotencyCache(ttl_seconds=5, max_entries=10)
    assert await cache.claim("k", b"x") is None
    waiter = asyncio.create_task(cache.claim("k", b"x"))
    await asyncio.sleep(0)
    cache.fail("k", ValueError("no candidate"))
    with pytest.raises(ValueError):
        await waiter
    assert await cache.claim("k", b"x") is None  # the next retry runs again
    waiter = asyncio.create_task(cache.claim("k", b"x"))
    await asyncio.sleep(0)
    cache.fail("k", asyncio.CancelledError())  # the owner's client went away
    assert await waiter is None  # so the waiter owns a new run


async def test_eviction_keeps_runs_in_flight() -> None:
    cache = IdempotencyCache(ttl_seconds=5, max_entries=2)
    assert await cache.claim("running", b"x") is None
    for key in ("a", "b", "c"):
        assert await cache.claim(key, b"x") is None
        cache.finish(key, router_pb2.RouteResponse(run_id=key))
    # "a" was the oldest finished entry and went; the run in flight stayed.
    assert await cache.claim("a", b"x") is None
    waiter = asyncio.create_task(cache.claim("running", b"x"))
    await asyncio.sleep(0)
    cache.finish("running", router_pb2.RouteResponse(run_id="late"))
    assert (await waiter).run_id == "late"  # type: ignore[union-attr]


async def test_the_kept_answers_are_bounded_in_bytes_not_only_in_entries() -> None:
    long_answer = router_pb2.RouteResponse(content="x" * 100_000)
    cache = IdempotencyCache(ttl_seconds=5, max_entries=1000, max_bytes=350_000)
    for key in ("a", "b", "c", "d"):
        assert await cache.claim(key, b"x") is None
        cache.finish(key, long_answer)
    assert cache.bytes <= 350_000
    assert await cache.claim("a", b"x") is None  # the oldest went to make room
    replay = await cache.claim("d", b"x")
    assert replay is not None and replay.replayed and replay.content == long_answer.content


# ---- through the router --------------------------------------------------------------------------


async def test_a_reused_key_with_another_prompt_is_refused_and_never_answered(router: RouterHarness) -> None:
    first = await router.stub.Route(route(ALICE_PROMPT, "order-42"))
    before = await calls(router)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.stub.Route(route(OTHER_PROMPT, "order-42"))
    found = details(raised.value)
    assert found.code == grpc.StatusCode.ALREADY_EXISTS and found.reason == "IDEMPOTENCY_KEY_REUSED"
    assert found.metadata["request_id"] == "order-42" and ALICE_PROMPT not in found.message
    # The same key and prompt: the first answer, marked, and no provider call.
    again = await router.stub.Route(route(ALICE_PROMPT, "order-42"))
    assert again.replayed and again.content == first.content and again.run_id == first.run_id
    assert await calls(router) == before
    # Another caller with the same id is another request: routed, and recorded under its own key.
    bob = await router.stub.Route(route(OTHER_PROMPT, "order-42", caller="bob"))
    assert not bob.replayed and bob.content != first.content
    assert await calls(router) == before + 1
    keys = {(r.caller, r.request_id, r.run_id) for r in router.sink.records}
    assert keys == {("alice", "order-42", first.run_id), ("bob", "order-42", bob.run_id)}


async def test_a_tracing_id_is_not_an_idempotency_key(router: RouterHarness) -> None:
    trace = (("x-request-id", "trace-7"),)
    one = await router.stub.Route(route(ALICE_PROMPT), metadata=trace)
    two = await router.stub.Route(route(OTHER_PROMPT), metadata=trace)
    assert not one.replayed and not two.replayed and one.content != two.content
    assert one.request_id != two.request_id and "trace-7" not in (one.request_id, two.request_id)
    assert await calls(router) == 2 and len(router.sink.records) == 2


async def test_a_retried_stream_is_replayed_not_called_again(router: RouterHarness) -> None:
    deltas, summary = await collect(router.stub.RouteStream(stream(ALICE_PROMPT, "s-1")))
    assert len(deltas) > 1 and not summary.replayed
    again_deltas, again = await collect(router.stub.RouteStream(stream(ALICE_PROMPT, "s-1")))
    assert again_deltas == ["".join(deltas)] and again.replayed and again.run_id == summary.run_id
    # Route shares the key: the same request is replayed, another is refused.
    assert (await router.stub.Route(route(ALICE_PROMPT, "s-1"))).replayed
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(router.stub.RouteStream(stream(OTHER_PROMPT, "s-1")))
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await calls(router) == 1 and len(router.sink.records) == 1


async def test_a_retry_while_the_first_stream_is_in_flight_waits_for_it(router: RouterHarness) -> None:
    await router.fault(model="*", fault="delay", delay_ms=300)
    first = asyncio.create_task(collect(router.stub.RouteStream(stream(ALICE_PROMPT, "s-2"))))
    await eventually(lambda: in_flight(router), "the first stream at the provider")
    second_deltas, second = await collect(router.stub.RouteStream(stream(ALICE_PROMPT, "s-2")))
    first_deltas, summary = await first
    assert second.replayed and second_deltas == ["".join(first_deltas)]
    assert await calls(router) == 1 and {r.run_id for r in router.sink.records} == {summary.run_id}


async def test_a_waiting_retry_runs_itself_when_the_first_client_gives_up(router: RouterHarness) -> None:
    # The first call must reach the provider within its deadline, and give up while the provider is
    # still at it: 1.5 s of deadline (a loaded machine took more than 0.3 s to get there), 5 s of call.
    await router.fault(model="*", fault="delay", delay_ms=5000, count=1)

    async def give_up() -> router_pb2.RouteResponse:
        return await router.stub.Route(route(ALICE_PROMPT, "r-1"), timeout=1.5)

    first = asyncio.create_task(give_up())
    await eventually(lambda: in_flight(router), "the first call at the provider")
    second = await router.stub.Route(route(ALICE_PROMPT, "r-1"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await first
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not second.replayed
    # Two provider calls (one cancelled), two runs in the records: nothing collides, nothing is lost.

    async def settled() -> bool:  # the cancelled run records its attempt as it unwinds
        stats = await router.simulator_stats()
        return len(router.sink.records) >= 2 and stats["in_flight"] == 0 and stats["totals"]["cancelled"] >= 1

    await eventually(settled, "both runs ended and recorded")
    stats = (await router.simulator_stats())["totals"]
    assert stats["requests"] == 2 and stats["cancelled"] == 1
    runs = {r.run_id: r.outcome for r in router.sink.records}
    assert (
        len(router.sink.records) == 2
        and len(runs) == 2
        and runs[second.run_id] == common_pb2.ATTEMPT_OUTCOME_OK
    )


# ---- the savings counterfactual ------------------------------------------------------------------


@pytest.mark.parametrize("effort", [None, "high"])
async def test_the_baseline_counts_reasoning_only_when_it_is_configured_to_reason(
    effort: str | None,
    classifier_address: str,
    simulator_url: str,
    tmp_path: Path,
    recording_sink: RecordingSink,
) -> None:
    policy = yaml.safe_load(heuristic_policy(tmp_path).read_text())
    if effort:
        policy["baseline_reasoning_effort"] = effort
    path = tmp_path / "baseline.yaml"
    path.write_text(yaml.safe_dump(policy))
    running = await create_server(
        router_settings(classifier_address, simulator_url, tmp_path, policy_path=path),
        usage_sink=recording_sink,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            from llmroute.router.v1 import router_pb2_grpc

            # gpt-oss always reasons in the simulator, as it does at Groq.
            response = await router_pb2_grpc.RouterServiceStub(channel).Route(
                route("Translate to French: good morning", force_model="groq/openai/gpt-oss-20b")
            )
    finally:
        await running.stop(0)
    usage, prices = response.usage, PriceBook.from_litellm()
    baseline = prices.price(policy["baseline_model"])
    assert baseline is not None and usage.reasoning_tokens > 0
    visible = usage.output_tokens - usage.reasoning_tokens
    without = usage.input_tokens * baseline.input_per_token + visible * baseline.output_per_token
    reasoning = usage.reasoning_tokens * baseline.reasoning_per_token
    if effort:
        assert usage.baseline_cost_usd == pytest.approx(without + reasoning, rel=1e-9)
        assert usage.baseline_reasoning_cost_usd == pytest.approx(reasoning, rel=1e-9)
    else:
        assert usage.baseline_cost_usd == pytest.approx(without, rel=1e-9)
        assert usage.baseline_reasoning_cost_usd == 0
    # The record keeps the raw token counts, so the figure can be recomputed.
    [record] = recording_sink.records
    assert record.usage.reasoning_tokens == usage.reasoning_tokens
    assert record.usage.output_tokens == usage.output_tokens
    assert record.usage.baseline_cost_usd == usage.baseline_cost_usd
    assert record.policy_version.startswith("v1-")
