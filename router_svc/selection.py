"""Step 3 of a Route: which models may answer, cheapest first.

For the decided tier and those above it, the policy's candidates, each priced for this conversation
(input tokens counted once per tokenizer, the output estimated per category) and checked: credentials,
context window, JSON support, cooldown, the caller's cost cap. `checked_plan` refuses the request,
with the reason, when no candidate is left.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from router_svc.cooldown import Cooldowns
from router_svc.decision import Decision
from router_svc.providers import Providers, Route
from router_svc.request import PinnedRequest
from service_kit.errors import FailedPrecondition, Reason, ResourceExhausted, Unavailable
from service_kit.litellm_offline import litellm
from service_kit.policy import NAME_BY_TIER, TIERS, ModelSpec, Policy, category_name

DEFAULT_OUTPUT_ESTIMATE = 300


@dataclass(slots=True)
class Choice:
    """One eligible candidate, with its call route and cost estimate."""

    spec: ModelSpec
    tier: common_pb2.Tier.ValueType
    route: Route
    estimated_cost_usd: float
    price_known: bool


@dataclass(slots=True)
class Plan:
    """Eligible candidates per tier, from the chosen tier up, worked out only when needed (most
    requests never look past the first tier); `explained` is what the response shows."""

    tiers: list[common_pb2.Tier.ValueType]
    explained: list[router_pb2.Candidate]
    build: Callable[[common_pb2.Tier.ValueType], list[Choice]]
    built: dict[common_pb2.Tier.ValueType, list[Choice]] = field(default_factory=dict)

    def choices(self, tier: common_pb2.Tier.ValueType) -> list[Choice]:
        if tier not in self.built:
            self.built[tier] = self.build(tier)
        return self.built[tier]

    def any_above(self, index: int) -> bool:
        """Whether a tier after `tiers[index]` has an eligible candidate (somewhere to escalate)."""
        return any(self.choices(t) for t in self.tiers[index + 1 :])


class Selector:
    def __init__(self, providers: Providers, cooldowns: Cooldowns) -> None:
        self._providers = providers
        self._cooldowns = cooldowns

    def checked_plan(self, request: PinnedRequest, decision: Decision) -> Plan:
        """The plan for the decided tier; a refusal that says why when nothing is eligible."""
        plan = self.plan(request, decision.tier, decision.verdict.category)
        if any(plan.choices(t) for t in plan.tiers):
            return plan
        reasons = sorted({c.skipped_reason for c in plan.explained})
        if request.max_cost_usd is not None and "over_max_cost" in reasons:
            cheapest = min(c.estimated_cost_usd for c in plan.explained if c.price_known)
            raise ResourceExhausted(
                f"no candidate fits max_cost_usd={request.max_cost_usd}; the cheapest estimate is {cheapest:.6f}",
                reason=Reason.MAX_COST_EXCEEDED,
                metadata={"max_cost_usd": request.max_cost_usd, "cheapest_estimate_usd": f"{cheapest:.6f}"},
            )
        if request.force_model:
            reason = plan.explained[0].skipped_reason if plan.explained else "unknown"
            raise FailedPrecondition(
                f"forced model {request.force_model!r} cannot be used now: {reason}",
                reason=Reason.FORCED_MODEL_UNAVAILABLE,
                metadata={"model": request.force_model, "skipped_reason": reason},
            )
        raise Unavailable(
            "no candidate model is available for this request",
            reason=Reason.NO_CANDIDATE_AVAILABLE,
            metadata={"tier": NAME_BY_TIER.get(decision.tier, ""), "skipped": ",".join(reasons)},
        )

    def plan(self, request: PinnedRequest, tier: common_pb2.Tier.ValueType, category: int) -> Plan:
        policy = request.policy
        output_estimate = request.max_output_tokens or policy.output_token_estimates.get(
            category_name(category), DEFAULT_OUTPUT_ESTIMATE
        )
        token_counts: dict[int, int] = {}  # one count per tokenizer, not per candidate

        def build(candidate_tier: common_pb2.Tier.ValueType) -> list[Choice]:
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

        tiers = [tier] if request.force_model else [t for t in TIERS if t >= tier]
        plan = Plan(tiers=tiers, explained=[], build=build)
        plan.choices(tier)
        plan.explained.sort(key=lambda c: (bool(c.skipped_reason), not c.price_known, c.estimated_cost_usd))
        return plan

    def _consider(
        self,
        spec: ModelSpec,
        tier: common_pb2.Tier.ValueType,
        output_estimate: int,
        request: PinnedRequest,
        token_counts: dict[int, int],
    ) -> tuple[Choice | None, router_pb2.Candidate]:
        explained = router_pb2.Candidate(model=spec.model, tier=tier)
        price = request.prices.price(spec.model)
        tokenizer = _tokenizer_of(spec.model)
        if tokenizer not in token_counts:
            token_counts[tokenizer] = count_tokens(spec.model, request.chat)
        input_tokens = token_counts[tokenizer]
        if price is not None:
            explained.price_known = True
            explained.estimated_cost_usd = request.prices.cost(spec.model, input_tokens, output_estimate).usd
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


def count_tokens(model: str, messages: list[dict[str, str]]) -> int:
    """The conversation's input tokens by the model's tokenizer (LiteLLM's); 4 characters a token when
    it has none."""
    try:
        return int(litellm.token_counter(model=model, messages=messages))
    except Exception:  # unknown tokenizer: fall back to the usual 4 characters a token
        return sum(rough_tokens(m["content"]) for m in messages)


def rough_tokens(text: str) -> int:
    return (len(text) + 3) // 4


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
        return id(litellm.utils.select_tokenizer(model)["tokenizer"])
    except Exception:  # no tokenizer known: counted on its own
        return hash(model)
