"""A stream the request's deadline ends mid-answer: the client is told DEADLINE_EXCEEDED (its deadline
passed), not that the provider broke the stream; the attempt is a timeout charged for what it sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmroute.common.v1 import common_pb2
from router_svc.provider_calls import Outcome
from router_svc.request import pin
from service_kit.errors import DeadlineExceeded
from service_kit.litellm_offline import litellm
from tests.router.route_parts import PRICES, build, request


async def _trickle(**kwargs: Any) -> AsyncIterator[Any]:
    """A provider that sends one delta, then nothing for a long time (a slow stream)."""
    kwargs["logger_fn"]({})  # the request goes out

    async def chunks() -> AsyncIterator[Any]:
        yield litellm.ModelResponseStream(choices=[{"delta": {"content": "Once upon "}, "index": 0}])
        await asyncio.sleep(30)
        yield litellm.ModelResponseStream(choices=[{"delta": {"content": "a time"}, "index": 0}])

    return chunks()


async def test_a_deadline_passing_mid_stream_is_deadline_exceeded_not_a_broken_stream(tmp_path: Path) -> None:
    parts = build(tmp_path)
    parts.router._caller._acompletion = _trickle
    pinned = pin(request(), parts.policy, PRICES)
    choice = parts.router.plan(pinned, common_pb2.TIER_SIMPLE, common_pb2.CATEGORY_CHAT).choices(
        common_pb2.TIER_SIMPLE
    )[0]
    outcomes: list[Outcome] = []
    received = []
    deadline = asyncio.get_running_loop().time() + 0.3
    with pytest.raises(DeadlineExceeded) as caught:
        async for delta in parts.router._caller.stream(pinned, choice, deadline, outcomes):
            received.append(delta)
    assert caught.value.reason == "DEADLINE_EXCEEDED" and received == ["Once upon "]
    (attempt,) = (o.attempt for o in outcomes)
    assert attempt.outcome == common_pb2.ATTEMPT_OUTCOME_TIMEOUT
    assert attempt.usage.input_tokens > 0 and attempt.usage.output_tokens > 0 and attempt.usage.cost_usd > 0
    assert not parts.cooldowns.in_cooldown(choice.spec.model)  # the deadline is not the model's fault
