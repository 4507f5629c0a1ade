"""Where the router's verdict comes from: the learned model in this process, classifier_svc, or both.

    local_first  the learned model runs here (a fraction of a millisecond, no network hop); classifier_svc
                 is asked only where its answer could differ: when it runs an LLM classifier and its
                 cascade would consult it (local confidence below its bound). It says what it runs
                 through the Describe RPC, asked at start and every `describe_interval` seconds; until it
                 has answered, the router assumes an LLM behind a `remote_below_confidence` bound.
                 The remote answer wins; if it fails, the local verdict stands.
    remote       every request goes to classifier_svc (its cascade and its shared semantic cache).
    local        classifier_svc is never asked.

With `remote`, a failed classifier raises grpc.aio.AioRpcError and the router uses its default tier.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import structlog

from difficulty import Conversation, Message, Overhead, Strategy, Verdict
from difficulty import load_local_model as local_model
from llmroute.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmroute.common.v1 import common_pb2
from router_svc.settings import RouterSettings
from service_kit import auth, metadata, tls

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Classified:
    """A verdict as the router takes it: no tier (the router's pinned policy cuts it from the score),
    and how long classifying took where it ran (here, or inside classifier_svc)."""

    verdict: Verdict
    latency_ms: float


def from_response(response: classifier_pb2.ClassifyResponse) -> Classified:
    """classifier_svc's answer in the router's terms (its tier, cut by the classifier's policy, is dropped)."""
    overhead = Overhead(
        input_tokens=response.overhead.input_tokens,
        output_tokens=response.overhead.output_tokens,
        cost_usd=response.overhead.cost_usd,
        model=response.overhead_model,
    )
    verdict = Verdict(
        score=response.score,
        confidence=response.confidence,
        category=response.category,
        rationale=response.rationale,
        source=response.source,
        version=response.version,
        overhead=overhead,
        family=response.family,
    )
    return Classified(verdict, response.latency_ms)


class ClassifierClient:
    """classifier_svc over gRPC."""

    def __init__(
        self, address: str, key: str | None = None, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self._channel = auth.channel(address, key, credentials=credentials)
        self._stub = classifier_pb2_grpc.ClassifierServiceStub(self._channel)

    async def classify(
        self, messages: Sequence[common_pb2.ChatMessage], request_id: str, timeout: float
    ) -> Classified:
        """Raises grpc.aio.AioRpcError when the classifier fails or does not answer within `timeout`."""
        response = await self._stub.Classify(
            classifier_pb2.ClassifyRequest(messages=messages),
            timeout=timeout,
            metadata=((metadata.REQUEST_ID, request_id),),
        )
        return from_response(response)

    async def describe(self, timeout: float) -> classifier_pb2.DescribeResponse:
        return await self._stub.Describe(classifier_pb2.DescribeRequest(), timeout=timeout)

    async def close(self) -> None:
        await self._channel.close()


class Classification:
    """The router's verdicts, from `local` (in process), `remote` (classifier_svc) or both."""

    def __init__(
        self,
        *,
        local: Strategy | None,
        remote: ClassifierClient | None,
        remote_below_confidence: float = 0.0,
        describe_interval: float = 30.0,
    ) -> None:
        if local is None and remote is None:
            raise ValueError("classification needs a local model, a classifier service, or both")
        self._local = local
        self._remote = remote
        self._remote_below_confidence = remote_below_confidence
        self._describe_interval = describe_interval
        self._remote_strategy = "unknown"

    @classmethod
    def from_settings(cls, settings: RouterSettings) -> Classification:
        mode = settings.classifier_mode
        local = local_model(settings.classifier_artifact_dir) if mode != "remote" else None
        key = settings.service_key.get_secret_value() if settings.service_key else None
        credentials = tls.channel_credentials(
            settings.peer_ca_file, settings.tls_cert_file, settings.tls_key_file
        )
        remote = ClassifierClient(settings.classifier_address, key, credentials) if mode != "local" else None
        return cls(
            local=local, remote=remote, remote_below_confidence=settings.classify_remote_below_confidence
        )

    async def warm_up(self) -> None:
        """Load the local model and learn what the classifier service runs (before SERVING)."""
        if self._local is not None:
            await self._local.warm_up()
            await self.refresh()

    async def refresh(self) -> None:
        """Ask the classifier service what it runs; keep the last answer when it cannot say."""
        if self._local is None or self._remote is None:
            return
        try:
            description = await self._remote.describe(timeout=1.0)
        except grpc.aio.AioRpcError as error:
            log.info("classifier_describe_failed", code=error.code().name)
            return
        if not description.llm_model:
            below = 0.0  # no LLM behind it: its answer would be the local model's
        elif description.strategy == "llm":
            below = float("inf")  # every verdict comes from its LLM
        else:
            below = description.cascade_min_confidence
        if (description.strategy, below) != (self._remote_strategy, self._remote_below_confidence):
            log.info(
                "classifier_described",
                strategy=description.strategy,
                llm_model=description.llm_model,
                remote_below_confidence=below,
            )
        self._remote_strategy, self._remote_below_confidence = description.strategy, below

    async def watch(self) -> None:
        """Refresh the classifier service's description every `describe_interval` seconds (every
        second until it first answers: it may start after the router)."""
        if self._local is None or self._remote is None:
            return
        while True:
            await asyncio.sleep(self._describe_interval if self._remote_strategy != "unknown" else 1.0)
            await self.refresh()

    async def classify(
        self, messages: Sequence[common_pb2.ChatMessage], request_id: str, timeout: float
    ) -> tuple[Classified, list[str]]:
        """The verdict and warnings."""
        if self._local is None:
            assert self._remote is not None
            return await self._remote.classify(messages, request_id, timeout), []
        started = time.perf_counter()
        verdict = await self._local.classify(
            Conversation(tuple(Message(m.role, m.content) for m in messages))
        )
        local = Classified(verdict, (time.perf_counter() - started) * 1000)
        if self._remote is None or verdict.confidence >= self._remote_below_confidence:
            return local, []
        try:
            return await self._remote.classify(messages, request_id, timeout), []
        except grpc.aio.AioRpcError as error:
            log.warning("classifier_unavailable", code=error.code().name, fallback="local_model")
            return local, [f"classifier_unavailable:{error.code().name}"]

    async def close(self) -> None:
        if self._remote is not None:
            await self._remote.close()
