"""The ClassifierService gRPC server."""

from __future__ import annotations

import time

import grpc
import structlog

from classifier_svc.cache import CachedStrategy
from classifier_svc.factory import build_strategy
from classifier_svc.settings import ClassifierSettings
from classifier_svc.strategies.base import Conversation, Message, Strategy
from llmroute.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmroute.common.v1 import common_pb2
from service_kit import server as service_server
from service_kit.errors import InvalidArgument
from service_kit.policy import Thresholds, load_policy
from service_kit.validation import message_violations

log = structlog.get_logger()

SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].full_name


class ClassifierServicer(classifier_pb2_grpc.ClassifierServiceServicer):
    def __init__(self, strategy: Strategy, thresholds: Thresholds, max_prompt_chars: int) -> None:
        self._strategy = strategy
        self._thresholds = thresholds
        self._max_prompt_chars = max_prompt_chars

    async def Classify(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        violations = message_violations(request.messages, self._max_prompt_chars)
        if violations:
            raise InvalidArgument(violations)
        started = time.perf_counter()
        conversation = Conversation(tuple(Message(m.role, m.content) for m in request.messages))
        if request.skip_cache and isinstance(self._strategy, CachedStrategy):
            verdict = await self._strategy.classify(conversation, skip_cache=True)
        else:
            verdict = await self._strategy.classify(conversation)
        latency_ms = (time.perf_counter() - started) * 1000
        tier = self._thresholds.tier_for(verdict.score)
        log.debug(
            "classified",
            tier=tier,
            score=verdict.score,
            source=verdict.source,
            latency_ms=round(latency_ms, 3),
        )
        return classifier_pb2.ClassifyResponse(
            tier=tier,
            score=verdict.score,
            confidence=verdict.confidence,
            category=verdict.category,
            source=verdict.source,
            rationale=verdict.rationale,
            version=verdict.version,
            overhead=common_pb2.Usage(
                input_tokens=verdict.overhead.input_tokens,
                output_tokens=verdict.overhead.output_tokens,
                cost_usd=verdict.overhead.cost_usd,
            ),
            overhead_model=verdict.overhead.model,
            latency_ms=latency_ms,
        )


async def create_server(settings: ClassifierSettings) -> service_server.RunningServer:
    """Start the server; health turns SERVING only once the strategy has warmed up."""
    policy = load_policy(settings.policy_path)
    strategy = build_strategy(settings)
    server = service_server.new_server()
    classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(
        ClassifierServicer(strategy, policy.thresholds, settings.max_prompt_chars), server
    )
    running = await service_server.start(server, settings.address, [SERVICE_NAME])
    started = time.perf_counter()
    try:
        await strategy.warm_up()
    except BaseException:
        await running.stop(0)  # no half-started server left behind; the error says why
        raise
    log.info(
        "classifier_ready",
        strategy=strategy.name,
        warm_up_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    await running.set_serving()
    return running


def main() -> None:
    service_server.run_service("classifier", ClassifierSettings(), create_server)


if __name__ == "__main__":
    main()
