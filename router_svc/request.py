"""Step 1 of a Route: the request, and the policy and prices it is routed under.

`RouteInput` is what the server validated. `pin` turns it into one run: a run id and the policy and
prices in force now, fixed for the run's duration, so a reload or a price refresh mid-request cannot
mix versions within one request's records. Also the request's deadline, as the steps after check it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import uuid
from dataclasses import dataclass, field

from llmroute.common.v1 import common_pb2
from router_svc.validators import Expectations
from service_kit.errors import DeadlineExceeded, Reason
from service_kit.policy import Policy
from service_kit.pricing import PriceBook


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
    max_output_tokens: int | None = None
    temperature: float | None = None
    force_tier: common_pb2.Tier.ValueType = common_pb2.TIER_UNSPECIFIED
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


@dataclass(frozen=True, kw_only=True)
class PinnedRequest(RouteInput):
    """One run of a request: with caller and request_id, `run_id` keys the ledger's records, so a run
    never collides with another's (a retry of a failed request is a new run)."""

    run_id: str
    policy: Policy
    prices: PriceBook


def pin(request: RouteInput, policy: Policy, prices: PriceBook) -> PinnedRequest:
    """The request as one run, under `policy` and `prices`; a pinned request stays as it is."""
    if isinstance(request, PinnedRequest):
        return request
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(RouteInput)}
    return PinnedRequest(**fields, run_id=uuid.uuid4().hex, policy=policy, prices=prices)


def past(deadline: float | None) -> bool:
    """Whether the request's deadline (event-loop time) has passed."""
    return deadline is not None and asyncio.get_running_loop().time() >= deadline


def raise_if_past(deadline: float | None) -> None:
    if past(deadline):
        raise DeadlineExceeded(
            "the request's deadline passed before a model answered", reason=Reason.DEADLINE_EXCEEDED
        )


def bounded(limit: float, deadline: float | None) -> float:
    """`limit` seconds, or what is left before the deadline if that is less (never zero)."""
    if deadline is None:
        return limit
    return max(0.001, min(limit, deadline - asyncio.get_running_loop().time()))
