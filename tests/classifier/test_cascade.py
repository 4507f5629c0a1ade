"""The cascade: when the LLM is asked, what wins, and how the factory assembles strategies from settings."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pydantic_ai.models
import pytest
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from classifier_svc.cache import CachedStrategy
from classifier_svc.factory import LLMNotConfiguredError, build_strategy
from classifier_svc.settings import ClassifierSettings
from classifier_svc.strategies.cascade import CascadeStrategy
from classifier_svc.strategies.llm import LLMStrategy
from classifier_svc.strategies.llm_model import Price
from classifier_svc.strategies.warm_up import WARM_UP_CONVERSATIONS
from difficulty import Conversation, HeuristicStrategy, LearnedStrategy, Strategy, Verdict
from difficulty.model import ARTIFACT_FILE
from llmroute.common.v1 import common_pb2
from service_kit.policy import DEFAULT_POLICY_PATH, Thresholds, load_policy

POLICY_THRESHOLDS = load_policy(DEFAULT_POLICY_PATH).thresholds


def policy_thresholds() -> Thresholds:
    """The shipped policy's thresholds (the server passes its live policy's)."""
    return POLICY_THRESHOLDS


GOOD = {"tier": "complex", "category": "code", "score": 0.7, "rationale": "non-trivial concurrency"}
BAD = {"tier": "complex", "category": "code", "score": -3, "rationale": "invalid"}
QUESTION = Conversation.user("Implement a lock-free queue in C++.")


@pytest.fixture(autouse=True)
def _no_model_requests() -> Iterator[None]:
    with pydantic_ai.models.override_allow_model_requests(False):
        yield


class Local:
    """A local model with a fixed confidence that records what it classified."""

    name = "local"

    def __init__(self, confidence: float) -> None:
        self.confidence = confidence
        self.warmed = False
        self.seen: list[Conversation] = []

    async def warm_up(self) -> None:
        self.warmed = True

    async def classify(self, conversation: Conversation) -> Verdict:
        self.seen.append(conversation)
        return Verdict(
            score=0.3, confidence=self.confidence, category=common_pb2.CATEGORY_CHAT, rationale="local"
        )


class Replies:
    def __init__(self, reply: dict[str, object]) -> None:
        self.reply = reply
        self.calls = 0

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls += 1
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, self.reply)])


def cascade(local: Local, replies: Replies | None, min_confidence: float = 0.6) -> CascadeStrategy:
    llm = None
    if replies is not None:
        llm = LLMStrategy(
            FunctionModel(replies), fallback=local, pricing=lambda model_id: Price("p", 1e-6, 1e-6)
        )
    return CascadeStrategy(local, llm, min_confidence=min_confidence)


async def test_a_confident_local_verdict_is_final() -> None:
    local, replies = Local(confidence=0.9), Replies(GOOD)
    strategy: Strategy = cascade(local, replies)

    verdict = await strategy.classify(QUESTION)

    assert replies.calls == 0
    assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL and verdict.rationale == "local"
    assert verdict.overhead.input_tokens == 0


async def test_an_unsure_local_verdict_asks_the_llm_whose_verdict_wins() -> None:
    local, replies = Local(confidence=0.5), Replies(GOOD)
    strategy = cascade(local, replies)

    verdict = await strategy.classify(QUESTION)

    assert replies.calls == 1
    assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LLM
    assert verdict.score == 0.7 and verdict.category == common_pb2.CATEGORY_CODE
    assert verdict.rationale.startswith("local confidence 0.50 < 0.60; llm: complex")
    assert verdict.overhead.input_tokens > 0 and verdict.overhead.cost_usd > 0
    assert (strategy.stats.local, strategy.stats.escalated, strategy.stats.llm_failed) == (0, 1, 0)


async def test_confidence_exactly_at_the_bound_stays_local() -> None:
    replies = Replies(GOOD)
    verdict = await cascade(Local(confidence=0.6), replies).classify(QUESTION)
    assert replies.calls == 0 and verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL


async def test_when_the_llm_fails_the_local_verdict_is_returned_with_the_llm_overhead() -> None:
    local, replies = Local(confidence=0.2), Replies(BAD)
    strategy = cascade(local, replies)

    verdict = await strategy.classify(QUESTION)

    assert replies.calls == 4  # two runs, each with one correction round
    assert len(local.seen) == 1  # the local verdict already in hand is reused, not recomputed
    assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL and verdict.score == 0.3
    assert verdict.rationale.startswith("llm classifier failed (invalid output); local model: local")
    assert verdict.overhead.input_tokens > 0 and verdict.overhead.model == "p"
    assert strategy.stats.llm_failed == 1


async def test_without_an_llm_the_local_verdict_is_final_however_unsure() -> None:
    strategy = cascade(Local(confidence=0.01), None)
    verdict = await strategy.classify(QUESTION)
    assert verdict.rationale == "local" and strategy.stats.local == 1


async def test_warm_up_loads_the_local_model_classifies_a_few_prompts_and_never_calls_the_llm() -> None:
    local, replies = Local(confidence=0.1), Replies(GOOD)
    strategy = cascade(local, replies)

    await strategy.warm_up()

    assert local.warmed and local.seen == list(WARM_UP_CONVERSATIONS)
    assert replies.calls == 0


# The factory.


def settings(**overrides: object) -> ClassifierSettings:
    return ClassifierSettings(**{"port": 0, "artifact_dir": Path("/nonexistent/artifact"), **overrides})  # type: ignore[arg-type]


def test_cascade_without_an_llm_configured_is_the_local_model_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    strategy = build_strategy(settings(cache_enabled=False), policy_thresholds)
    assert isinstance(strategy, CascadeStrategy) and strategy.llm is None
    assert isinstance(strategy.local, HeuristicStrategy)  # no learned artifact: the heuristic


def test_cascade_with_a_base_url_asks_that_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    strategy = build_strategy(
        settings(cache_enabled=False, llm_base_url="http://127.0.0.1:9/v1"), policy_thresholds
    )
    assert isinstance(strategy, CascadeStrategy) and isinstance(strategy.llm, LLMStrategy)
    assert strategy.llm.model_id == "anthropic:claude-haiku-4-5"


def test_strategy_llm_needs_an_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(LLMNotConfiguredError, match="CLASSIFIER_LLM_BASE_URL"):
        build_strategy(settings(strategy="llm"), policy_thresholds)
    strategy = build_strategy(
        settings(strategy="llm", llm_base_url="http://127.0.0.1:9/v1"), policy_thresholds
    )
    assert isinstance(strategy, CachedStrategy) and isinstance(strategy.inner, LLMStrategy)


def test_local_and_heuristic_strategies(tmp_path: Path) -> None:
    assert isinstance(
        build_strategy(settings(strategy="heuristic", cache_enabled=False), policy_thresholds),
        HeuristicStrategy,
    )
    # An empty artifact directory: the learned model cannot load, the heuristic stands in.
    strategy = build_strategy(
        settings(strategy="local", cache_enabled=False, artifact_dir=tmp_path), policy_thresholds
    )
    assert isinstance(strategy, HeuristicStrategy)


def test_local_is_the_learned_model_when_its_artifact_exists(tmp_path: Path) -> None:
    (tmp_path / ARTIFACT_FILE).write_bytes(b"")  # loaded at warm-up, not here

    strategy = build_strategy(
        settings(strategy="local", cache_enabled=False, artifact_dir=tmp_path), policy_thresholds
    )

    assert isinstance(strategy, LearnedStrategy)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_llm_falls_back_and_the_fallback_is_not_cached() -> None:
    strategy = build_strategy(
        settings(
            llm_base_url=f"http://127.0.0.1:{_closed_port()}/v1",
            cascade_min_confidence=1.0,  # always ask the LLM
            llm_timeout_seconds=2.0,
        ),
        policy_thresholds,
    )
    assert isinstance(strategy, CachedStrategy)

    with pydantic_ai.models.override_allow_model_requests(True):
        first = await strategy.classify(QUESTION)
        second = await strategy.classify(QUESTION)

    for verdict in (first, second):
        assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
        assert "llm classifier failed (provider error (ModelConnectionError))" in verdict.rationale
    # Not stored: the second request asked the LLM again instead of reusing the fallback.
    assert strategy.stats.stores == 0 and strategy.stats.misses == 2
