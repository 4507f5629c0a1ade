"""The LLM classifier: its contract, retries and fallback, cost accounting, and a run against the simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import get_args

import aiohttp
import pydantic_ai.models
import pytest
from pydantic_ai.exceptions import ModelHTTPError, ModelRequestRejectedError
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.models.test import TestModel
from structlog.testing import capture_logs

from classifier_svc.settings import ClassifierSettings
from classifier_svc.strategies.llm import LLMStrategy, is_llm_fallback
from classifier_svc.strategies.llm_model import Price, build_llm_model, litellm_price, llm_configured
from classifier_svc.strategies.llm_prompt import CategoryName
from difficulty import Conversation, HeuristicStrategy, Strategy
from llmroute.common.v1 import common_pb2
from service_kit.policy import Thresholds, TierName

PRICE = Price("test-model", input_usd_per_token=1e-6, output_usd_per_token=5e-6)
PROMPT = "Prove that the halting problem is undecidable, the secret word is zanzibar."
GOOD = {
    "tier": "reasoning",
    "category": "reasoning",
    "score": 0.82,
    "rationale": "a proof by diagonalisation",
}
BAD = {"tier": "impossible", "category": "reasoning", "score": 1.7, "rationale": "out of range"}
THRESHOLDS = Thresholds(moderate=0.35, complex=0.55, reasoning=0.75)


@pytest.fixture(autouse=True)
def _no_model_requests() -> Iterator[None]:
    with pydantic_ai.models.override_allow_model_requests(False):
        yield


def llm(model: pydantic_ai.models.Model, **kwargs: object) -> LLMStrategy:
    options: dict[str, object] = {
        "fallback": HeuristicStrategy(),
        "pricing": lambda model_id: PRICE,
        "thresholds": lambda: THRESHOLDS,
        **kwargs,
    }
    return LLMStrategy(model, **options)  # type: ignore[arg-type]


class Script:
    """A FunctionModel body that plays the given replies in order and counts its calls."""

    def __init__(self, *replies: dict[str, object] | Exception | float) -> None:
        self.replies = list(replies)
        self.calls = 0

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        reply = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, float):
            await asyncio.sleep(reply)
            reply = GOOD
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, reply)])


def http_error(status: int) -> ModelHTTPError:
    return ModelHTTPError(status_code=status, model_name="function", body={"error": PROMPT})


# The contract.


async def test_a_valid_answer_is_an_llm_verdict_with_its_tokens_and_cost() -> None:
    strategy: Strategy = llm(TestModel(custom_output_args=GOOD))
    await strategy.warm_up()

    verdict = await strategy.classify(Conversation.user(PROMPT))

    assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LLM
    # The LLM chose reasoning: the verdict sits in the middle of the reasoning band of the policy's
    # scale (its own score, 0.82, is on a scale of its own), so the policy routes it to reasoning.
    assert verdict.score == pytest.approx((THRESHOLDS.reasoning + 1.0) / 2)
    assert THRESHOLDS.tier_for(verdict.score) == common_pb2.TIER_REASONING
    assert verdict.category == common_pb2.CATEGORY_REASONING
    assert verdict.confidence == 0.85  # the LLM's tier agrees with its own score, read on an even scale
    assert verdict.rationale == "llm: reasoning; a proof by diagonalisation"
    assert verdict.overhead.model == "test-model"
    assert verdict.overhead.input_tokens > 0 and verdict.overhead.output_tokens > 0
    assert verdict.overhead.cost_usd == pytest.approx(
        verdict.overhead.input_tokens * 1e-6 + verdict.overhead.output_tokens * 5e-6
    )
    assert verdict.version == "llm/test"
    assert not is_llm_fallback(verdict)


def test_the_output_names_cover_the_proto_enums() -> None:
    categories = {f"CATEGORY_{name.upper()}" for name in get_args(CategoryName)}
    assert categories == set(common_pb2.Category.keys()) - {"CATEGORY_UNSPECIFIED"}
    tiers = {f"TIER_{name.upper()}" for name in get_args(TierName)}
    assert tiers == set(common_pb2.Tier.keys()) - {"TIER_UNSPECIFIED"}


async def test_a_tier_that_disagrees_with_the_score_lowers_confidence() -> None:
    strategy = llm(TestModel(custom_output_args={**GOOD, "tier": "simple"}))

    verdict = await strategy.classify(Conversation.user(PROMPT))

    assert (
        verdict.score == pytest.approx(THRESHOLDS.moderate / 2) and verdict.confidence == 0.6
    )  # the tier decides
    assert "tier and score disagree" in verdict.rationale


async def test_a_rationale_that_quotes_the_prompt_is_withheld() -> None:
    quoting = {**GOOD, "rationale": "prove that the halting problem is undecidable, the secret word"}
    verdict = await llm(TestModel(custom_output_args=quoting)).classify(Conversation.user(PROMPT))

    assert "zanzibar" not in verdict.rationale and "halting problem is undecidable" not in verdict.rationale
    assert "withheld" in verdict.rationale


# Failure paths: retry once, then the local model, and every attempt's tokens are charged.


async def test_invalid_output_then_valid_is_corrected_within_the_run() -> None:
    script = Script(BAD, GOOD)

    verdict = await llm(FunctionModel(script)).classify(Conversation.user(PROMPT))

    assert script.calls == 2
    assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LLM and verdict.score == pytest.approx(
        (THRESHOLDS.reasoning + 1) / 2
    )
    one_call = await llm(TestModel(custom_output_args=GOOD)).classify(Conversation.user(PROMPT))
    assert verdict.overhead.input_tokens > one_call.overhead.input_tokens


async def test_always_invalid_output_falls_back_to_the_local_model_and_charges_the_attempts() -> None:
    script = Script(BAD)
    local = await HeuristicStrategy().classify(Conversation.user(PROMPT))

    with capture_logs() as logs:
        verdict = await llm(FunctionModel(script)).classify(Conversation.user(PROMPT))

    # Two runs (the attempt and its retry), each with one correction round.
    assert script.calls == 4
    assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    assert verdict.score == local.score and verdict.category == local.category
    assert verdict.rationale.startswith("llm classifier failed (invalid output); local model: heuristic")
    assert verdict.overhead.model == "test-model"
    assert verdict.overhead.input_tokens > 0 and verdict.overhead.output_tokens > 0
    assert verdict.overhead.cost_usd == pytest.approx(
        verdict.overhead.input_tokens * 1e-6 + verdict.overhead.output_tokens * 5e-6
    )
    assert is_llm_fallback(verdict)
    failures = [log for log in logs if log["event"] == "llm_classifier_attempt_failed"]
    assert [log["attempt"] for log in failures] == [1, 2]
    assert "zanzibar" not in repr(logs)


async def test_an_http_error_is_retried_once() -> None:
    script = Script(http_error(503), GOOD)

    verdict = await llm(FunctionModel(script)).classify(Conversation.user(PROMPT))

    assert script.calls == 2
    assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LLM


async def test_http_errors_twice_fall_back_without_leaking_the_error_body() -> None:
    script = Script(http_error(503))

    with capture_logs() as logs:
        verdict = await llm(FunctionModel(script)).classify(Conversation.user(PROMPT))

    assert script.calls == 2
    assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    assert "provider error (HTTP 503)" in verdict.rationale
    # The error body echoed the prompt: neither the verdict nor the logs may carry it.
    assert "zanzibar" not in verdict.rationale and "zanzibar" not in repr(logs)


async def test_a_rejected_request_is_not_retried() -> None:
    rejected = ModelHTTPError.for_category(ModelRequestRejectedError, status_code=400, model_name="function")
    script = Script(rejected)

    verdict = await llm(FunctionModel(script)).classify(Conversation.user(PROMPT))

    assert script.calls == 1
    assert "request rejected (HTTP 400)" in verdict.rationale
    assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL


async def test_a_timeout_is_retried_once_then_falls_back() -> None:
    script = Script(5.0)
    started = time.perf_counter()

    verdict = await llm(FunctionModel(script), timeout_seconds=0.5).classify(Conversation.user(PROMPT))

    assert time.perf_counter() - started < 4  # two attempts cut at 0.5 s, not the 5 s the model takes
    assert script.calls == 2
    assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    assert "timeout after 0.5s" in verdict.rationale


async def test_a_slow_first_attempt_then_a_fast_one_is_an_llm_verdict() -> None:
    script = Script(5.0, GOOD)

    verdict = await llm(FunctionModel(script), timeout_seconds=0.5).classify(Conversation.user(PROMPT))

    assert script.calls == 2 and verdict.source == common_pb2.CLASSIFIER_SOURCE_LLM


async def test_an_unknown_price_is_said_not_silently_zero() -> None:
    strategy = llm(
        TestModel(custom_output_args=GOOD), pricing=lambda model_id: None, model_id="acme:mystery-1"
    )

    with capture_logs() as logs:
        await strategy.warm_up()
        verdict = await strategy.classify(Conversation.user(PROMPT))

    assert verdict.overhead.cost_usd == 0.0 and verdict.overhead.input_tokens > 0
    assert verdict.overhead.model == "mystery-1"
    assert "cost unknown: no price for acme:mystery-1" in verdict.rationale
    assert {
        "event": "llm_classifier_price_unknown",
        "model": "acme:mystery-1",
        "log_level": "warning",
    } in logs


# Configuration.


def test_llm_configured_needs_a_base_url_or_the_provider_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert not llm_configured(ClassifierSettings(llm_model="anthropic:claude-haiku-4-5"))
    assert llm_configured(ClassifierSettings(llm_base_url="http://127.0.0.1:1/v1"))
    assert not llm_configured(ClassifierSettings(llm_model="unknown-provider:model"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    assert llm_configured(ClassifierSettings(llm_model="anthropic:claude-haiku-4-5"))
    assert not llm_configured(ClassifierSettings(llm_model="groq:openai/gpt-oss-20b"))


def test_a_base_url_builds_an_openai_compatible_model_without_the_provider_prefix() -> None:
    model = build_llm_model(
        ClassifierSettings(llm_model="anthropic:claude-haiku-4-5", llm_base_url="http://127.0.0.1:9/v1")
    )
    assert isinstance(model, OpenAIChatModel)
    assert model.model_name == "claude-haiku-4-5"
    assert model.base_url.startswith("http://127.0.0.1:9/v1")


def test_the_rendered_conversation_keeps_the_latest_turns_and_clips_the_rest() -> None:
    conversation = Conversation.of(
        ("system", "s" * 5000),
        ("user", "old " * 2000),
        ("assistant", "answer " * 2000),
        ("user", "the new question?"),
    )

    rendered = conversation.render(max_chars=2000)

    assert len(rendered) < 2200
    assert rendered.rstrip().endswith("the new question?")
    assert "[system]" in rendered and "earlier turns omitted" in rendered


# Against the simulator, over real HTTP.


async def test_against_the_simulator_over_http(simulator_url: str) -> None:
    settings = ClassifierSettings(llm_model="anthropic:claude-haiku-4-5", llm_base_url=simulator_url)
    strategy = LLMStrategy(
        build_llm_model(settings),
        fallback=HeuristicStrategy(),
        model_id=settings.llm_model,
        pricing=litellm_price,
    )
    root = simulator_url.removesuffix("/v1")
    easy = Conversation.user("Is this email spam? 'You won a free cruise, click here.'")
    hard = Conversation.user(
        "Design and implement a distributed, concurrent rate limiter in Python. Prove its correctness "
        "step by step, then analyze the trade-offs and the edge cases."
    )

    with pydantic_ai.models.override_allow_model_requests(True):
        await strategy.warm_up()
        easy_verdict = await strategy.classify(easy)
        hard_verdict = await strategy.classify(hard)
        async with aiohttp.ClientSession() as http:
            # One 503 from the provider: retried, and the retry answers.
            rule = {"fault": "status", "status": 503, "model": "claude-haiku-4-5", "count": 1}
            async with http.post(f"{root}/_sim/faults", json=rule) as reply:
                assert reply.status == 201
            retried = await strategy.classify(hard)
            # Two: the local model answers.
            rule["count"] = 2
            async with http.post(f"{root}/_sim/faults", json=rule) as reply:
                assert reply.status == 201
            fallen_back = await strategy.classify(hard)

    for verdict in (easy_verdict, hard_verdict, retried):
        assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LLM, verdict.rationale
        assert 0 <= verdict.score <= 1
        # Priced from LiteLLM's map: claude-haiku-4-5 is $1 / $5 per million tokens.
        assert verdict.overhead.model == "claude-haiku-4-5"
        assert verdict.overhead.cost_usd == pytest.approx(
            verdict.overhead.input_tokens * 1e-6 + verdict.overhead.output_tokens * 5e-6
        )
    assert easy_verdict.score < hard_verdict.score
    assert fallen_back.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    assert "provider error (HTTP 503)" in fallen_back.rationale
