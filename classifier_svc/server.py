"""The ClassifierService gRPC server."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import grpc
import structlog

from classifier_svc.cache import CachedStrategy
from classifier_svc.factory import build_strategy
from classifier_svc.responses import classify_response
from classifier_svc.settings import ClassifierSettings
from difficulty import Conversation, Message, Strategy
from llmroute.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from service_kit import auth, tls
from service_kit import server as service_server
from service_kit.errors import InvalidArgument
from service_kit.policy import Policy
from service_kit.policy_source import PolicySource
from service_kit.validation import message_violations

log = structlog.get_logger()

SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].full_name
# Who may call what, when keys are required (service_kit/auth.py): Classify may spend on the LLM
# classifier, so routers (and admins) only.
RULES = {"Classify": ("service", "admin"), "Describe": ("service", "admin")}


class ClassifierServicer(classifier_pb2_grpc.ClassifierServiceServicer):
    def __init__(
        self,
        strategy: Strategy,
        policy: Callable[[], Policy],
        max_prompt_chars: int,
        description: classifier_pb2.DescribeResponse | None = None,
    ) -> None:
        self._strategy = strategy
        self._policy = policy
        self._max_prompt_chars = max_prompt_chars
        self._description = description or classifier_pb2.DescribeResponse(strategy=strategy.name)

    async def Describe(
        self,
        request: classifier_pb2.DescribeRequest,
        context: grpc.aio.ServicerContext[classifier_pb2.DescribeRequest, classifier_pb2.DescribeResponse],
    ) -> classifier_pb2.DescribeResponse:
        return self._description

    async def Classify(
        self,
        request: classifier_pb2.ClassifyRequest,
        context: grpc.aio.ServicerContext[classifier_pb2.ClassifyRequest, classifier_pb2.ClassifyResponse],
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
        tier = self._policy().tier_for(verdict.score, verdict.family, verdict.category)
        log.debug(
            "classified",
            tier=tier,
            score=verdict.score,
            source=verdict.source,
            latency_ms=round(latency_ms, 3),
        )
        return classify_response(verdict, tier, latency_ms)


async def create_server(settings: ClassifierSettings) -> service_server.RunningServer:
    """Start the server; health turns SERVING only once the strategy has warmed up."""
    gate = auth.gate_for("classifier", settings, RULES)
    policy = PolicySource(settings.policy_path)
    strategy = build_strategy(settings, lambda: policy.current().thresholds)
    if isinstance(strategy, CachedStrategy):
        # Verdicts of the LLM classifier are placed on the thresholds' scale: new thresholds, new verdicts.
        policy.on_change(strategy.clear)
    server = service_server.new_server(gate=gate)
    classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(
        ClassifierServicer(strategy, policy.current, settings.max_prompt_chars, describe(settings)), server
    )
    running = await service_server.start(
        server,
        settings.address,
        [SERVICE_NAME],
        tls.server_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file),
    )
    started = time.perf_counter()
    try:
        await strategy.warm_up()
    except BaseException:
        await running.stop(0)  # no half-started server left behind; the error says why
        raise
    watching = asyncio.create_task(policy.watch())

    async def stop_watching() -> None:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

    running.closers.append(stop_watching)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, policy.reload)

    async def stop_reloading() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    running.closers.append(stop_reloading)
    log.info(
        "classifier_ready",
        strategy=strategy.name,
        warm_up_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    await running.set_serving()
    return running


def describe(settings: ClassifierSettings) -> classifier_pb2.DescribeResponse:
    """What the Describe RPC reports: the strategy, and the LLM classifier when one is configured."""
    llm_model = ""
    if settings.strategy in ("cascade", "llm"):
        from classifier_svc.strategies.llm_model import llm_configured

        llm_model = settings.llm_model if llm_configured(settings) else ""
    return classifier_pb2.DescribeResponse(
        strategy=settings.strategy,
        llm_model=llm_model,
        cascade_min_confidence=settings.cascade_min_confidence if settings.strategy == "cascade" else 0.0,
    )


def main() -> None:
    service_server.run_service("classifier", ClassifierSettings(), create_server)


if __name__ == "__main__":
    main()
