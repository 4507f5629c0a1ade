"""The Route path: each step module entered once, in order, and the escalation loop that composes them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from llmroute.common.v1 import common_pb2
from service_kit.errors import Unavailable
from tests.router.fake_provider import Script, bad_request, server_error
from tests.router.route_parts import build, request

STEPS = ("request", "decision", "selection", "provider_calls", "validators", "accounting", "exploration")
ROUTER_FILE = str(Path("router_svc/router.py").resolve())


def _step_of(frame: FrameType) -> str | None:
    path = Path(frame.f_code.co_filename)
    if path.parent.name == "router_svc" and path.stem in STEPS:
        return path.stem
    return None


async def _steps_entered(call: Callable[[], Any]) -> list[str]:
    """The step modules the router's own code calls into, in order (consecutive calls collapsed)."""
    seen: list[str] = []

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event != "call" or frame.f_back is None or frame.f_back.f_code.co_filename != ROUTER_FILE:
            return
        step = _step_of(frame)
        if step is not None and (not seen or seen[-1] != step):
            seen.append(step)

    sys.setprofile(profile)
    try:
        await call()
    finally:
        sys.setprofile(None)
    return seen


async def test_a_route_enters_each_step_once_in_order(tmp_path: Path) -> None:
    parts = build(tmp_path)
    steps = await _steps_entered(lambda: parts.router.route(request(), None))
    assert steps == ["request", "decision", "selection", "provider_calls", "validators", "accounting"]


async def test_a_stream_enters_each_step_once_in_order(tmp_path: Path) -> None:
    parts = build(tmp_path)

    async def stream() -> None:
        async for _ in parts.router.route_stream(request(), None):
            pass

    assert await _steps_entered(stream) == [
        "request",
        "decision",
        "selection",
        "provider_calls",
        "accounting",
    ]


async def test_a_rejected_answer_escalates_one_tier_up_and_every_attempt_is_recorded(tmp_path: Path) -> None:
    parts = build(tmp_path)
    parts.provider.scripts = [Script(content="")]  # empty: the validators reject it
    response = await parts.router.route(request(), None)
    first, second = response.attempts
    assert first.outcome == common_pb2.ATTEMPT_OUTCOME_ESCALATED and first.error == "empty_output"
    assert second.outcome == common_pb2.ATTEMPT_OUTCOME_OK and second.tier > first.tier
    assert response.tier == second.tier and response.content == "fine answer"
    assert [r.attempt for r in parts.sink.records] == [1, 2]
    assert [r.final for r in parts.sink.records] == [False, True]


async def test_a_failed_candidate_gives_way_to_the_next_of_its_tier(tmp_path: Path) -> None:
    parts = build(tmp_path, retries_per_model=0)
    parts.provider.scripts = [Script(error=bad_request())]
    response = await parts.router.route(request(), None)
    first, second = response.attempts
    assert first.outcome == common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR and first.error.startswith(
        "BadRequestError"
    )
    assert second.tier == first.tier and second.model != first.model
    assert len(parts.sink.records) == 2


async def test_when_every_candidate_fails_the_attempts_are_still_recorded(tmp_path: Path) -> None:
    parts = build(tmp_path, retries_per_model=0, cooldown_after_failures=100)
    parts.provider.scripts = [Script(error=server_error()) for _ in range(50)]
    with pytest.raises(Unavailable) as caught:
        await parts.router.route(request(), None)
    assert caught.value.reason == "ALL_PROVIDERS_FAILED"
    assert len(parts.sink.records) == len(parts.provider.calls) > 1
    assert all(r.outcome == common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR for r in parts.sink.records)


async def test_the_response_carries_the_routers_classification_and_the_deprecated_copy(
    tmp_path: Path,
) -> None:
    parts = build(tmp_path, score=0.9)
    response = await parts.router.route(request(), None)
    decision = response.decision
    assert decision.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL and decision.score == pytest.approx(
        0.9
    )
    assert decision.tier == parts.policy.tier_for(0.9, "", common_pb2.CATEGORY_CHAT)
    assert response.classification.SerializeToString() == decision.SerializeToString()
