"""The LLM classifier: a pydantic-ai agent with a typed verdict over a cheap model, the local model as fallback.

An attempt that times out, fails at the provider or keeps returning invalid output is retried once; then
the local model answers. The tokens every attempt spent are returned as the verdict's overhead, priced
with LiteLLM's price map, so the ledger charges the classifier for them even when it fell back.

The conversation is sent to the model (it has to be) but never to a log: log events carry the model,
the attempt, the failure kind and token counts only.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from pydantic_ai import Agent, capture_run_messages
from pydantic_ai.exceptions import (
    ModelAPIError,
    ModelHTTPError,
    ModelRequestRejectedError,
    UnexpectedModelBehavior,
)
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models import Model, parse_model_id
from pydantic_ai.settings import ModelSettings

from classifier_svc.strategies.llm_model import Price, litellm_price
from classifier_svc.strategies.llm_prompt import INSTRUCTIONS, LLMClassification, quotes
from classifier_svc.strategies.warm_up import warm_up_local
from difficulty import Conversation, Overhead, Strategy, Verdict
from llmroute.common.v1 import common_pb2
from service_kit.policy import TIER_BY_NAME, Thresholds

__all__ = ["LLMAttempt", "LLMStrategy", "fall_back", "is_llm_fallback"]

log = structlog.get_logger()


@dataclass(slots=True)
class LLMAttempt:
    """The outcome of asking the LLM (one attempt plus at most one retry)."""

    verdict: Verdict | None
    overhead: Overhead
    # Why the LLM gave no verdict ("timeout after 10s", "invalid output", "provider error (HTTP 503)"...).
    failure: str = ""
    attempts: int = 0
    # False when the model has no price in LiteLLM's map: overhead.cost_usd is then 0 but not "free".
    cost_known: bool = True


def fall_back(local: Verdict, attempt: LLMAttempt) -> Verdict:
    """The local verdict, saying why the LLM was not used and charging what the failed attempts spent."""
    rationale = f"llm classifier failed ({attempt.failure}); local model: {local.rationale}"
    if not attempt.cost_known:
        rationale += f"; cost unknown: no price for {attempt.overhead.model}"
    return dataclasses.replace(
        local, rationale=rationale, overhead=attempt.overhead, source=common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    )


def is_llm_fallback(verdict: Verdict) -> bool:
    """A local verdict given because the LLM failed: an LLM was charged but did not answer."""
    return bool(verdict.overhead.model) and verdict.source != common_pb2.CLASSIFIER_SOURCE_LLM


class LLMStrategy:
    """Classifies with an LLM; after a failed attempt and a failed retry, `fallback` (the local model) answers."""

    name = "llm"

    def __init__(
        self,
        model: Model,
        *,
        fallback: Strategy,
        model_id: str | None = None,
        timeout_seconds: float = 10.0,
        max_input_chars: int = 12_000,
        thresholds: Callable[[], Thresholds] | None = None,
        pricing: Callable[[str], Price | None] = litellm_price,
        attempts: int = 2,
    ) -> None:
        """`model_id` is the pydantic-ai model id the price is looked up by (default: the model's own name)."""
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._fallback = fallback
        self._model_id = model_id or f"{model.system}:{model.model_name}"
        self._timeout = timeout_seconds
        self._max_input_chars = max_input_chars
        self._thresholds = thresholds
        self._pricing = pricing
        self._price: Price | None = None
        self._priced = False
        self._attempts = attempts
        self._agent = Agent(
            model,
            output_type=LLMClassification,
            instructions=INSTRUCTIONS,
            # One correction round for invalid output inside a run, on top of our own retry of the run.
            retries={"output": 1},
            # We own retrying and the deadline; the SDK's own retries would multiply both.
            model_settings=ModelSettings(max_retries=0, max_tokens=600),
            name="llmroute-classifier",
        )
        self.version = f"llm/{parse_model_id(self._model_id)[1]}"

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def overhead_model(self) -> str:
        """The name the overhead is reported under: the price map's key when the model has a price."""
        price = self._resolve_price()
        return price.key if price else parse_model_id(self._model_id)[1]

    async def warm_up(self) -> None:
        await warm_up_local(self._fallback)
        await self.prepare()

    async def prepare(self) -> None:
        """Look up the price. The LLM itself is not called: that costs money."""
        # In a thread: importing LiteLLM takes seconds, and health checks are answered meanwhile.
        if await asyncio.to_thread(self._resolve_price) is None:
            log.warning("llm_classifier_price_unknown", model=self._model_id)

    async def classify(self, conversation: Conversation) -> Verdict:
        attempt = await self.attempt(conversation)
        if attempt.verdict is not None:
            return attempt.verdict
        return fall_back(await self._fallback.classify(conversation), attempt)

    async def attempt(self, conversation: Conversation) -> LLMAttempt:
        """Ask the LLM, retrying once; never raises for a timeout, provider error or invalid output."""
        prompt = f"<conversation>\n{conversation.render(self._max_input_chars)}\n</conversation>"
        overhead = Overhead(model=self.overhead_model)
        failure = ""
        attempts = 0
        for attempts in range(1, self._attempts + 1):
            retryable = True
            with capture_run_messages() as messages:
                try:
                    result = await self._agent.run(prompt, timeout=self._timeout)
                except TimeoutError:  # pydantic-ai's RunTimedOut is a TimeoutError
                    failure = f"timeout after {self._timeout:g}s"
                except ModelRequestRejectedError as exc:
                    # Auth, bad request, context window: sending the same request again will not help.
                    failure = f"request rejected ({_describe(exc)})"
                    retryable = False
                except ModelAPIError as exc:
                    failure = f"provider error ({_describe(exc)})"
                except UnexpectedModelBehavior:
                    failure = "invalid output"
                else:
                    overhead = self._charge(overhead, result.usage.input_tokens, result.usage.output_tokens)
                    verdict = self._verdict(result.output, overhead, prompt)
                    return LLMAttempt(
                        verdict, overhead, "", attempts, cost_known=self._resolve_price() is not None
                    )
            spent = _usage_of(messages)
            overhead = self._charge(overhead, *spent)
            log.warning(
                "llm_classifier_attempt_failed",
                model=self._model_id,
                attempt=attempts,
                failure=failure,
                input_tokens=spent[0],
                output_tokens=spent[1],
            )
            if not retryable:
                break
        return LLMAttempt(None, overhead, failure, attempts, cost_known=self._resolve_price() is not None)

    def _resolve_price(self) -> Price | None:
        if not self._priced:
            self._price = self._pricing(self._model_id)
            self._priced = True
        return self._price

    def _charge(self, overhead: Overhead, input_tokens: int, output_tokens: int) -> Overhead:
        """`overhead` with these tokens added, priced (cost unchanged when the model has no price)."""
        input_tokens += overhead.input_tokens
        output_tokens += overhead.output_tokens
        price = self._resolve_price()
        cost_usd = price.cost(input_tokens, output_tokens) if price is not None else overhead.cost_usd
        return dataclasses.replace(
            overhead, input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost_usd
        )

    def _verdict(self, output: LLMClassification, overhead: Overhead, prompt: str) -> Verdict:
        score = min(max(output.score, 0.0), 1.0)
        tier = TIER_BY_NAME[output.tier]
        rationale = output.rationale
        if quotes(rationale, prompt):
            rationale = "(withheld: it quoted the conversation)"
        notes = [f"llm: {output.tier}", rationale]
        if self._thresholds is None:
            confidence = 0.8
        else:
            # The LLM judges the tier; its score is on a scale of its own, not the learned model's
            # that the thresholds cut. The verdict's score goes in the middle of the chosen tier's
            # band on the policy's scale, so the policy routes to the tier the LLM chose. Its own
            # score, read on an even scale, only says how consistent it was.
            nominal = min(4, 1 + int(score * 4))
            confidence = 0.85 if nominal == tier else 0.6
            if nominal != tier:
                notes.append("tier and score disagree")
            score = _band_middle(self._thresholds(), tier)
        if self._resolve_price() is None:
            notes.append(f"cost unknown: no price for {self._model_id}")
        return Verdict(
            score=round(score, 4),
            confidence=confidence,
            category=common_pb2.Category.Value(f"CATEGORY_{output.category.upper()}"),
            rationale="; ".join(notes),
            source=common_pb2.CLASSIFIER_SOURCE_LLM,
            version=self.version,
            overhead=overhead,
        )


def _band_middle(thresholds: Thresholds, tier: int) -> float:
    """The middle of a tier's score band under these thresholds."""
    cuts = [0.0, thresholds.moderate, thresholds.complex, thresholds.reasoning, 1.0]
    return (cuts[tier - 1] + cuts[tier]) / 2


def _describe(exc: ModelAPIError) -> str:
    # Only the kind and status: a provider's error body may echo the request, which holds the prompt.
    if isinstance(exc, ModelHTTPError):
        return f"HTTP {exc.status_code}"
    return type(exc).__name__


def _usage_of(messages: list[ModelMessage]) -> tuple[int, int]:
    """Tokens billed for the responses a failed run did receive (a timed-out request reports none)."""
    responses = [m for m in messages if isinstance(m, ModelResponse)]
    return sum(r.usage.input_tokens for r in responses), sum(r.usage.output_tokens for r in responses)
