"""Every provider failure the simulator can inject, and every validator, through Route and RouteStream."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from tests.rich_status import details
from tests.router.conftest import RouterHarness, StartRouter

PROMPT = "Is this message spam? Answer yes or no: 'You won a free cruise, click here'"


def route_request(**options: object) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=PROMPT)],
        options=router_pb2.RouteOptions(**options),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("fault", "outcome", "retried"),
    [
        (
            {"fault": "status", "status": 429, "retry_after": 0},
            common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR,
            True,
        ),
        ({"fault": "status", "status": 500}, common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR, True),
        ({"fault": "status", "status": 400}, common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR, False),
        ({"fault": "timeout", "hang_seconds": 5}, common_pb2.ATTEMPT_OUTCOME_TIMEOUT, True),
        ({"fault": "malformed"}, common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR, None),
    ],
)
async def test_provider_failures_fall_back_to_the_next_candidate(
    start_router: StartRouter,
    fault: dict[str, Any],
    outcome: common_pb2.AttemptOutcome.ValueType,
    retried: bool | None,
) -> None:
    # Against a hanging provider, the router's own per-call timeout ends each try.
    router = await start_router(**({"provider_timeout_seconds": 1.0} if fault["fault"] == "timeout" else {}))
    cheapest = (await router.stub.Route(route_request())).attempts[0].model  # the one tried first
    await router.fault(model=cheapest, **fault)

    response = await router.stub.Route(route_request())

    failed = [a for a in response.attempts if a.model == cheapest]
    assert failed and all(a.outcome == outcome and a.error for a in failed)
    if retried is not None:
        assert len(failed) == (1 + router.settings.retries_per_model if retried else 1)
    assert response.model != cheapest and response.attempts[-1].outcome == common_pb2.ATTEMPT_OUTCOME_OK
    assert response.tier == common_pb2.TIER_SIMPLE  # a sibling of the same tier answered
    ledger_outcomes = [r.outcome for r in router.sink.records if r.request_id == response.request_id]
    assert ledger_outcomes == [a.outcome for a in response.attempts]


async def test_every_candidate_failing_is_unavailable_and_still_recorded(router: RouterHarness) -> None:
    await router.fault(model="*", fault="status", status=503, retry_after=0)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.stub.Route(route_request())
    found = details(raised.value)
    assert found.code == grpc.StatusCode.UNAVAILABLE and found.reason == "ALL_PROVIDERS_FAILED"
    assert int(found.metadata["attempts"]) == len(router.sink.records) > 4
    assert all(r.outcome == common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR for r in router.sink.records)


@pytest.mark.parametrize(
    ("fault", "options", "reason"),
    [
        ("empty", {}, "empty_output"),
        ("length", {}, "truncated_output"),
        ("refusal", {}, "refusal"),
        ("bad_json", {"json_output": True}, "invalid_json"),
    ],
)
async def test_each_validator_escalates_one_tier(
    router: RouterHarness, fault: str, options: dict[str, Any], reason: str
) -> None:
    await router.fault(model="*", fault=fault, count=1)
    response = await router.stub.Route(route_request(**options))
    first, last = response.attempts[0], response.attempts[-1]
    assert first.outcome == common_pb2.ATTEMPT_OUTCOME_ESCALATED and first.error.startswith(reason)
    assert first.tier == common_pb2.TIER_SIMPLE and last.tier == common_pb2.TIER_MODERATE
    assert last.outcome == common_pb2.ATTEMPT_OUTCOME_OK and response.tier == common_pb2.TIER_MODERATE
    records = [r for r in router.sink.records if r.request_id == response.request_id]
    assert records[0].outcome == common_pb2.ATTEMPT_OUTCOME_ESCALATED and records[0].usage.cost_usd > 0


async def test_the_json_schema_is_sent_to_the_provider_and_checked(router: RouterHarness) -> None:
    import json

    schema = '{"type": "object", "required": ["spam"], "properties": {"spam": {"type": "boolean"}}}'
    response = await router.stub.Route(route_request(json_schema=schema))
    assert [a.outcome for a in response.attempts] == [common_pb2.ATTEMPT_OUTCOME_OK]
    assert isinstance(json.loads(response.content)["spam"], bool)  # the simulator honoured response_format


async def test_a_rejected_answer_without_escalation_is_returned_after_one_attempt(
    start_router: StartRouter,
) -> None:
    router = await start_router(escalate_on_validation_failure=False)
    await router.fault(model="*", fault="refusal", count=1)
    response = await router.stub.Route(route_request())
    assert [a.outcome for a in response.attempts] == [common_pb2.ATTEMPT_OUTCOME_VALIDATION_FAILED]
    assert response.warnings == ["output_rejected:refusal"]


async def test_a_provider_rejecting_the_request_does_not_cool_the_model_down(router: RouterHarness) -> None:
    cheapest = (await router.stub.Route(route_request())).model
    await router.fault(
        model=cheapest, fault="status", status=400, count=router.settings.cooldown_after_failures + 1
    )
    for _ in range(router.settings.cooldown_after_failures + 1):
        response = await router.stub.Route(route_request())
        assert response.attempts[0].model == cheapest  # still tried first every time
    assert not any(c.skipped_reason == "cooldown" for c in response.candidates)


async def test_a_stream_cut_after_the_first_delta_is_unavailable(router: RouterHarness) -> None:
    await router.fault(model="*", fault="cut_stream", after_chunks=2, count=1)
    stream = router.stub.RouteStream(
        router_pb2.RouteStreamRequest(messages=[common_pb2.ChatMessage(role="user", content=PROMPT)])
    )
    deltas = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for event in stream:
            deltas.append(event.delta.content)
    found = details(raised.value)
    assert (found.code, found.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_STREAM_BROKEN")
    assert len(deltas) == 2
    [record] = router.sink.records
    assert record.outcome == common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR and record.usage.output_tokens > 0


async def test_a_stream_cut_before_the_first_delta_falls_back(router: RouterHarness) -> None:
    await router.fault(model="*", fault="cut_stream", after_chunks=0, count=1)
    events = [
        e
        async for e in router.stub.RouteStream(
            router_pb2.RouteStreamRequest(messages=[common_pb2.ChatMessage(role="user", content=PROMPT)])
        )
    ]
    summary = events[-1].summary
    assert [a.outcome for a in summary.attempts] == [
        common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR,
        common_pb2.ATTEMPT_OUTCOME_OK,
    ]
    assert "".join(e.delta.content for e in events[:-1]) == summary.content


async def test_buffered_stream_validates_and_escalates(router: RouterHarness) -> None:
    await router.fault(model="*", fault="refusal", count=1)
    events = [
        e
        async for e in router.stub.RouteStream(
            router_pb2.RouteStreamRequest(
                messages=[common_pb2.ChatMessage(role="user", content=PROMPT)],
                options=router_pb2.RouteOptions(buffered_stream=True),
            )
        )
    ]
    summary = events[-1].summary
    assert summary.attempts[0].outcome == common_pb2.ATTEMPT_OUTCOME_ESCALATED
    assert events[0].delta.content == summary.content and "sorry" not in summary.content.lower()
