"""The routing core: classify, choose the cheapest adequate model, call it, validate, fall back, account.

`Router` knows nothing of gRPC servicers: it takes a parsed `RouteInput` and returns the response
proto, raising `service_kit.errors.ServiceError` subclasses for the caller's mistakes and outages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import structlog

from llmroute.classifier.v1 import classifier_pb2
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2
from llmroute.router.v1 import router_pb2
from router_svc._litellm import litellm
from router_svc.budgets import BudgetGate
from router_svc.classification import Classification
from router_svc.cooldown import Cooldowns
from router_svc.exploration import Explorer
from router_svc.judge import Judge
from router_svc.pricing import PriceBook
from router_svc.providers import Providers, Route
from router_svc.settings import RouterSettings
from router_svc.validators import DEFAULT_VALIDATORS, Answer, Expectations, Validator, first_failure
from service_kit import tracing
from service_kit.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from service_kit.policy import NAME_BY_TIER, TIER_BY_NAME, ModelSpec, Policy, category_name

log = structlog.get_logger()

TIERS_IN_ORDER = (
    common_pb2.TIER_SIMPLE,
    common_pb2.TIER_MODERATE,
    common_pb2.TIER_COMPLEX,
    common_pb2.TIER_REASONING,
)
DEFAULT_OUTPUT_ESTIMATE = 300
# The model name on the record of a request refused before any provider call.
NOT_ROUTED_MODEL = "(not routed)"
_SCORED_SOURCES = frozenset(
    {
        common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL,
        common_pb2.CLASSIFIER_SOURCE_LLM,
        common_pb2.CLASSIFIER_SOURCE_CACHE,
    }
)
# Errors worth retrying on the same model: rate limits, server errors, timeouts, dropped connections.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    litellm.RateLimitError,
    litellm.Timeout,
    litellm.APIConnectionError,
    litellm.InternalServerError,
    litellm.ServiceUnavailableError,
    litellm.BadGatewayError,
    TimeoutError,
)


class UsageSink(Protocol):
    """Where usage records go (the ledger reporter with its durable spool)."""

    def submit(self, records: Sequence[ledger_pb2.UsageRecord]) -> None:
        """Make the records durable (or hold them) and return; never raises for the sink's sake."""
        ...

    def accepting(self) -> bool:
        """Whether new paid work may start: what it spends can be recorded."""
        ...


