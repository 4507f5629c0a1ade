"""router_svc/provider_calls.py: one chosen model called, with a fake acompletion."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmroute.common.v1 import common_pb2
from router_svc.provider_calls import Outcome
from router_svc.provider_errors import failure_of
from router_svc.request import pin
from service_kit.errors import Unavailable
from tests.router.fake_provider import Script, bad_request, rate_limited, server_error, timed_out
from tests.router.route_parts import PRICES, Parts, build, request
from tests.waiting import eventually


def _first_choice(parts: Parts):  # type: ignore[no-untyped-def]
    pinned = pin(request(), parts.policy, PRICES)
    return pinned, parts.router.plan(pinned, common_pb2.TIER_SIMPLE, common_pb2.CATEGORY_CHAT).choices(
        common_pb2.TIER_SIMPLE
    )[0]


@pytest.mark.parametrize(
    ("error", "outcome", "transient", "processed"),
    [
        (rate_limited(), common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR, True, False),
        (server_error(), common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR, True, False),
        (timed_out(), common_pb2.ATTEMPT_OUTCOME_TIMEOUT, True, True),
        (TimeoutError(), common_pb2.ATTEMPT_OUTCOME_TIMEOUT, True, True),
        (bad_request(), common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR, False, False),
        (ValueError("ours"), common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR, False, False),
    ],
)
def test_every_provider_error_is_classified_in_one_place(
    error: Exception, outcome: int, transient: bool, processed: bool
) -> None:
    failure = failure_of(error)
    assert (failure.outcome, failure.transient, failure.prompt_processed) == (outcome, transient, processed)
    assert "slow down" not in failure.error and "boom" not in failure.error  # never the provider's text


async def test_a_transient_error_is_retried_and_charged_once_answered(tmp_path: Path) -> None:
    parts = build(tmp_path, retries_per_model=1)
    pinned, choice = _first_choice(parts)
    parts.provider.scripts = [Script(error=rate_limited()), Script(prompt_tokens=100, completion_tokens=50)]
    outcomes: list[Outcome] = []
    answer = await parts.router._caller.call(pinned, choice, None, outcomes)
    assert answer is outcomes[1] and len(parts.provider.calls) == 2
    assert outcomes[0].attempt.outcome == common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR
    usage = answer.attempt.usage
    assert (usage.input_tokens, usage.output_tokens) == (100, 50)
    assert usage.cost_usd == pytest.approx(PRICES.cost(choice.spec.model, 100, 50).usd)


async def test_a_call_that_never_reached_the_provider_is_not_an_attempt(tmp_path: Path) -> None:
    parts = build(tmp_path, retries_per_model=0)
    pinned, choice = _first_choice(parts)
    parts.provider.scripts = [Script(error=bad_request(), before_send=True)]
    outcomes: list[Outcome] = []
    assert await parts.router._caller.call(pinned, choice, None, outcomes) is None
    assert outcomes == []


async def test_a_cancelled_call_is_charged_for_its_prompt(tmp_path: Path) -> None:
    parts = build(tmp_path)
    pinned, choice = _first_choice(parts)
    parts.provider.scripts = [Script(delay=30)]
    outcomes: list[Outcome] = []
    calling = asyncio.create_task(parts.router._caller.call(pinned, choice, None, outcomes))
    await parts.provider.sent.wait()
    calling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await calling
    (cancelled,) = outcomes
    assert cancelled.attempt.outcome == common_pb2.ATTEMPT_OUTCOME_CANCELLED
    assert cancelled.attempt.usage.input_tokens > 0 and cancelled.attempt.usage.cost_usd > 0


async def test_a_stream_cut_after_its_first_delta_is_charged_and_cannot_be_retried(tmp_path: Path) -> None:
    parts = build(tmp_path)
    pinned, choice = _first_choice(parts)
    parts.provider.scripts = [Script(content="one two three four", cut_after=2, error=server_error())]
    outcomes: list[Outcome] = []
    received = []
    with pytest.raises(Unavailable) as caught:
        async for delta in parts.router._caller.stream(pinned, choice, None, outcomes):
            received.append(delta)
    assert caught.value.reason == "PROVIDER_STREAM_BROKEN" and received == ["one ", "two "]
    (cut,) = outcomes
    assert cut.attempt.outcome == common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR
    assert cut.attempt.usage.output_tokens == 2 and cut.attempt.usage.cost_usd > 0


async def test_a_stream_that_fails_before_its_first_delta_yields_nothing_and_is_not_billed(
    tmp_path: Path,
) -> None:
    parts = build(tmp_path)
    pinned, choice = _first_choice(parts)
    parts.provider.scripts = [Script(content="one two", cut_after=0, error=server_error())]
    outcomes: list[Outcome] = []
    assert [d async for d in parts.router._caller.stream(pinned, choice, None, outcomes)] == []
    assert outcomes[0].attempt.usage.cost_usd == 0


async def test_the_callers_options_reach_the_provider(tmp_path: Path) -> None:
    parts = build(tmp_path)
    await parts.router.route(request(max_output_tokens=33, temperature=0.2), None)
    (sent,) = parts.provider.calls
    assert (sent["max_tokens"], sent["temperature"], sent["num_retries"]) == (33, 0.2, 0)
    assert sent["messages"] == [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.parametrize(
    ("header", "value", "seconds"),
    [
        ("retry-after", "2", 2.0),
        ("retry-after", "0.5", 0.5),
        ("retry-after-ms", "250", 0.25),
        ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date passed: now
        ("retry-after", "86400", 300.0),  # capped: a broken header does not bench a model for a day
        ("retry-after", "soon", None),
        ("retry-after", "-3", None),
    ],
)
def test_a_providers_retry_after_is_read(header: str, value: str, seconds: float | None) -> None:
    assert failure_of(rate_limited(value, header)).retry_after == seconds
    assert failure_of(rate_limited()).retry_after is None


async def test_a_short_retry_after_is_waited_out_and_no_request_calls_the_model_meanwhile(
    tmp_path: Path,
) -> None:
    parts = build(tmp_path, retries_per_model=1, max_retry_after_wait_seconds=1.0)
    pinned, choice = _first_choice(parts)
    parts.provider.scripts = [Script(error=rate_limited("0.3")), Script()]
    outcomes: list[Outcome] = []
    calling = asyncio.create_task(parts.router._caller.call(pinned, choice, None, outcomes))
    await eventually(
        lambda: len(outcomes) == 1 and parts.cooldowns.in_cooldown(choice.spec.model), "the 429 back"
    )
    # Meanwhile another request finds the model held: it goes to its next candidate.
    assert not parts.cooldowns.available(choice.spec.model)
    started = asyncio.get_running_loop().time()
    answer = await calling
    assert answer is outcomes[1] and answer.attempt.outcome == common_pb2.ATTEMPT_OUTCOME_OK
    assert asyncio.get_running_loop().time() - started >= 0.2  # it waited, not the 1 ms backoff
    assert not parts.cooldowns.in_cooldown(choice.spec.model)  # answered: closed again


async def test_a_long_retry_after_sends_the_request_to_its_next_candidate_at_once(tmp_path: Path) -> None:
    parts = build(tmp_path, retries_per_model=1, max_retry_after_wait_seconds=1.0)
    pinned, choice = _first_choice(parts)
    parts.provider.scripts = [Script(error=rate_limited("30"))]
    outcomes: list[Outcome] = []
    assert await parts.router._caller.call(pinned, choice, None, outcomes) is None
    assert len(parts.provider.calls) == 1  # not retried on the same model
    assert parts.cooldowns.in_cooldown(choice.spec.model)
    # The whole route answers from another model.
    response = await parts.router.route(request(), None)
    assert [a.model for a in response.attempts] and choice.spec.model not in [
        a.model for a in response.attempts
    ]
    assert response.attempts[-1].outcome == common_pb2.ATTEMPT_OUTCOME_OK
