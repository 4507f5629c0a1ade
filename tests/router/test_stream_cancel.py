"""Clients that cancel streams mid-answer: the router closes each provider stream (the provider stops
generating, and billing, the rest) and records each attempt as cancelled, charged for the part that
was generated."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from router_svc.provider_calls import Outcome
from router_svc.request import pin
from service_kit.litellm_offline import litellm
from tests.router.conftest import RouterHarness
from tests.router.route_parts import PRICES, build, request
from tests.waiting import eventually

STREAMS = 8


async def test_streams_cancelled_by_their_clients_cancel_the_provider_streams(router: RouterHarness) -> None:
    # Every chunk 50 ms apart: each provider still has most of its answer to send when its client goes.
    # The client's cancel reaches the router while it waits for the provider's next chunk or while it
    # hands a delta on to the client: both must end the provider's stream.
    await router.fault(model="*", fault="slow_stream", chunk_interval_ms=50)

    async def cancel_after(n: int) -> grpc.StatusCode:
        call = router.stub.RouteStream(
            router_pb2.RouteStreamRequest(
                messages=[common_pb2.ChatMessage(role="user", content=f"Explain TCP and UDP ({n}).")]
            ),
            timeout=60,
        )
        deltas = 0
        async for event in call:
            if event.HasField("delta"):
                deltas += 1
                if deltas == n:
                    call.cancel()
                    break
        return await call.code()

    codes = await asyncio.gather(*(cancel_after(1 + i % 4) for i in range(STREAMS)))
    assert set(codes) == {grpc.StatusCode.CANCELLED}

    async def all_ended() -> dict[str, Any]:
        stats = await router.simulator_stats()
        done = stats["in_flight"] == 0 and len(router.sink.records) == STREAMS
        return stats if done else {}

    stats = await eventually(all_ended, "every provider call ended and was recorded", timeout=30)
    # The provider saw each client go away before the end of its answer (no stream ran to its end).
    assert (stats["totals"]["cancelled"], stats["totals"]["completed"]) == (STREAMS, 0), stats["totals"]
    for record in router.sink.records:
        assert record.outcome == common_pb2.ATTEMPT_OUTCOME_CANCELLED
        assert record.usage.input_tokens > 0 and record.usage.output_tokens > 0 and record.usage.cost_usd > 0


class _Stream:
    """A provider stream that says when it was closed: deltas every 50 ms, a hundred of them."""

    def __init__(self) -> None:
        self.closed = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(0.05)
        return litellm.ModelResponseStream(choices=[{"delta": {"content": "word "}, "index": 0}])

    async def aclose(self) -> None:
        self.closed = True


async def test_a_stream_closed_while_a_delta_is_handed_on_closes_the_provider_stream(tmp_path: Path) -> None:
    # The client's cancel reaches the router while it hands a delta on (the generator is closed at
    # its yield, not cancelled in a read): the provider's stream must be closed then, not whenever
    # the garbage collector gets to it (its connection open, the provider generating the rest).
    parts = build(tmp_path)
    provider_stream = _Stream()

    async def acompletion(**kwargs: Any) -> _Stream:
        kwargs["logger_fn"]({})
        return provider_stream

    parts.router._caller._acompletion = acompletion
    pinned = pin(request(), parts.policy, PRICES)
    choice = parts.router.plan(pinned, common_pb2.TIER_SIMPLE, common_pb2.CATEGORY_CHAT).choices(
        common_pb2.TIER_SIMPLE
    )[0]
    outcomes: list[Outcome] = []
    deltas = parts.router._caller.stream(pinned, choice, None, outcomes)
    assert await anext(deltas) == "word "
    await deltas.aclose()
    assert provider_stream.closed
    (cancelled,) = outcomes
    assert cancelled.attempt.outcome == common_pb2.ATTEMPT_OUTCOME_CANCELLED
    assert cancelled.attempt.usage.output_tokens > 0
