"""Route end to end in process: real classifier server, real simulator over HTTP, real LiteLLM calls."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from service_kit.policy import load_policy
from service_kit.pricing import PriceBook
from tests.doubles import RecordingSink
from tests.rich_status import details
from tests.router.conftest import RouterHarness
from tests.waiting import eventually

SPAM_CHECK = "Is this message spam? Answer yes or no: 'You won a free cruise, click here'"
HARD = (
    "Prove step by step that there are infinitely many primes, then derive an upper bound on the n-th prime, "
    "analyze the complexity of the sieve of Eratosthenes and explain the trade-offs of a segmented sieve."
)


def request(text: str, **options: object) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=text)],
        caller="tests",
        options=router_pb2.RouteOptions(**options),  # type: ignore[arg-type]
    )


async def test_routes_a_simple_prompt_to_the_cheapest_simple_model_and_prices_it(
    router: RouterHarness,
) -> None:
    response = await router.stub.Route(request(SPAM_CHECK))

    assert response.tier == common_pb2.TIER_SIMPLE
    assert response.decision.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    assert response.simulated and response.content.startswith("[simulated")
    # The chosen model is the cheapest eligible candidate the response explains.
    eligible = [c for c in response.candidates if not c.skipped_reason]
    assert response.model == min(eligible, key=lambda c: c.estimated_cost_usd).model
    # Costs are the price map's, for the tokens the provider reported.
    prices = PriceBook.from_litellm()
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    expected = prices.cost(
        response.model, usage.input_tokens, usage.output_tokens, 0, usage.reasoning_tokens
    ).usd
    assert math.isclose(usage.cost_usd, expected, rel_tol=1e-9)
    # The baseline (configured without reasoning) is priced for the input and the visible output only.
    baseline = load_policy(router.settings.policy_path).baseline_model
    visible = usage.output_tokens - usage.reasoning_tokens
    assert math.isclose(
        usage.baseline_cost_usd, prices.cost(baseline, usage.input_tokens, visible).usd, rel_tol=1e-9
    )
    assert usage.baseline_reasoning_cost_usd == 0
    assert usage.baseline_cost_usd > usage.cost_usd > 0
    assert response.timings.total_ms >= response.timings.provider_ms > 0
    # One ledger record, the answering attempt, with the same money.
    [record] = router.sink.records
    assert record.request_id == response.request_id and record.attempt == 1 and record.final
    assert record.usage.cost_usd == usage.cost_usd and record.caller == "tests"
    assert record.price_map_version == response.price_map_version != ""


async def test_a_hard_prompt_goes_to_a_stronger_tier(router: RouterHarness) -> None:
    response = await router.stub.Route(request(HARD))
    assert response.tier in (common_pb2.TIER_COMPLEX, common_pb2.TIER_REASONING)
    assert response.decision.score > 0.5


async def test_falls_back_to_the_next_candidate_when_the_cheapest_fails(router: RouterHarness) -> None:
    first = (await router.stub.Route(request(SPAM_CHECK))).model
    await router.fault(model=first, fault="status", status=500)

    response = await router.stub.Route(request(SPAM_CHECK))

    assert response.model != first
    failed = [a for a in response.attempts if a.model == first]
    # One retry on a transient error, then the next candidate.
    assert len(failed) == router.settings.retries_per_model + 1
    assert all(a.outcome == common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR for a in failed)
    assert response.attempts[-1].outcome == common_pb2.ATTEMPT_OUTCOME_OK
    records = [r for r in router.sink.records if r.request_id == response.request_id]
    assert [r.attempt for r in records] == list(range(1, len(response.attempts) + 1))
    assert [r.final for r in records].count(True) == 1


async def test_escalates_one_tier_when_the_output_is_rejected(router: RouterHarness) -> None:
    first = (await router.stub.Route(request(SPAM_CHECK))).model
    await router.fault(model="*", fault="empty", count=1)

    response = await router.stub.Route(request(SPAM_CHECK))

    assert response.attempts[0].model == first
    assert response.attempts[0].outcome == common_pb2.ATTEMPT_OUTCOME_ESCALATED
    assert response.attempts[0].error == "empty_output"
    assert response.tier == common_pb2.TIER_MODERATE and response.content
    # The rejected attempt is charged too.
    assert response.usage.cost_usd == pytest.approx(sum(a.usage.cost_usd for a in response.attempts))


async def test_classifier_down_degrades_to_the_default_tier(
    simulator_url: str, tmp_path: Path, recording_sink: RecordingSink
) -> None:
    from router_svc.server import create_server
    from tests.router.conftest import router_settings

    running = await create_server(
        router_settings("127.0.0.1:1", simulator_url, tmp_path, classify_timeout_seconds=0.2),
        usage_sink=recording_sink,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            from llmroute.router.v1 import router_pb2_grpc

            response = await router_pb2_grpc.RouterServiceStub(channel).Route(request(SPAM_CHECK))
    finally:
        await running.stop(0)
    assert response.decision.source == common_pb2.CLASSIFIER_SOURCE_DEFAULT
    assert response.tier == common_pb2.TIER_MODERATE
    assert any(w.startswith("classifier_unavailable") for w in response.warnings)


async def test_max_cost_too_low_is_resource_exhausted_with_details(router: RouterHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.stub.Route(request(SPAM_CHECK, max_cost_usd=1e-12))
    found = details(raised.value)
    assert found.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert found.reason == "MAX_COST_EXCEEDED"
    assert float(found.metadata["cheapest_estimate_usd"]) > 1e-12
    assert router.sink.records == []


async def test_force_model_and_force_tier(router: RouterHarness) -> None:
    forced = await router.stub.Route(request(SPAM_CHECK, force_model="gpt-4.1"))
    assert forced.model == "gpt-4.1"
    assert forced.decision.source == common_pb2.CLASSIFIER_SOURCE_OVERRIDE

    tiered = await router.stub.Route(request(SPAM_CHECK, force_tier=common_pb2.TIER_COMPLEX))
    assert tiered.tier == common_pb2.TIER_COMPLEX


async def test_a_model_without_a_price_is_flagged_not_free(
    classifier_address: str, simulator_url: str, tmp_path: Path, recording_sink: RecordingSink
) -> None:
    import yaml

    from llmroute.router.v1 import router_pb2_grpc
    from router_svc.server import create_server
    from tests.router.conftest import heuristic_policy, router_settings

    policy = yaml.safe_load(heuristic_policy(tmp_path).read_text())
    policy["tiers"]["simple"] = [{"model": "acme/unpriced-model-1"}]
    path = tmp_path / "unpriced.yaml"
    path.write_text(yaml.safe_dump(policy))
    running = await create_server(
        router_settings(classifier_address, simulator_url, tmp_path, policy_path=path),
        usage_sink=recording_sink,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            response = await stub.Route(request(SPAM_CHECK))  # routed to it by the policy: called, flagged
            assert response.model == "acme/unpriced-model-1" and not response.attempts[0].price_known
            assert "price_unknown:acme/unpriced-model-1" in response.warnings
            assert not recording_sink.records[-1].price_known
            # Forced, it is refused: a caller may force only a model whose cost is known.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Route(request(SPAM_CHECK, force_model="acme/unpriced-model-1"))
            found = details(raised.value)
            assert (
                found.code == grpc.StatusCode.FAILED_PRECONDITION
                and found.metadata["skipped_reason"] == "unpriced"
            )
    finally:
        await running.stop(0)


async def test_only_the_policys_models_may_be_forced(router: RouterHarness) -> None:
    before = (await router.simulator_stats())["totals"]["requests"]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.stub.Route(request(SPAM_CHECK, force_model="openai/gpt-4-32k-expensive"))
    found = details(raised.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and found.reason == "FORCED_MODEL_NOT_ALLOWED"
    assert "options.force_model" in found.violations
    assert (await router.simulator_stats())["totals"]["requests"] == before


async def test_a_provider_error_reaches_nobody_as_text(router: RouterHarness) -> None:
    await router.fault(
        model="*", fault="status", status=400, message="secret sk-live-123 and the prompt text"
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.stub.Route(request(SPAM_CHECK))
    found = details(raised.value)
    assert (found.code, found.reason) == (grpc.StatusCode.UNAVAILABLE, "ALL_PROVIDERS_FAILED")
    assert "sk-live" not in (raised.value.details() or "") and "sk-live" not in str(found.metadata)
    assert router.sink.records and all(
        "sk-live" not in r.error and "(400)" in r.error for r in router.sink.records
    )


async def test_same_request_id_is_routed_once(router: RouterHarness) -> None:
    req = request(SPAM_CHECK)
    req.request_id = "order-42"
    first = await router.stub.Route(req)
    second = await router.stub.Route(req)
    assert not first.replayed and second.replayed
    second.replayed = False
    assert first == second  # the first run's answer and accounting, byte for byte
    assert [(r.request_id, r.run_id) for r in router.sink.records] == [("order-42", first.run_id)]


async def test_route_stream_sends_deltas_then_the_summary(router: RouterHarness) -> None:
    stream_request = router_pb2.RouteStreamRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Write a short poem about the sea.")],
        caller="tests",
    )
    events = [event async for event in router.stub.RouteStream(stream_request)]
    deltas = [e.delta.content for e in events if e.WhichOneof("event") == "delta"]
    summary = events[-1].summary
    assert len(deltas) > 1 and events[-1].WhichOneof("event") == "summary"
    assert "".join(deltas) == summary.content
    assert summary.usage.output_tokens > 0 and summary.usage.cost_usd > 0
    [record] = router.sink.records
    assert record.request_id == summary.request_id and record.final
    assert (
        record.usage.cost_usd == summary.usage.cost_usd
        and record.usage.output_tokens == summary.usage.output_tokens
    )


async def test_route_stream_falls_back_before_the_first_delta(router: RouterHarness) -> None:
    await router.fault(model="*", fault="status", status=503, count=1)
    stream_request = router_pb2.RouteStreamRequest(
        messages=[common_pb2.ChatMessage(role="user", content=SPAM_CHECK)], caller="tests"
    )
    events = [event async for event in router.stub.RouteStream(stream_request)]
    summary = events[-1].summary
    assert summary.attempts[0].outcome == common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR
    assert summary.attempts[-1].outcome == common_pb2.ATTEMPT_OUTCOME_OK and summary.content


@pytest.mark.parametrize(
    ("messages", "options", "field"),
    [
        ([], {}, "messages"),
        ([("user", "   ")], {}, "messages[0].content"),
        ([("wizard", "hi")], {}, "messages[0].role"),
        ([("user", "hi")], {"max_output_tokens": -5}, "options.max_output_tokens"),
        ([("user", "hi")], {"temperature": float("nan")}, "options.temperature"),
        ([("user", "hi")], {"max_cost_usd": -1.0}, "options.max_cost_usd"),
        ([("user", "hi")], {"json_schema": "{not json"}, "options.json_schema"),
        ([("user", "x" * 400_001)], {}, "messages"),
    ],
)
async def test_bad_input_is_invalid_argument_with_field_violations(
    router: RouterHarness, messages: list[tuple[str, str]], options: dict[str, Any], field: str
) -> None:
    bad = router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages],
        options=router_pb2.RouteOptions(**options),
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.stub.Route(bad)
    found = details(raised.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in found.violations, found.violations
    # The service stays healthy: the next good request is served.
    assert (await router.stub.Route(request(SPAM_CHECK))).content


async def test_warm_up_calls_the_cheapest_model_of_each_tier_and_accounts_for_it(
    classifier_address: str, simulator_url: str, tmp_path: Path, recording_sink: RecordingSink
) -> None:
    from router_svc.server import create_server
    from tests.router.conftest import router_settings

    running = await create_server(
        router_settings(classifier_address, simulator_url, tmp_path, warm_up=True), usage_sink=recording_sink
    )
    await running.stop(0)
    warmed = {r.model for r in recording_sink.records}
    policy = load_policy(router_settings(classifier_address, simulator_url, tmp_path).policy_path)
    assert len(warmed) >= 3 and all(r.caller == "llmroute-warmup" for r in recording_sink.records)
    assert all(r.usage.output_tokens <= 1 and r.usage.cost_usd > 0 for r in recording_sink.records)
    assert warmed <= {spec.model for specs in policy.tiers.values() for spec in specs}


async def test_the_clients_deadline_cancels_the_provider_call_and_the_attempt_is_recorded(
    router: RouterHarness,
) -> None:
    # A first call pays LiteLLM's lazy imports, which could eat the whole deadline below.
    await router.stub.Route(request(SPAM_CHECK))
    router.sink.records.clear()
    await router.fault(model="*", fault="delay", delay_ms=5000)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.stub.Route(request(SPAM_CHECK), timeout=1.0)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    async def noticed() -> dict[str, Any] | None:  # the server side notices the cancellation a moment later
        stats: dict[str, Any] = await router.simulator_stats()
        return stats if stats["totals"]["cancelled"] and router.sink.records else None

    stats = await eventually(noticed, "the cancelled call at the provider and in the records")
    assert stats["totals"]["cancelled"] == 1 and stats["in_flight"] == 0
    [record] = router.sink.records
    # The router's own deadline timer and the client's cancellation race: either ends the attempt.
    assert record.outcome in (common_pb2.ATTEMPT_OUTCOME_CANCELLED, common_pb2.ATTEMPT_OUTCOME_TIMEOUT)
    assert record.usage.input_tokens > 0 and record.usage.cost_usd > 0  # the prompt was sent: it is charged


async def test_a_model_in_cooldown_is_skipped_until_its_probe_succeeds(router: RouterHarness) -> None:
    first = (await router.stub.Route(request(SPAM_CHECK))).model
    await router.fault(model=first, fault="status", status=500, count=router.settings.cooldown_after_failures)
    # Two retries' worth of failures per request: after enough of them the model is in cooldown.
    for _ in range(router.settings.cooldown_after_failures):
        response = await router.stub.Route(request(SPAM_CHECK))
        if any(c.model == first and c.skipped_reason == "cooldown" for c in response.candidates):
            break
    assert any(c.model == first and c.skipped_reason == "cooldown" for c in response.candidates)
    assert response.model != first and all(a.model != first for a in response.attempts)


async def test_a_retry_after_a_failure_is_recorded_without_colliding_with_the_failed_run(
    router: RouterHarness,
) -> None:
    await router.fault(model="*", fault="status", status=503, retry_after=0)
    retried = request(SPAM_CHECK)
    retried.request_id = "invoice-7"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.stub.Route(retried)
    found = details(raised.value)
    assert (found.code, found.reason) == (grpc.StatusCode.UNAVAILABLE, "ALL_PROVIDERS_FAILED")
    failed_keys = [(r.request_id, r.attempt) for r in router.sink.records]
    async with httpx.AsyncClient() as client:
        await client.delete(router.simulator_url.removesuffix("/v1") + "/_sim/faults")

    response = await router.stub.Route(retried)

    assert response.request_id == "invoice-7" and not response.replayed
    new = router.sink.records[len(failed_keys) :]
    assert {r.request_id for r in router.sink.records} == {"invoice-7"}
    # The retry is a run of its own: its records cannot collide with the failed run's.
    failed_runs = {r.run_id for r in router.sink.records[: len(failed_keys)]}
    assert len(failed_runs) == 1 and {r.run_id for r in new} == {response.run_id} != failed_runs
    keys = [(r.caller, r.request_id, r.run_id, r.attempt) for r in router.sink.records]
    assert len(keys) == len(set(keys))


async def test_a_refused_request_still_accounts_for_a_paid_classification(
    simulator_url: str, tmp_path: Path, recording_sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydantic_ai.models

    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", True)  # the LLM is the local simulator
    from classifier_svc.server import create_server as create_classifier
    from classifier_svc.settings import ClassifierSettings
    from llmroute.router.v1 import router_pb2_grpc
    from router_svc.server import create_server
    from tests.router.conftest import router_settings

    classifier = await create_classifier(
        ClassifierSettings(
            port=0,
            strategy="llm",
            llm_model="openai:claude-haiku-4-5",
            llm_base_url=simulator_url,
            cache_enabled=False,
        )
    )
    router = await create_server(
        router_settings(f"127.0.0.1:{classifier.port}", simulator_url, tmp_path), usage_sink=recording_sink
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await router_pb2_grpc.RouterServiceStub(channel).Route(
                    request(SPAM_CHECK, max_cost_usd=1e-12)
                )
    finally:
        await router.stop(0)
        await classifier.stop(0)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    [record] = recording_sink.records
    assert record.outcome == common_pb2.ATTEMPT_OUTCOME_NOT_ROUTED and record.usage.cost_usd == 0
    assert record.classifier_cost_usd > 0 and record.classifier_source == common_pb2.CLASSIFIER_SOURCE_LLM


async def test_a_simulated_answer_is_recorded_as_simulated(router: RouterHarness) -> None:
    reply = await router.stub.Route(request(SPAM_CHECK))
    assert reply.simulated
    [record] = [r for r in router.sink.records if r.request_id == reply.request_id]
    assert record.simulated and record.usage.cost_usd == reply.usage.cost_usd > 0


@pytest.mark.parametrize(
    ("host", "mode", "real", "error_logged"),
    [
        ("127.0.0.1", "auto", False, False),  # a developer's machine with no key: the simulator, said quietly
        ("0.0.0.0", "auto", False, True),  # a deployment with no key: said loudly
        ("0.0.0.0", "always", False, False),  # the simulator on purpose
        ("0.0.0.0", "never", True, False),  # real providers only
    ],
)
async def test_who_answers_is_visible_in_health_and_an_accidental_simulator_is_an_error(
    simulator_url: str,
    tmp_path: Path,
    recording_sink: RecordingSink,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    mode: str,
    real: bool,
    error_logged: bool,
) -> None:
    import structlog
    from grpc_health.v1 import health_pb2

    from router_svc.server import PROVIDERS_HEALTH, create_server
    from service_kit import health_rpc
    from service_kit.providers import PROVIDER_KEYS
    from tests.router.conftest import router_settings

    for variable in PROVIDER_KEYS.values():
        monkeypatch.delenv(variable, raising=False)
    settings = router_settings(
        "127.0.0.1:1", simulator_url, tmp_path, host=host, allow_open=True, simulator=mode
    )
    with structlog.testing.capture_logs() as logs:
        running = await create_server(settings, usage_sink=recording_sink)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            reply = await health_rpc.check_async(channel)(
                health_pb2.HealthCheckRequest(service=PROVIDERS_HEALTH)
            )
    finally:
        await running.stop(0)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert (reply.status == serving) is real
    errors = [e for e in logs if e["event"] == "simulator_answers_every_call"]
    assert bool(errors) is error_logged and all(e["log_level"] == "error" for e in errors)
