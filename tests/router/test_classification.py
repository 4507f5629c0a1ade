"""Where the router's verdicts come from: the local model in process, the classifier service, or both."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from difficulty import Conversation, Verdict
from llmroute.classifier.v1 import classifier_pb2
from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.classification import Classification, Classified, from_response
from router_svc.server import create_server as create_router
from tests.doubles import RecordingSink
from tests.router.conftest import router_settings

SURE, UNSURE = "a prompt the local model is sure of", "a prompt the local model is unsure of"


class LocalModel:
    """Confidence 0.9 or 0.5 by prompt; counts its calls."""

    name = "local"

    def __init__(self) -> None:
        self.calls = 0
        self.warmed_up = False

    async def warm_up(self) -> None:
        self.warmed_up = True

    async def classify(self, conversation: Conversation) -> Verdict:
        self.calls += 1
        confidence = 0.5 if conversation.last_user == UNSURE else 0.9
        return Verdict(score=0.2, confidence=confidence, version="local/1")


class ClassifierService:
    """Stands in for classifier_svc over gRPC: describes itself, answers from its LLM or fails."""

    def __init__(
        self, description: classifier_pb2.DescribeResponse | None, fail_with: grpc.StatusCode | None = None
    ):
        self.description = description
        self.fail_with = fail_with
        self.calls = 0

    async def classify(
        self, messages: Sequence[common_pb2.ChatMessage], request_id: str, timeout: float
    ) -> Classified:
        self.calls += 1
        if self.fail_with is not None:
            raise _rpc_error(self.fail_with)
        return from_response(
            classifier_pb2.ClassifyResponse(
                score=0.7, confidence=0.8, source=common_pb2.CLASSIFIER_SOURCE_LLM
            )
        )

    async def describe(self, timeout: float) -> classifier_pb2.DescribeResponse:
        if self.description is None:
            raise _rpc_error(grpc.StatusCode.UNAVAILABLE)
        return self.description

    async def close(self) -> None:
        pass


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="test")


def _messages(text: str) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role="user", content=text)]


WITH_LLM = classifier_pb2.DescribeResponse(strategy="cascade", llm_model="m", cascade_min_confidence=0.6)
NO_LLM = classifier_pb2.DescribeResponse(strategy="cascade", llm_model="", cascade_min_confidence=0.6)


async def _classification(remote: ClassifierService) -> tuple[Classification, LocalModel]:
    local = LocalModel()
    classification = Classification(local=local, remote=remote, remote_below_confidence=0.6)  # type: ignore[arg-type]
    await classification.warm_up()
    assert local.warmed_up
    return classification, local


async def test_the_service_is_asked_only_where_its_llm_would_answer() -> None:
    remote = ClassifierService(WITH_LLM)
    classification, local = await _classification(remote)

    sure, warnings = await classification.classify(_messages(SURE), "r1", timeout=1)
    assert (
        sure.verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL and sure.verdict.version == "local/1"
    )
    assert remote.calls == 0 and warnings == []

    unsure, warnings = await classification.classify(_messages(UNSURE), "r2", timeout=1)
    assert (
        unsure.verdict.source == common_pb2.CLASSIFIER_SOURCE_LLM
        and unsure.verdict.score == pytest.approx(0.7)
    )
    assert remote.calls == 1 and local.calls == 2 and warnings == []


async def test_a_service_without_an_llm_is_never_asked() -> None:
    remote = ClassifierService(NO_LLM)
    classification, _ = await _classification(remote)
    verdict, _ = await classification.classify(_messages(UNSURE), "r1", timeout=1)
    assert verdict.verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL and remote.calls == 0

    # It learns of a newly configured LLM on the next refresh.
    remote.description = WITH_LLM
    await classification.refresh()
    verdict, _ = await classification.classify(_messages(UNSURE), "r2", timeout=1)
    assert verdict.verdict.source == common_pb2.CLASSIFIER_SOURCE_LLM and remote.calls == 1


async def test_a_silent_service_is_assumed_to_have_an_llm_and_its_failure_leaves_the_local_verdict() -> None:
    remote = ClassifierService(None, fail_with=grpc.StatusCode.UNAVAILABLE)
    classification, _ = await _classification(remote)
    verdict, warnings = await classification.classify(_messages(UNSURE), "r1", timeout=1)
    assert remote.calls == 1
    assert (
        verdict.verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
        and verdict.verdict.confidence == pytest.approx(0.5)
    )
    assert warnings == ["classifier_unavailable:UNAVAILABLE"]


async def test_an_llm_only_service_is_asked_for_everything() -> None:
    remote = ClassifierService(classifier_pb2.DescribeResponse(strategy="llm", llm_model="m"))
    classification, _ = await _classification(remote)
    verdict, _ = await classification.classify(_messages(SURE), "r1", timeout=1)
    assert verdict.verdict.source == common_pb2.CLASSIFIER_SOURCE_LLM and remote.calls == 1


async def test_the_router_classifies_in_process_by_default_with_the_learned_model(
    simulator_url: str, tmp_path: Path, recording_sink: RecordingSink
) -> None:
    # No classifier service at all (nothing listens there): the learned model in the router decides.
    settings = router_settings("127.0.0.1:1", simulator_url, tmp_path, classifier_mode="local_first")
    running = await create_router(settings, usage_sink=recording_sink)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            reply = await stub.Route(
                router_pb2.RouteRequest(messages=_messages("Translate to French: good morning"))
            )
    finally:
        await running.stop(0)
    assert reply.decision.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    assert reply.decision.version.startswith("learned/")
    assert reply.decision.confidence >= 0.6  # sure enough: the (absent) service was not asked
    assert "classifier_unavailable:UNAVAILABLE" not in reply.warnings
    assert reply.content