@dataclass(frozen=True)
class RouteInput:
    """A validated Route request."""

    messages: tuple[common_pb2.ChatMessage, ...]
    request_id: str
    caller: str
    # True when the client chose the request id (so it may retry with it).
    client_request_id: bool = False
    # What the request id is bound to: a digest of the messages and options (see router_svc.idempotency).
    fingerprint: bytes = b""
    # The id logs and the other services see (the client's x-request-id metadata, else request_id).
    trace_id: str = ""
    # This execution of the request, drawn when routing starts (see `pinned`); with caller and
    # request_id it keys the ledger's records, so a run never collides with another's.
    run_id: str = ""
    # The policy and prices this request is routed under, fixed when routing starts (see `pinned`), so a
    # reload or price refresh mid-request cannot mix versions within one request's records.
    policy: Policy | None = None
    prices: PriceBook | None = None

    @property
    def pinned_policy(self) -> Policy:
        assert self.policy is not None, "route() pins the policy first"
        return self.policy

    @property
    def pinned_prices(self) -> PriceBook:
        assert self.prices is not None, "route() pins the prices first"
        return self.prices

    max_output_tokens: int | None = None
    temperature: float | None = None
    force_tier: int = common_pb2.TIER_UNSPECIFIED
    force_model: str = ""
    max_cost_usd: float | None = None
    expectations: Expectations = field(default_factory=Expectations)
    buffered_stream: bool = False

    @functools.cached_property
    def chat(self) -> list[dict[str, str]]:
        """The conversation as LiteLLM takes it (computed once per request)."""
        return [
            {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
            for m in self.messages
        ]


@dataclass(slots=True)
class Choice:
    """One eligible candidate, with its call route and cost estimate."""

    spec: ModelSpec
    tier: int
    route: Route
    estimated_cost_usd: float
    price_known: bool


@dataclass(slots=True)
class Plan:
    """Eligible candidates per tier, from the chosen tier up, worked out only when needed (most
    requests never look past the first tier); `explained` is what the response shows."""

    tiers: list[int]
    explained: list[router_pb2.Candidate]
    build: Callable[[int], list[Choice]]
    built: dict[int, list[Choice]] = field(default_factory=dict)

    def choices(self, tier: int) -> list[Choice]:
        if tier not in self.built:
            self.built[tier] = self.build(tier)
        return self.built[tier]


@dataclass(slots=True)
class Run:
    """One execution of a request: its decision, plan and attempts, accounted for when it ends."""

    verdict: classifier_pb2.ClassifyResponse
    warnings: list[str]
    classify_ms: float
    started: float
    plan: Plan
    outcomes: list[Outcome] = field(default_factory=list)
    answer: Outcome | None = None


@dataclass(slots=True)
class Outcome:
    """A finished provider call (successful or not) as the router accounts for it."""

    attempt: router_pb2.Attempt
    content: str = ""
    finish_reason: str = ""
    simulated: bool = False
    judge_problem: str = ""  # why the LLM judge gave no verdict on this answer, if it did not


class Router:
    def __init__(
        self,
        *,
        settings: RouterSettings,
        policy: Callable[[], Policy],
        prices: Callable[[], PriceBook],
        providers: Providers,
        classifier: Classification,
        usage_sink: UsageSink,
        cooldowns: Cooldowns,
        validators: Sequence[Validator] = DEFAULT_VALIDATORS,
        budgets: BudgetGate | None = None,
        judge: Judge | None = None,
        explorer: Explorer | None = None,
        acompletion: Callable[..., Any] | None = None,
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._prices = prices
        self._providers = providers
        self._classifier = classifier
        self._usage_sink = usage_sink
        self._cooldowns = cooldowns
        self._validators = validators
        self._budgets = budgets
        self._judge = judge
        self._explorer = explorer
        self._acompletion = acompletion or litellm.acompletion

    def policy(self) -> Policy:
        """The policy in force now."""
        return self._policy()

    @property
    def budgets(self) -> BudgetGate | None:
        return self._budgets

    async def close(self, timeout: float = 5.0) -> None:
        """Let background explorations finish (then cancel them): their records reach the spool."""
        if self._explorer is not None:
            await self._explorer.drain(timeout)

    # ---- classification -------------------------------------------------------------------------

    async def decide(
        self, request: RouteInput, deadline: float | None
    ) -> tuple[classifier_pb2.ClassifyResponse, list[str]]:
        """Classification and budget check, concurrently. Near a soft limit, thresholds rise (cheaper tiers)."""
        if self._budgets is None:
            return await self.classify(request, deadline)
        classifying = asyncio.create_task(self.classify(request, deadline))
        try:
            budget = await self._budgets.check(request.caller)
        except BaseException:
            classifying.cancel()
            raise
        verdict, warnings = await classifying
        if not budget.current:
            if (
                self._settings.budget_fail_mode == "closed"
                and budget.state == ledger_pb2.BUDGET_STATE_UNSPECIFIED
            ):
                raise Unavailable(
                    "the caller's budget cannot be checked now (the ledger is unreachable) and this router "
                    "fails closed",
                    reason="BUDGET_CHECK_UNAVAILABLE",
                )
            warnings.append("budget_check_unavailable")
        if budget.state == ledger_pb2.BUDGET_STATE_SOFT_LIMIT and verdict.source in _SCORED_SOURCES:
            verdict.tier = request.pinned_policy.tier_for(
                verdict.score, verdict.family, verdict.category, shift=self._settings.budget_soft_limit_shift
            )
            warnings.append("budget_soft_limit")
        return verdict, warnings

    async def classify(
        self, request: RouteInput, deadline: float | None
    ) -> tuple[classifier_pb2.ClassifyResponse, list[str]]:
        """The verdict that drives the choice, and warnings. Never fails: degrades to the default tier."""
        policy = request.pinned_policy
        if request.force_model or request.force_tier:
            tier = request.force_tier or TIER_BY_NAME[policy.default_tier]
            return classifier_pb2.ClassifyResponse(
                tier=tier,
                source=common_pb2.CLASSIFIER_SOURCE_OVERRIDE,
                confidence=1.0,
                rationale="forced by the caller",
            ), []
        timeout = _bounded(self._settings.classify_timeout_seconds, deadline)
        try:
            verdict, warnings = await self._classifier.classify(
                request.messages, request.trace_id or request.request_id, timeout
            )
        except grpc.aio.AioRpcError as error:
            log.warning("classifier_unavailable", code=error.code().name, default_tier=policy.default_tier)
            return classifier_pb2.ClassifyResponse(
                tier=TIER_BY_NAME[policy.default_tier],
                source=common_pb2.CLASSIFIER_SOURCE_DEFAULT,
                rationale=f"classifier unavailable ({error.code().name}); policy default tier",
            ), [f"classifier_unavailable:{error.code().name}"]
        # The router's policy is authoritative for the cut points (the classifier may run another version).
        verdict.tier = policy.tier_for(verdict.score, verdict.family, verdict.category)
        return verdict, warnings

    # ---- selection --------------------------------------------------------------------------------

    def plan(self, request: RouteInput, tier: int, category: int) -> Plan:
        request = self.pinned(request)
        policy = request.pinned_policy
        output_estimate = request.max_output_tokens or policy.output_token_estimates.get(
            category_name(category), DEFAULT_OUTPUT_ESTIMATE
        )
        token_counts: dict[int, int] = {}  # one count per tokenizer, not per candidate

        def build(candidate_tier: int) -> list[Choice]:
            specs = (
                [_policy_spec(policy, request.force_model)]
                if request.force_model
                else policy.candidates(candidate_tier)
            )
            eligible: list[Choice] = []
            for spec in specs:
                choice, explained = self._consider(
                    spec, candidate_tier, output_estimate, request, token_counts
                )
                if candidate_tier == tier:
                    plan.explained.append(explained)
                if choice is not None:
                    eligible.append(choice)
            # Cheapest first; unpriced models last, in policy order (their cost is unknown, not zero).
            eligible.sort(key=lambda c: (not c.price_known, c.estimated_cost_usd if c.price_known else 0.0))
            return eligible

        tiers = [tier] if request.force_model else [t for t in TIERS_IN_ORDER if t >= tier]
        plan = Plan(tiers=tiers, explained=[], build=build)
        plan.choices(tier)
        plan.explained.sort(key=lambda c: (bool(c.skipped_reason), not c.price_known, c.estimated_cost_usd))
        return plan

    def _consider(
        self,
        spec: ModelSpec,
        tier: int,
        output_estimate: int,
        request: RouteInput,
        token_counts: dict[int, int],
    ) -> tuple[Choice | None, router_pb2.Candidate]:
        explained = router_pb2.Candidate(model=spec.model, tier=tier)
        price = request.pinned_prices.price(spec.model)
        tokenizer = _tokenizer_of(spec.model)
        if tokenizer not in token_counts:
            token_counts[tokenizer] = _count_tokens(spec.model, request.chat)
        input_tokens = token_counts[tokenizer]
        if price is not None:
            explained.price_known = True
            explained.estimated_cost_usd = request.pinned_prices.cost(
                spec.model, input_tokens, output_estimate
            ).usd
        route = self._providers.resolve(spec)
        skip = ""
        if route is None:
            skip = "no_credentials"
        elif price is not None and price.max_input_tokens and input_tokens > price.max_input_tokens:
            skip = "context_window"
        elif price is not None and request.expectations.json_schema is not None and not price.supports_json:
            skip = "no_json_schema_support"
        elif price is None and request.force_model:
            skip = "unpriced"  # a forced model must have a price (the map's or an override)
        elif self._cooldowns.in_cooldown(spec.model):
            skip = "cooldown"
        elif request.max_cost_usd is not None and not explained.price_known:
            skip = "unpriced_with_max_cost"  # its cost cannot be bounded
        elif request.max_cost_usd is not None and explained.estimated_cost_usd > request.max_cost_usd:
            skip = "over_max_cost"
        explained.skipped_reason = skip
        if skip or route is None:
            return None, explained
        return Choice(spec, tier, route, explained.estimated_cost_usd, explained.price_known), explained

    # ---- calling ----------------------------------------------------------------------------------

    def pinned(self, request: RouteInput) -> RouteInput:
        """The request as one run: a run id, and the current policy and prices fixed for its duration."""
        if request.policy is not None and request.prices is not None and request.run_id:
            return request
        return dataclasses.replace(
            request,
            policy=request.policy or self._policy(),
            prices=request.prices or self._prices(),
            run_id=request.run_id or uuid.uuid4().hex,
        )

    async def _begin(self, request: RouteInput, deadline: float | None) -> Run:
        if request.force_model and not request.pinned_policy.lists(request.force_model):
            raise InvalidArgument(
                [
                    (
                        "options.force_model",
                        f"{request.force_model[:200]!r} is not a model of the routing policy",
                    )
                ],
                reason="FORCED_MODEL_NOT_ALLOWED",
            )
        if not self._usage_sink.accepting():
            # Nothing paid may go unrecorded: refuse before classifying or calling anyone.
            raise Unavailable(
                "the router cannot record usage right now (its spool is failing or full); retry on "
                "another replica or later",
                reason="USAGE_NOT_RECORDABLE",
            )
        started = time.perf_counter()
        verdict, warnings = await self.decide(request, deadline)
        classify_ms = (time.perf_counter() - started) * 1000
        try:
            plan = self._checked_plan(request, verdict)
        except ServiceError:
            self._charge_not_routed(request, verdict, classify_ms)
            raise
        return Run(verdict, warnings, classify_ms, started, plan)

    def _charge_not_routed(
        self, request: RouteInput, verdict: classifier_pb2.ClassifyResponse, classify_ms: float
    ) -> None:
        """A refused request may still have paid for its classification (the LLM classifier): record it."""
        if verdict.overhead.cost_usd <= 0:
            return
        record = ledger_pb2.UsageRecord(
            request_id=request.request_id,
            run_id=request.run_id,
            policy_version=request.pinned_policy.version_id,
            attempt=1,
            caller=request.caller,
            category=verdict.category,
            tier=verdict.tier,
            score=verdict.score,
            classifier_source=verdict.source,
            classifier_version=verdict.version,
            model=NOT_ROUTED_MODEL,
            outcome=common_pb2.ATTEMPT_OUTCOME_NOT_ROUTED,
            classifier_cost_usd=verdict.overhead.cost_usd,
            price_map_version=request.pinned_prices.version,
            price_known=True,
            classify_ms=classify_ms,
            total_ms=classify_ms,
        )
        record.time.GetCurrentTime()
        self._usage_sink.submit([record])

    def _settle(self, request: RouteInput, run: Run) -> router_pb2.RouteResponse:
        """Build the response and hand every attempt to the ledger: on success, failure or cancel."""
        response = self._response(request, run)
        self._usage_sink.submit(self._records(request, run, response))
        if self._budgets is not None and run.outcomes:
            self._budgets.note_spend(request.caller)
        return response

    async def route(self, request: RouteInput, deadline: float | None) -> router_pb2.RouteResponse:
        request = self.pinned(request)
        run = await self._begin(request, deadline)
        try:
            run.answer = await self._call_plan(request, run.plan, deadline, run.outcomes)
        finally:
            response = self._settle(request, run)
        if run.answer is None:
            raise _all_failed(run.outcomes)
        self._maybe_explore(request, run)
        log.info(
            "route_completed",
            model=response.model,
            tier=NAME_BY_TIER.get(response.tier),
            attempts=len(run.outcomes),
            cost_usd=response.usage.cost_usd,
            total_ms=round(response.timings.total_ms, 2),
        )
        return response

    def _checked_plan(self, request: RouteInput, verdict: classifier_pb2.ClassifyResponse) -> Plan:
        plan = self.plan(request, verdict.tier, verdict.category)
        if any(plan.choices(t) for t in plan.tiers):
            return plan
        reasons = sorted({c.skipped_reason for c in plan.explained})
        if request.max_cost_usd is not None and "over_max_cost" in reasons:
            cheapest = min(c.estimated_cost_usd for c in plan.explained if c.price_known)
            raise ResourceExhausted(
                f"no candidate fits max_cost_usd={request.max_cost_usd}; the cheapest estimate is {cheapest:.6f}",
                reason="MAX_COST_EXCEEDED",
                metadata={"max_cost_usd": request.max_cost_usd, "cheapest_estimate_usd": f"{cheapest:.6f}"},
            )
        if request.force_model:
            reason = plan.explained[0].skipped_reason if plan.explained else "unknown"
            raise FailedPrecondition(
                f"forced model {request.force_model!r} cannot be used now: {reason}",
                reason="FORCED_MODEL_UNAVAILABLE",
                metadata={"model": request.force_model, "skipped_reason": reason},
            )
        raise Unavailable(
            "no candidate model is available for this request",
            reason="NO_CANDIDATE_AVAILABLE",
            metadata={"tier": NAME_BY_TIER.get(verdict.tier, ""), "skipped": ",".join(reasons)},
        )

    async def _call_plan(
        self, request: RouteInput, plan: Plan, deadline: float | None, outcomes: list[Outcome]
    ) -> Outcome | None:
        """Try candidates cheapest first, then the next tier up; escalate on rejected output."""
        rejected: Outcome | None = None
        for index, tier in enumerate(plan.tiers):
            for choice in plan.choices(tier):
                if not self._affordable(request, choice, outcomes):
                    continue
                outcome = await self._call_with_retries(request, choice, deadline, outcomes)
                if outcome is None:
                    continue  # provider failure: next candidate
                reason = first_failure(
                    Answer(outcome.content, outcome.finish_reason, outcome.attempt.usage.output_tokens),
                    request.expectations,
                    self._validators,
                )
                if reason is None and self._judge is not None and self._judge.grades(tier):
                    reason = await self._judged(request, outcome, deadline)
                if reason is None:
                    return outcome
                escalate = self._settings.escalate_on_validation_failure and any(
                    plan.choices(t) for t in plan.tiers[index + 1 :]
                )
                outcome.attempt.outcome = (
                    common_pb2.ATTEMPT_OUTCOME_ESCALATED
                    if escalate
                    else common_pb2.ATTEMPT_OUTCOME_VALIDATION_FAILED
                )
                outcome.attempt.error = reason
                log.info("output_rejected", model=choice.spec.model, reason=reason, escalate=escalate)
                if not escalate:
                    return outcome  # rejected, and nowhere to escalate: better than an error
                rejected = outcome
                break  # the next tier up
        # Nothing passed validation: the last rejected answer is still better than an error.
        return rejected

    async def _judged(self, request: RouteInput, outcome: Outcome, deadline: float | None) -> str | None:
        """The LLM judge's reason to reject the answer, or None (passed, or no usable verdict)."""
        assert self._judge is not None
        try:
            async with asyncio.timeout_at(deadline):
                grade = await self._judge.grade(
                    request.chat, outcome.content, request.pinned_prices, tier=outcome.attempt.tier
                )
        except TimeoutError:
            _raise_if_past(deadline)  # the client's deadline passed while the judge was grading
            raise
        outcome.attempt.judge_cost_usd = grade.cost_usd
        outcome.attempt.judge_verdict = _judge_verdict(grade.passed)  # type: ignore[assignment]
        if grade.passed is None:
            outcome.judge_problem = grade.problem
            return None
        return None if grade.passed else "judge_rejected"

    def _affordable(self, request: RouteInput, choice: Choice, outcomes: list[Outcome]) -> bool:
        """With max_cost_usd, a fallback is tried only if what was spent plus its estimate still fits."""
        if request.max_cost_usd is None:
            return True
        spent = sum(o.attempt.usage.cost_usd for o in outcomes)
        return spent + choice.estimated_cost_usd <= request.max_cost_usd

    async def _call_with_retries(
        self, request: RouteInput, choice: Choice, deadline: float | None, outcomes: list[Outcome]
    ) -> Outcome | None:
        model = choice.spec.model
        for retry in range(self._settings.retries_per_model + 1):
            if not self._cooldowns.available(model):
                return None
            await self._hold(request, choice)
            outcome, transient = await self._call_once(request, choice, deadline, outcomes)
            if outcome.attempt.outcome == common_pb2.ATTEMPT_OUTCOME_OK:
                self._cooldowns.success(model)
                return outcome
            if _past(deadline):  # the client's deadline, not the model's fault: no cooldown
                self._cooldowns.release(model)
                _raise_if_past(deadline)
            if not transient:
                # A request the provider rejects (400, 401, content policy...) says nothing about the
                # model's health: no cooldown; the probe slot, if this was the probe, is released.
                self._cooldowns.release(model)
                return None
            self._cooldowns.failure(model)
            if retry == self._settings.retries_per_model:
                return None
            backoff = self._settings.retry_backoff_seconds * (2**retry)
            if deadline is not None and asyncio.get_running_loop().time() + backoff >= deadline:
                return None
            await asyncio.sleep(backoff)
        return None

    async def _hold(self, request: RouteInput, choice: Choice) -> None:
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

    def _call_kwargs(
        self, request: RouteInput, choice: Choice, deadline: float | None, dispatch: _Dispatch
    ) -> dict[str, Any]:
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

    async def _call_once(
        self, request: RouteInput, choice: Choice, deadline: float | None, outcomes: list[Outcome]
    ) -> tuple[Outcome, bool]:
        """One provider call, appended to `outcomes`. Returns it and whether a failure is worth retrying."""
        _raise_if_past(deadline)
        attempt = router_pb2.Attempt(
            model=choice.spec.model,
            provider=choice.route.provider,
            tier=choice.tier,
            price_known=choice.price_known,
        )
        outcome = Outcome(attempt, simulated=choice.route.simulated)
        outcomes.append(outcome)
        dispatch = _Dispatch()
        kwargs = self._call_kwargs(request, choice, deadline, dispatch)  # our bugs are not provider errors
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                with tracing.span("provider_call", **{"llmroute.model": choice.spec.model}):
                    response = await self._acompletion(**kwargs)
        except asyncio.CancelledError:
            # The caller went away: the provider call is cancelled with us; charge the prompt it was sent.
            attempt.outcome = common_pb2.ATTEMPT_OUTCOME_CANCELLED
            attempt.latency_ms = (time.perf_counter() - started) * 1000
            self._charge_estimate(attempt, request)
            self._cooldowns.release(choice.spec.model)
            dispatch.forget_if_unsent(outcome, outcomes)
            raise
        except Exception as error:
            dispatch.forget_if_unsent(outcome, outcomes)
            attempt.latency_ms = (time.perf_counter() - started) * 1000
            if isinstance(error, TimeoutError | litellm.Timeout):
                self._charge_estimate(attempt, request)  # the prompt was sent: charged as on cancel
            transient = isinstance(error, TRANSIENT_ERRORS)
            attempt.outcome = (
                common_pb2.ATTEMPT_OUTCOME_TIMEOUT
                if isinstance(error, litellm.Timeout | TimeoutError)
                else common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR
            )
            attempt.error = _provider_error(error)
            log.warning(
                "provider_error",
                model=choice.spec.model,
                error_type=type(error).__name__,
                transient=transient,
            )
            return outcome, transient
        attempt.latency_ms = (time.perf_counter() - started) * 1000
        self._charge(request, attempt, response.usage)
        attempt.outcome = common_pb2.ATTEMPT_OUTCOME_OK
        outcome.content = response.choices[0].message.content or ""
        outcome.finish_reason = response.choices[0].finish_reason or ""
        return outcome, False

    def _charge(self, request: RouteInput, attempt: router_pb2.Attempt, usage: Any) -> None:
        """Fill the attempt's usage from the provider's token counts, priced by the price map."""
        input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cached = int(getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0) or 0)
        reasoning = int(
            getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", 0) or 0
        )
        cost = request.pinned_prices.cost(attempt.model, input_tokens, output_tokens, cached, reasoning)
        attempt.usage.input_tokens = input_tokens
        attempt.usage.output_tokens = output_tokens
        attempt.usage.cached_input_tokens = cached
        attempt.usage.reasoning_tokens = reasoning
        attempt.usage.cost_usd = cost.usd
        attempt.price_known = cost.known
        if not cost.known:
            log.warning("price_unknown", model=attempt.model)

    def _charge_estimate(
        self, attempt: router_pb2.Attempt, request: RouteInput, output_tokens: int = 0
    ) -> None:
        input_tokens = _count_tokens(attempt.model, request.chat)
        cost = request.pinned_prices.cost(attempt.model, input_tokens, output_tokens)
        attempt.usage.input_tokens = input_tokens
        attempt.usage.output_tokens = output_tokens
        attempt.usage.cost_usd = cost.usd
        attempt.price_known = cost.known

    # ---- streaming --------------------------------------------------------------------------------

    async def route_stream(
        self, request: RouteInput, deadline: float | None
    ) -> AsyncIterator[router_pb2.RouteStreamResponse]:
        """Deltas as the provider sends them, then the summary.

        Fallback to the next candidate happens only before the first delta; output validation and
        escalation need `buffered_stream`, which validates the whole answer before sending it.
        """
        request = self.pinned(request)
        if request.buffered_stream:
            response = await self.route(request, deadline)
            yield router_pb2.RouteStreamResponse(delta=router_pb2.ContentDelta(content=response.content))
            yield router_pb2.RouteStreamResponse(summary=response)
            return
        run = await self._begin(request, deadline)
        outcomes = run.outcomes
        try:
            for tier in run.plan.tiers:
                for choice in run.plan.choices(tier):
                    _raise_if_past(deadline)
                    if not self._affordable(request, choice, outcomes) or not self._cooldowns.available(
                        choice.spec.model
                    ):
                        continue
                    await self._hold(request, choice)
                    async with contextlib.aclosing(
                        self._stream_once(request, choice, deadline, outcomes)
                    ) as stream:
                        async for delta in stream:
                            yield router_pb2.RouteStreamResponse(delta=router_pb2.ContentDelta(content=delta))
                    if outcomes and outcomes[-1].attempt.outcome == common_pb2.ATTEMPT_OUTCOME_OK:
                        run.answer = outcomes[-1]
                        break
                if run.answer is not None:
                    break
        finally:
            response = self._settle(request, run)
        if run.answer is None:
            raise _all_failed(outcomes)
        self._maybe_explore(request, run)
        yield router_pb2.RouteStreamResponse(summary=response)

    async def _stream_once(
        self, request: RouteInput, choice: Choice, deadline: float | None, outcomes: list[Outcome]
    ) -> AsyncGenerator[str, None]:
        """Yield deltas of one streamed call; append its outcome. Raises if it fails after the first delta."""
        attempt = router_pb2.Attempt(
            model=choice.spec.model,
            provider=choice.route.provider,
            tier=choice.tier,
            price_known=choice.price_known,
        )
        outcome = Outcome(attempt, simulated=choice.route.simulated)
        outcomes.append(outcome)
        parts: list[str] = []
        usage = None
        dispatch = _Dispatch()
        kwargs = self._call_kwargs(request, choice, deadline, dispatch)
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                stream = await self._acompletion(
                    **kwargs, stream=True, stream_options={"include_usage": True}
                )
                async for chunk in stream:
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
            self._charge_estimate(attempt, request, _rough_tokens("".join(parts)))
            self._cooldowns.release(choice.spec.model)
            dispatch.forget_if_unsent(outcome, outcomes)
            raise
        except Exception as error:
            dispatch.forget_if_unsent(outcome, outcomes)
            attempt.outcome = (
                common_pb2.ATTEMPT_OUTCOME_TIMEOUT
                if isinstance(error, litellm.Timeout | TimeoutError)
                else common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR
            )
            attempt.error = _provider_error(error)
            if isinstance(error, TRANSIENT_ERRORS) and not _past(deadline):
                self._cooldowns.failure(choice.spec.model)
            else:
                self._cooldowns.release(choice.spec.model)
            if parts or isinstance(error, TimeoutError | litellm.Timeout):
                # The prompt was processed (and part of an answer generated): charged as on cancel.
                # An error before any output (a 5xx, a refused request) is not billed, as in Route.
                self._charge_estimate(attempt, request, _rough_tokens("".join(parts)))
            log.warning(
                "provider_stream_error",
                model=choice.spec.model,
                error_type=type(error).__name__,
                after_first_delta=bool(parts),
            )
            if parts:
                raise Unavailable(
                    f"{choice.spec.model} failed mid-stream; the partial answer cannot be retried",
                    reason="PROVIDER_STREAM_BROKEN",
                    metadata={"model": choice.spec.model},
                ) from None
            return
        finally:
            attempt.latency_ms = (time.perf_counter() - started) * 1000
        outcome.content = "".join(parts)
        if usage is not None:
            self._charge(request, attempt, usage)
        else:
            self._charge_estimate(attempt, request, _rough_tokens(outcome.content))
        attempt.outcome = common_pb2.ATTEMPT_OUTCOME_OK
        self._cooldowns.success(choice.spec.model)

    # ---- accounting -------------------------------------------------------------------------------

    def _response(self, request: RouteInput, run: Run) -> router_pb2.RouteResponse:
        verdict, plan, outcomes, answer = run.verdict, run.plan, run.outcomes, run.answer
        if answer is not None:
            usage = answer.attempt.usage
            usage.baseline_cost_usd, usage.baseline_reasoning_cost_usd = self._baseline_cost(request, usage)
        response = router_pb2.RouteResponse(
            request_id=request.request_id,
            run_id=request.run_id,
            classification=verdict,
            candidates=plan.explained,
            attempts=[o.attempt for o in outcomes],
            price_map_version=request.pinned_prices.version,
            warnings=run.warnings,
        )
        for outcome in outcomes:
            usage = outcome.attempt.usage
            response.usage.input_tokens += usage.input_tokens
            response.usage.output_tokens += usage.output_tokens
            response.usage.cached_input_tokens += usage.cached_input_tokens
            response.usage.reasoning_tokens += usage.reasoning_tokens
            response.usage.cost_usd += usage.cost_usd
            if not outcome.attempt.price_known and outcome.attempt.usage.input_tokens:
                response.warnings.append(f"price_unknown:{outcome.attempt.model}")
            if outcome.judge_problem:
                response.warnings.append(f"judge_unavailable:{outcome.judge_problem}")
        if answer is not None:
            response.content = answer.content
            response.finish_reason = answer.finish_reason
            response.model = answer.attempt.model
            response.tier = answer.attempt.tier
            response.simulated = answer.simulated
            response.usage.baseline_cost_usd = answer.attempt.usage.baseline_cost_usd
            response.usage.baseline_reasoning_cost_usd = answer.attempt.usage.baseline_reasoning_cost_usd
            if answer.attempt.outcome != common_pb2.ATTEMPT_OUTCOME_OK:
                response.warnings.append(f"output_rejected:{answer.attempt.error}")
        response.timings.classify_ms = run.classify_ms
        response.timings.provider_ms = sum(o.attempt.latency_ms for o in outcomes)
        response.timings.total_ms = (time.perf_counter() - run.started) * 1000
        return response

    def _baseline_cost(self, request: RouteInput, usage: common_pb2.Usage) -> tuple[float, float]:
        """The counterfactual: what the baseline model would have charged for the same answer, and the
        part of that for reasoning.

        Input tokens (the cached ones at its cached rate) and the visible output tokens, at the
        baseline's prices; the answering model's reasoning tokens only when the policy configures the
        baseline to reason, since a baseline that does not reason would not have produced them.
        """
        policy = request.pinned_policy
        visible = max(0, usage.output_tokens - usage.reasoning_tokens)
        reasoning = usage.reasoning_tokens if policy.baseline_reasoning_effort else 0
        prices = request.pinned_prices
        total = prices.cost(
            policy.baseline_model,
            usage.input_tokens,
            visible + reasoning,
            usage.cached_input_tokens,
            reasoning,
        ).usd
        price = prices.price(policy.baseline_model)
        return total, (reasoning * price.reasoning_per_token if price is not None else 0.0)

    def _records(
        self, request: RouteInput, run: Run, response: router_pb2.RouteResponse
    ) -> list[ledger_pb2.UsageRecord]:
        outcomes, answer = run.outcomes, run.answer
        records = []
        for number, outcome in enumerate(outcomes, start=1):
            final = outcome is answer
            record = _record(request, run.verdict, outcome, number, final=final)
            if number == 1:
                record.classifier_cost_usd = run.verdict.overhead.cost_usd
                record.classify_ms = response.timings.classify_ms
            if final or number == len(outcomes):
                record.total_ms = response.timings.total_ms
            records.append(record)
        return records

    # ---- exploration ------------------------------------------------------------------------------

    def _maybe_explore(self, request: RouteInput, run: Run) -> None:
        """Answer a sampled share of requests again with the next tier down, in the background, and
        let the judge compare (router_svc/exploration.py)."""
        explorer, judge, answer = self._explorer, self._judge, run.answer
        if explorer is None or judge is None or answer is None or not explorer.sampled():
            return
        # Every sampled request routed above the cheapest tier, whatever became of its answer (one
        # rejected or escalated included: leaving those out would hide the cheaper tier's failures).
        routed = run.plan.tiers[0]
        if run.verdict.source not in _SCORED_SOURCES or routed == TIERS_IN_ORDER[0]:
            return  # forced or the classifier's default; or nothing cheaper
        lower = TIERS_IN_ORDER[TIERS_IN_ORDER.index(routed) - 1]
        choices = self.plan(request, lower, run.verdict.category).choices(lower)
        if not choices:
            return
        choice = choices[0]
        exhibit_tokens = (sum(len(m["content"]) for m in request.chat) + 2 * len(answer.content)) // 4 + 300
        reserved = choice.estimated_cost_usd + request.pinned_prices.cost(judge.model, exhibit_tokens, 60).usd
        if not explorer.budget.reserve(reserved):
            log.info(
                "exploration_skipped", reason="daily_budget", spent_usd=round(explorer.budget.spent_usd, 6)
            )
            return
        explorer.start(self._explore(request, run, choice, reserved))

    async def _explore(self, request: RouteInput, run: Run, choice: Choice, reserved: float) -> None:
        assert self._explorer is not None and self._judge is not None and run.answer is not None
        outcomes: list[Outcome] = []
        deadline = asyncio.get_running_loop().time() + self._settings.exploration_timeout_seconds
        try:
            outcome, _ = await self._call_once(request, choice, deadline, outcomes)
            attempt = outcome.attempt
            if attempt.outcome == common_pb2.ATTEMPT_OUTCOME_OK:
                problem = first_failure(
                    Answer(outcome.content, outcome.finish_reason, attempt.usage.output_tokens),
                    request.expectations,
                    self._validators,
                )
                if problem is not None:  # fails the rule-based checks: not good enough, no judge needed
                    attempt.judge_verdict, attempt.error = common_pb2.JUDGE_VERDICT_FAIL, problem
                else:
                    grade = await self._judge.compare(
                        request.chat,
                        run.answer.content,
                        outcome.content,
                        request.pinned_prices,
                        tier=choice.tier,
                    )
                    attempt.judge_cost_usd = grade.cost_usd
                    attempt.judge_verdict = _judge_verdict(grade.passed)
        except ServiceError as error:  # the exploration's own deadline
            log.info("exploration_failed", reason=error.reason)
        finally:
            spent = sum(o.attempt.usage.cost_usd + o.attempt.judge_cost_usd for o in outcomes)
            self._explorer.budget.settle(reserved, spent)
            records = [
                _record(request, run.verdict, o, 1001 + i, final=False, exploration=True)
                for i, o in enumerate(outcomes)
            ]
            self._usage_sink.submit(records)
            log.info(
                "exploration_done",
                tier=NAME_BY_TIER.get(choice.tier),
                model=choice.spec.model,
                verdict=[common_pb2.JudgeVerdict.Name(o.attempt.judge_verdict) for o in outcomes],
                cost_usd=spent,
            )


def _judge_verdict(passed: bool | None) -> int:
    if passed is None:
        return common_pb2.JUDGE_VERDICT_UNAVAILABLE
    return common_pb2.JUDGE_VERDICT_PASS if passed else common_pb2.JUDGE_VERDICT_FAIL


def _record(
    request: RouteInput,
    verdict: classifier_pb2.ClassifyResponse,
    outcome: Outcome,
    number: int,
    *,
    final: bool,
    exploration: bool = False,
) -> ledger_pb2.UsageRecord:
    attempt = outcome.attempt
    record = ledger_pb2.UsageRecord(
        request_id=request.request_id,
        run_id=request.run_id,
        policy_version=request.pinned_policy.version_id,
        attempt=number,
        caller=request.caller,
        category=verdict.category,
        tier=attempt.tier,
        score=verdict.score,
        classifier_source=verdict.source,
        classifier_version=verdict.version,
        family=verdict.family,
        model=attempt.model,
        provider=attempt.provider,
        outcome=attempt.outcome,
        error=attempt.error[:ERROR_CHARS],
        usage=attempt.usage,
        price_map_version=request.pinned_prices.version,
        price_known=attempt.price_known,
        provider_ms=attempt.latency_ms,
        cache_hit=verdict.source == common_pb2.CLASSIFIER_SOURCE_CACHE,
        final=final,
        judge_cost_usd=attempt.judge_cost_usd,
        judge_verdict=attempt.judge_verdict,
        exploration=exploration,
        simulated=outcome.simulated,
    )
    record.time.GetCurrentTime()
    return record


# The ledger refuses a record whose error text is longer (ledger_svc/validation.py MAX_ERROR_CHARS): a
# reason and a status fit; a judge's long explanation is cut rather than have its record refused.
ERROR_CHARS = 500


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


def _all_failed(outcomes: list[Outcome]) -> Unavailable:
    last = outcomes[-1].attempt if outcomes else None
    return Unavailable(
        f"every candidate model failed ({len(outcomes)} attempts); last error: {last.error if last else 'none'}",
        reason="ALL_PROVIDERS_FAILED",
        metadata={"attempts": len(outcomes), "last_model": last.model if last else ""},
    )


def _past(deadline: float | None) -> bool:
    return deadline is not None and asyncio.get_running_loop().time() >= deadline


def _raise_if_past(deadline: float | None) -> None:
    if _past(deadline):
        raise DeadlineExceeded(
            "the request's deadline passed before a model answered", reason="DEADLINE_EXCEEDED"
        )


def _bounded(limit: float, deadline: float | None) -> float:
    if deadline is None:
        return limit
    return max(0.001, min(limit, deadline - asyncio.get_running_loop().time()))


def _count_tokens(model: str, messages: list[dict[str, str]]) -> int:
    try:
        return int(litellm.token_counter(model=model, messages=messages))
    except Exception:  # unknown tokenizer: fall back to the usual 4 characters a token
        return sum(_rough_tokens(m["content"]) for m in messages)


def _policy_spec(policy: Policy, model: str) -> ModelSpec:
    """A forced model keeps its policy parameters (api_base, params...) when the policy lists it."""
    for specs in policy.tiers.values():
        for spec in specs:
            if spec.model == model:
                return spec
    return ModelSpec(model=model)


@functools.lru_cache(maxsize=1024)
def _tokenizer_of(model: str) -> int:
    """Identity of the tokenizer LiteLLM counts this model's tokens with (models share them)."""
    try:
        return id(litellm.utils._select_tokenizer(model)["tokenizer"])
    except Exception:  # no tokenizer known: counted on its own
        return hash(model)


def _rough_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _provider_error(error: Exception) -> str:
    """What an attempt records of a provider error: its kind and HTTP status, never its text (a
    provider's message can quote the prompt or a key), for clients and the ledger alike."""
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__} ({status})" if isinstance(status, int) else type(error).__name__
