"""The Classify RPC: verdicts, health, reflection, bad input."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from classifier_svc.server import create_server
from classifier_svc.settings import ClassifierSettings
from llmroute.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmroute.common.v1 import common_pb2
from service_kit import health_rpc
from service_kit.policy import DEFAULT_POLICY_PATH, Thresholds
from service_kit.policy_file import rewrite
from service_kit.policy_source import PolicySource
from tests.rich_status import details
from tests.waiting import eventually


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    running = await create_server(ClassifierSettings(port=0, strategy="heuristic", max_prompt_chars=1000))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel
    await running.stop(0)


def classify_request(*pairs: tuple[str, str]) -> classifier_pb2.ClassifyRequest:
    return classifier_pb2.ClassifyRequest(
        messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in pairs]
    )


async def test_classify_returns_a_scored_tier(channel: grpc.aio.Channel) -> None:
    stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
    easy = await stub.Classify(classify_request(("user", "Is this spam? 'WIN A FREE PHONE'")))
    hard = await stub.Classify(
        classify_request(("user", "Prove step by step that sqrt(2) is irrational and derive a general rule."))
    )
    assert easy.tier == common_pb2.TIER_SIMPLE and easy.category == common_pb2.CATEGORY_CLASSIFICATION
    assert 0 <= easy.score < hard.score <= 1
    assert hard.tier > easy.tier
    assert easy.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL and easy.version
    # The rationale never echoes the prompt.
    assert "FREE PHONE" not in easy.rationale


async def test_health_is_serving_and_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    health = await health_rpc.check_async(channel)(
        health_pb2.HealthCheckRequest(service="llmroute.classifier.v1.ClassifierService")
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    # types-grpcio-reflection types the stub for blocking channels only (it takes asyncio ones alike).
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
    replies = [
        r
        # and leaves its methods untyped (Incomplete).
        async for r in reflection.ServerReflectionInfo(  # type: ignore[operator]
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    ]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"llmroute.classifier.v1.ClassifierService", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    ("pairs", "field"),
    [
        ((), "messages"),
        ((("user", ""),), "messages[0].content"),
        ((("robot", "hi"),), "messages[0].role"),
        ((("user", "x" * 1001),), "messages"),
    ],
)
async def test_bad_input_is_invalid_argument(
    channel: grpc.aio.Channel, pairs: tuple[tuple[str, str], ...], field: str
) -> None:
    stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Classify(classify_request(*pairs))
    found = details(raised.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and field in found.violations
    assert found.reason == "INVALID_ARGUMENT"
    ok = await stub.Classify(classify_request(("user", "hello")))
    assert ok.tier != common_pb2.TIER_UNSPECIFIED


async def test_skip_cache_bypasses_the_lookup_but_stores_the_verdict() -> None:
    running = await create_server(ClassifierSettings(port=0, strategy="heuristic", cache_enabled=True))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            request = classify_request(("user", "Translate 'good morning' into Italian."))
            request.skip_cache = True
            first = await stub.Classify(request)
            again = await stub.Classify(request)
            request.skip_cache = False
            cached = await stub.Classify(request)
    finally:
        await running.stop(0)
    assert first.source == again.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    assert cached.source == common_pb2.CLASSIFIER_SOURCE_CACHE and cached.score == first.score


@pytest.mark.parametrize(
    ("settings", "strategy", "llm_model", "bound"),
    [
        ({"strategy": "heuristic"}, "heuristic", "", 0.0),
        ({"strategy": "cascade"}, "cascade", "", 0.6),  # no key, no base URL: no LLM
        (
            {"strategy": "cascade", "llm_base_url": "http://127.0.0.1:1/v1", "cascade_min_confidence": 0.7},
            "cascade",
            "anthropic:claude-haiku-4-5",
            0.7,
        ),
    ],
)
async def test_describe_says_whether_an_llm_stands_behind_the_local_model(
    settings: dict[str, Any], strategy: str, llm_model: str, bound: float
) -> None:
    running = await create_server(ClassifierSettings(port=0, cache_enabled=False, **settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            description = await stub.Describe(classifier_pb2.DescribeRequest())
    finally:
        await running.stop(0)
    assert (description.strategy, description.llm_model) == (strategy, llm_model)
    assert description.cascade_min_confidence == pytest.approx(bound if strategy == "cascade" else 0.0)


async def test_a_changed_policy_is_taken_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy ConfigMap updated in place (or the file edited, then SIGHUP): new thresholds, new tiers."""
    reloads: list[bool] = []  # each reload of the file (on SIGHUP or the poll), and whether it was taken
    reload = PolicySource.reload

    def recorded_reload(self: PolicySource) -> bool:
        reloads.append(reload(self))
        return reloads[-1]

    monkeypatch.setattr(PolicySource, "reload", recorded_reload)
    path = tmp_path / "policy.yaml"
    text = DEFAULT_POLICY_PATH.read_text()
    path.write_text(text)
    running = await create_server(ClassifierSettings(port=0, strategy="heuristic", policy_path=path))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            request = classify_request(("user", "Is this spam? 'WIN A FREE PHONE'"))

            async def tier() -> int:
                return (await stub.Classify(request)).tier

            async def reasoning() -> bool:
                return await tier() == common_pb2.TIER_REASONING

            assert await tier() == common_pb2.TIER_SIMPLE
            path.write_text(rewrite(text, Thresholds(moderate=0.0001, complex=0.0002, reasoning=0.0003)))
            os.kill(os.getpid(), signal.SIGHUP)  # without it, the file's poll finds it within 2 s
            await eventually(reasoning, "the new thresholds taken")
            path.write_text("tiers: [not a policy")  # a bad file is refused; the last good one stays
            os.kill(os.getpid(), signal.SIGHUP)
            await eventually(lambda: reloads[-1] is False, "the bad file read and refused")
            assert await tier() == common_pb2.TIER_REASONING
    finally:
        await running.stop(0)
