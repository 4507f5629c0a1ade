"""Step 4 of a Route: calling one chosen model through LiteLLM, whole or streamed.

Each call reserves its estimate against the caller's hard budgets first, respects the model's circuit
breaker and the request's deadline, and becomes an `Outcome` with its usage priced from the pinned
prices. A failure is classified in one place (`provider_errors.failure_of`): whether it is worth retrying, whether the
provider processed the prompt (and so charges for it), and what the record says. A call that failed or
was cancelled before LiteLLM handed it to the provider's client reached no provider: no attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from router_svc.budgets import BudgetGate
from router_svc.cooldown import Cooldowns
from router_svc.provider_errors import Failure, failure_of
from router_svc.request import PinnedRequest, past, raise_if_past
from router_svc.selection import Choice, count_tokens, rough_tokens
from router_svc.settings import RouterSettings
from service_kit import tracing
from service_kit.errors import Reason, Unavailable

log = structlog.get_logger()


@dataclass(slots=True)
class Outcome:
    """A finished provider call (successful or not) as the router accounts for it."""

    attempt: router_pb2.Attempt
    content: str = ""
    finish_reason: str = ""
    simulated: bool = False
    judge_problem: str = ""  # why the LLM judge gave no verdict on this answer, if it did not


class ProviderCaller:
    def __init__(
        self,
        *,
        settings: RouterSettings,
        cooldowns: Cooldowns,
        budgets: BudgetGate | None,
        acompletion: Callable[..., Any],
    ) -> None:
        self._settings = settings
        self._cooldowns = cooldowns
        self._budgets = budgets
        self._acompletion = acompletion

    async def call(
        self, request: PinnedRequest, choice: Choice, deadline: float | None, outcomes: list[Outcome]
    ) -> Outcome | None:
        """The model's answer, retried on transient errors with backoff; None when it gave none (each
        attempt is appended to `outcomes`)."""
        model = choice.spec.model
        for retry in range(self._settings.retries_per_model + 1):
            if not self._cooldowns.available(model):
                return None
            await self._hold(request, choice)
            outcome, failure = await self.call_once(request, choice, deadline, outcomes)
            if failure is None:
                self._cooldowns.success(model)
                return outcome
            if past(deadline):  # the client's deadline, not the model's fault: no cooldown
                self._cooldowns.release(model)
                raise_if_past(deadline)
            if not failure.transient:
                # A request the provider rejects (400, 401, content policy...) says nothing about the
                # model's health: no cooldown; the probe slot, if this was the probe, is released.
                self._cooldowns.release(model)
                return None
            self._cooldowns.failure(model)
            backoff = self._settings.retry_backoff_seconds * (2**retry)
            if failure.retry_after:
                # The provider said when to come back: no call to this model before then, from any
                # request (its breaker held open that long); this one waits if that is short enough.
                self._cooldowns.hold(model, failure.retry_after)
                if failure.retry_after > self._settings.max_retry_after_wait_seconds:
                    return None
                backoff = max(backoff, failure.retry_after)
            if retry == self._settings.retries_per_model:
                return None
            if deadline is not None and asyncio.get_running_loop().time() + backoff >= deadline:
                return None
            await asyncio.sleep(backoff)
        return None

    async def call_once(
        self, request: PinnedRequest, choice: Choice, deadline: float | None, outcomes: list[Outcome]
    ) -> tuple[Outcome, Failure | None]:
        """One provider call, appended to `outcomes`. Returns it and what its failure means (None: it
        answered)."""
        raise_if_past(deadline)
        outcome = _outcome(choice, outcomes)
        attempt = outcome.attempt
        dispatch = _Dispatch()
        kwargs = self._kwargs(request, choice, dispatch)  # outside the try: our bugs are not provider errors
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                with tracing.span("provider_call", **{"llmroute.model": choice.spec.model}):
                    response = await self._acompletion(**kwargs)
        except asyncio.CancelledError:
            # The caller went away: the provider call is cancelled with us; charge the prompt it was sent.
            attempt.outcome = common_pb2.ATTEMPT_OUTCOME_CANCELLED
            attempt.latency_ms = (time.perf_counter() - started) * 1000
            charge_estimate(attempt, request)
            self._cooldowns.release(choice.spec.model)
            dispatch.forget_if_unsent(outcome, outcomes)
            raise
        except Exception as error:
            dispatch.forget_if_unsent(outcome, outcomes)
            attempt.latency_ms = (time.perf_counter() - started) * 1000
            failure = failure_of(error)
            if failure.prompt_processed:
                charge_estimate(attempt, request)
            attempt.outcome, attempt.error = failure.outcome, failure.error  # type: ignore[assignment]
            log.warning(
                "provider_error",
                model=choice.spec.model,
                error_type=type(error).__name__,
                transient=failure.transient,
            )
            return outcome, failure
        attempt.latency_ms = (time.perf_counter() - started) * 1000
        charge(request, attempt, response.usage)
        attempt.outcome = common_pb2.ATTEMPT_OUTCOME_OK
        outcome.content = response.choices[0].message.content or ""
        outcome.finish_reason = response.choices[0].finish_reason or ""
        return outcome, None

    async def stream(
        self, request: PinnedRequest, choice: Choice, deadline: float | None, outcomes: list[Outcome]
    ) -> AsyncGenerator[str, None]:
        """Yield deltas of one streamed call; append its outcome. Yields nothing when the model is in
        cooldown or fails before its first delta (the next candidate may answer); raises if it fails
        after."""
        raise_if_past(deadline)
        if not self._cooldowns.available(choice.spec.model):
            return
        await self._hold(request, choice)
        outcome = _outcome(choice, outcomes)
        attempt = outcome.attempt
        parts: list[str] = []
        usage = None
        provider_stream: Any = None
        dispatch = _Dispatch()
        kwargs = self._kwargs(request, choice, dispatch)
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                provider_stream = await self._acompletion(
                    **kwargs, stream=True, stream_options={"include_usage": True}
                )
                async for chunk in provider_stream:
                    if getattr(chunk, "usage", None):
                        usage = chunk.usage
                    if not chunk.choices:
                        continue
                    delta = chunk.choices[0].delta.content or ""
                    if chunk.choices[0].finish_reason:
                        outcome.finish_reason = chunk.choices[0].finish_reason
                    if delta:
                        parts.append(delta)
                        yield delta
        except (asyncio.CancelledError, GeneratorExit):
            attempt.outcome = common_pb2.ATTEMPT_OUTCOME_CANCELLED
            charge_estimate(attempt, request, rough_tokens("".join(parts)))
            self._cooldowns.release(choice.spec.model)
            dispatch.forget_if_unsent(outcome, outcomes)
            raise
        except Exception as error:
            dispatch.forget_if_unsent(outcome, outcomes)
            failure = failure_of(error)
            attempt.outcome, attempt.error = failure.outcome, failure.error  # type: ignore[assignment]
            if failure.transient and not past(deadline):
                self._cooldowns.failure(choice.spec.model)
                if failure.retry_after:
                    self._cooldowns.hold(choice.spec.model, failure.retry_after)
            else:
                self._cooldowns.release(choice.spec.model)
            if parts or failure.prompt_processed:
                # The prompt was processed (and part of an answer generated): charged as on cancel.
                # An error before any output (a 5xx, a refused request) is not billed, as in Route.
                charge_estimate(attempt, request, rough_tokens("".join(parts)))
            log.warning(
                "provider_stream_error",
                model=choice.spec.model,
                error_type=type(error).__name__,
                after_first_delta=bool(parts),
            )
            if parts:
                raise_if_past(deadline)  # the request's deadline ended it, not the provider
                raise Unavailable(
                    f"{choice.spec.model} failed mid-stream; the partial answer cannot be retried",
                    reason=Reason.PROVIDER_STREAM_BROKEN,
                    metadata={"model": choice.spec.model},
                ) from None
            return
        finally:
            attempt.latency_ms = (time.perf_counter() - started) * 1000
            # Closed now, whichever way the call ended (a client's cancel arrives at our yield as
            # GeneratorExit, not in a read): its connection released and the provider told to stop
            # generating, not whenever the garbage collector gets to it.
            await _close(provider_stream)
        outcome.content = "".join(parts)
        if usage is not None:
            charge(request, attempt, usage)
        else:
            charge_estimate(attempt, request, rough_tokens(outcome.content))
        attempt.outcome = common_pb2.ATTEMPT_OUTCOME_OK
        self._cooldowns.success(choice.spec.model)

    async def _hold(self, request: PinnedRequest, choice: Choice) -> None:
        """Reserve the attempt's estimated cost against the caller's hard budgets before calling."""
        if self._budgets is None:
            return
        try:
            await self._budgets.hold(
                request.caller,
                request.request_id,
                request.run_id,
                choice.estimated_cost_usd,
                fail_closed=self._settings.budget_fail_mode == "closed",
            )
        except BaseException:
            self._cooldowns.release(choice.spec.model)  # the probe slot, if this was the probe
            raise

    def _kwargs(self, request: PinnedRequest, choice: Choice, dispatch: _Dispatch) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            **choice.route.kwargs,
            **choice.spec.params,
            "messages": request.chat,
            "logger_fn": dispatch,
            # Constant on purpose: LiteLLM caches its HTTP clients by their parameters, timeout included,
            # so a per-request value would build a new client and a new connection for every call.
            # The request's deadline is enforced around the call instead (`asyncio.timeout_at`).
            "timeout": self._settings.provider_timeout_seconds,
            "num_retries": 0,
            "drop_params": True,
        }
        if request.max_output_tokens is not None:
            kwargs["max_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        schema = request.expectations.json_schema
        if schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema},
            }
        elif request.expectations.json_output:
            kwargs["response_format"] = {"type": "json_object"}
        return kwargs


def charge(request: PinnedRequest, attempt: router_pb2.Attempt, usage: Any) -> None:
    """Fill the attempt's usage from the provider's token counts, priced by the pinned prices."""
    input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    cached = int(getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0) or 0)
    reasoning = int(getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", 0) or 0)
    cost = request.prices.cost(attempt.model, input_tokens, output_tokens, cached, reasoning)
    attempt.usage.input_tokens = input_tokens
    attempt.usage.output_tokens = output_tokens
    attempt.usage.cached_input_tokens = cached
    attempt.usage.reasoning_tokens = reasoning
    attempt.usage.cost_usd = cost.usd
    attempt.price_known = cost.known
    if not cost.known:
        log.warning("price_unknown", model=attempt.model)


def charge_estimate(attempt: router_pb2.Attempt, request: PinnedRequest, output_tokens: int = 0) -> None:
    """Usage the provider did not report (a cancelled or cut call): the prompt counted here, and the
    output received so far."""
    input_tokens = count_tokens(attempt.model, request.chat)
    cost = request.prices.cost(attempt.model, input_tokens, output_tokens)
    attempt.usage.input_tokens = input_tokens
    attempt.usage.output_tokens = output_tokens
    attempt.usage.cost_usd = cost.usd
    attempt.price_known = cost.known


def _outcome(choice: Choice, outcomes: list[Outcome]) -> Outcome:
    attempt = router_pb2.Attempt(
        model=choice.spec.model,
        provider=choice.route.provider,
        tier=choice.tier,
        price_known=choice.price_known,
    )
    outcome = Outcome(attempt, simulated=choice.route.simulated)
    outcomes.append(outcome)
    return outcome


class _Dispatch:
    """Whether LiteLLM handed one call to the provider's client: its `logger_fn`, run by LiteLLM's
    pre-call hook just before the HTTP request goes out. A call that failed or was cancelled before
    that reached no provider: it is not an attempt, is not charged and makes no ledger record."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False

    def __call__(self, _details: object) -> None:
        self.sent = True

    def forget_if_unsent(self, outcome: Outcome, outcomes: list[Outcome]) -> None:
        if self.sent:
            return
        for index, listed in enumerate(outcomes):
            if listed is outcome:
                del outcomes[index]
                log.info("provider_call_not_sent", model=outcome.attempt.model)
                return


async def _close(provider_stream: Any) -> None:
    close = getattr(provider_stream, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
