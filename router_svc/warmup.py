"""Warm-up: before reporting SERVING, call the routes most requests will take, so the first real
request does not pay connection set-up (TCP, TLS, HTTP/2) nor LiteLLM's first-call work.

Each warm-up call is a real 1-token completion, routed like any request (forced model, caller
`llmroute-warmup`), so what it costs is recorded in the ledger like everything else.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import grpc
import structlog

from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from router_svc import WARM_UP_CALLER
from router_svc.accounting import NOT_ROUTED_MODEL
from router_svc.request import RouteInput
from router_svc.router import Router
from service_kit.errors import ServiceError
from service_kit.policy import TIERS

log = structlog.get_logger()


async def most_used_models(
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub, limit: int, timeout: float
) -> list[str]:
    """The models that answered most requests in the last day, from the ledger; [] if it cannot say."""
    request = ledger_pb2.GetStatsRequest(
        window=ledger_pb2.TimeWindow(last_minutes=24 * 60), group_by=[ledger_pb2.GROUP_BY_MODEL]
    )
    try:
        stats = await ledger.GetStats(request, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        log.info("warm_up_stats_unavailable", code=error.code().name)
        return []
    groups = [g for b in stats.breakdowns for g in b.groups if g.key != NOT_ROUTED_MODEL]
    groups.sort(key=lambda g: g.totals.requests, reverse=True)
    return [g.key for g in groups[:limit]]


def warm_up_plan(router: Router, configured: Sequence[str], most_used: Sequence[str]) -> list[str]:
    """Configured models, else the ledger's most used ones that the policy still lists, plus the
    cheapest model of each tier."""
    if configured:
        return list(configured)
    listed = {spec.model for specs in router.policy().tiers.values() for spec in specs}
    models = [m for m in most_used if m in listed]
    return models + [m for m in default_models(router) if m not in models]


def default_models(router: Router) -> list[str]:
    """The cheapest eligible model of each tier: where most requests of each tier go."""
    probe = RouteInput(
        messages=(common_pb2.ChatMessage(role="user", content="ping"),), request_id="-", caller="-"
    )
    models: list[str] = []
    for tier in TIERS:
        choices = router.plan(probe, tier, common_pb2.CATEGORY_CHAT).choices(tier)
        if choices and choices[0].spec.model not in models:
            models.append(choices[0].spec.model)
    return models


async def warm_up(router: Router, models: Sequence[str], timeout_seconds: float) -> dict[str, float]:
    """Call each model once, concurrently; returns each one's latency in ms. Failures only log."""

    async def one(model: str) -> tuple[str, float]:
        request = RouteInput(
            messages=(common_pb2.ChatMessage(role="user", content="Reply with the single word: ok"),),
            request_id=f"warmup-{uuid.uuid4().hex}",
            caller=WARM_UP_CALLER,
            force_model=model,
            max_output_tokens=1,
        )
        started = time.perf_counter()
        try:
            await router.route(request, asyncio.get_running_loop().time() + timeout_seconds)
        except ServiceError as error:
            log.warning("warm_up_failed", model=model, reason=error.reason)
        return model, (time.perf_counter() - started) * 1000

    results = dict(await asyncio.gather(*(one(model) for model in models)))
    log.info("warm_up_done", models=list(results), latency_ms={m: round(v, 1) for m, v in results.items()})
    return results
