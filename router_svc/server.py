"""The RouterService gRPC server: request validation and wiring; the routing itself is in router.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import structlog

from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc import background, metering
from router_svc.accounting import UsageSink
from router_svc.budgets import BudgetGate
from router_svc.classification import Classification
from router_svc.cooldown import Cooldowns
from router_svc.exploration import ExplorationBudget, Explorer
from router_svc.idempotency import Idempotency, IdempotencyCache
from router_svc.judge import Judge
from router_svc.metering import MeteredSink
from router_svc.parsing import max_request_bytes, parse_request
from router_svc.providers import Providers
from router_svc.request import RouteInput
from router_svc.router import Router
from router_svc.settings import RouterSettings
from router_svc.shared import SharedCooldowns, SharedIdempotency, SharedState
from service_kit import auth, tls, tracing
from service_kit import server as service_server
from service_kit.litellm_offline import litellm
from service_kit.policy import TIER_BY_NAME
from service_kit.policy_source import PolicySource
from service_kit.pricing import PriceSource

log = structlog.get_logger()

# A health component: SERVING when calls go to real providers, NOT_SERVING when the simulator answers all.
PROVIDERS_HEALTH = "llmroute.real_providers"
# Who may call what, when keys are required (service_kit/auth.py).
RULES = {"Route": ("caller", "admin"), "RouteStream": ("caller", "admin")}

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self,
        router: Router,
        settings: RouterSettings,
        idempotency: Idempotency,
        shared: SharedState | None = None,
    ) -> None:
        self._router = router
        self._settings = settings
        self._idempotency = idempotency
        self._shared = shared

    def _noted(self, response: router_pb2.RouteResponse) -> router_pb2.RouteResponse:
        if self._shared is not None and not self._shared.available:
            response.warnings.append("shared_state_unavailable")
        return response

    async def Route(
        self,
        request: router_pb2.RouteRequest,
        context: grpc.aio.ServicerContext[router_pb2.RouteRequest, router_pb2.RouteResponse],
    ) -> router_pb2.RouteResponse:
        route_input = _bound(parse_request(request, context.invocation_metadata(), self._settings))
        if not route_input.client_request_id:  # a generated id is never retried
            return self._noted(await self._router.route(route_input, _deadline(context)))
        key = (route_input.caller, route_input.request_id)
        replay = await self._idempotency.claim(key, route_input.fingerprint)
        if replay is not None:
            log.info("route_replayed", run_id=replay.run_id)
            return replay
        try:
            response = self._noted(await self._router.route(route_input, _deadline(context)))
        except BaseException as error:
            self._idempotency.fail(key, error)
            raise
        self._idempotency.finish(key, response)
        return response

    async def RouteStream(
        self,
        request: router_pb2.RouteStreamRequest,
        context: grpc.aio.ServicerContext[router_pb2.RouteStreamRequest, router_pb2.RouteStreamResponse],
    ) -> AsyncIterator[router_pb2.RouteStreamResponse]:
        route_input = _bound(parse_request(request, context.invocation_metadata(), self._settings))
        stream = self._router.route_stream(route_input, _deadline(context))
        if not route_input.client_request_id:
            async for event in stream:
                yield event
            return
        key = (route_input.caller, route_input.request_id)
        replay = await self._idempotency.claim(key, route_input.fingerprint)
        if replay is not None:
            # A retried stream: the whole answer as one delta, then the first run's summary.
            log.info("route_replayed", run_id=replay.run_id)
            yield router_pb2.RouteStreamResponse(delta=router_pb2.ContentDelta(content=replay.content))
            yield router_pb2.RouteStreamResponse(summary=replay)
            return
        try:
            async for event in stream:
                if event.HasField("summary"):
                    self._noted(event.summary)
                    self._idempotency.finish(key, event.summary)  # before the client can go away
                yield event
        except BaseException as error:
            self._idempotency.fail(key, error)  # no-op once finished
            raise
        self._idempotency.fail(key, RuntimeError("the stream ended without a summary"))


def _bound(route_input: RouteInput) -> RouteInput:
    structlog.contextvars.bind_contextvars(
        request_id=route_input.request_id, trace_id=route_input.trace_id, caller=route_input.caller
    )
    tracing.tag_request(route_input.request_id)
    return route_input


def build_usage_sink(settings: RouterSettings) -> UsageSink:
    from ledger_client import LedgerReporter

    return LedgerReporter(
        address=settings.ledger_address,
        spool_path=Path(settings.spool_path),
        sender=settings.replica_id,
        fsync=settings.spool_fsync,
        max_bytes=settings.spool_max_bytes,
        max_age_seconds=settings.spool_max_age_seconds,
        key=_service_key(settings),
        credentials=_peer_credentials(settings),
    )


def _ledger_keys(ledger: ledger_pb2_grpc.LedgerServiceAsyncStub) -> auth.Lookup:
    async def lookup(key_id: str, key_digest: str) -> auth.Principal | None:
        reply = await ledger.LookupKey(ledger_pb2.LookupKeyRequest(id=key_id, sha256=key_digest), timeout=2)
        if not reply.found:
            return None
        key = reply.key
        return auth.Principal(key.name, frozenset(key.roles), tuple(key.callers), key.id)

    return lookup


def _spool_depth(sink: UsageSink) -> int:
    stats = getattr(sink, "stats", None)
    return int(stats().depth) if stats is not None else 0


def _service_key(settings: RouterSettings) -> str | None:
    return settings.service_key.get_secret_value() if settings.service_key else None


def _peer_credentials(settings: RouterSettings) -> grpc.ChannelCredentials | None:
    return tls.channel_credentials(settings.peer_ca_file, settings.tls_cert_file, settings.tls_key_file)


async def create_server(
    settings: RouterSettings, usage_sink: UsageSink | None = None, judge: Judge | None = None
) -> service_server.RunningServer:
    """The router, serving. `usage_sink` and `judge` replace the ledger reporter and the LLM judge the
    settings would build (tests and `make replay` pass their own)."""
    policy = PolicySource(settings.policy_path)
    prices = PriceSource(
        settings.price_overrides_path, settings.price_refresh_from, settings.price_refresh_seconds
    )
    providers = Providers(settings.simulator, settings.simulator_url)
    classifier = Classification.from_settings(settings)
    sink: UsageSink = MeteredSink(usage_sink if usage_sink is not None else build_usage_sink(settings))
    ledger_channel = auth.channel(
        settings.ledger_address, _service_key(settings), credentials=_peer_credentials(settings)
    )
    budgets = (
        BudgetGate(
            ledger_pb2_grpc.LedgerServiceStub(ledger_channel),
            settings.budget_check_ttl_seconds,
            settings.budget_check_timeout_seconds,
            hold_timeout_seconds=settings.budget_hold_timeout_seconds,
        )
        if settings.budgets_enabled
        else None
    )
    judge = judge or (
        Judge(
            model=settings.judge_model,
            tiers=frozenset(TIER_BY_NAME[t] for t in settings.judge_tiers),
            providers=providers,
            timeout_seconds=settings.judge_timeout_seconds,
            max_chars=settings.judge_max_chars,
            acompletion=litellm.acompletion,
        )
        if settings.judge_model
        else None
    )
    explorer = None
    if settings.exploration_rate > 0:
        if judge is None:
            log.warning("exploration_off", reason="ROUTER_EXPLORATION_RATE needs ROUTER_JUDGE_MODEL")
        else:
            budget = ExplorationBudget(
                settings.exploration_daily_budget_usd, ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
            )
            draw = (
                random.Random(settings.exploration_seed).random
                if settings.exploration_seed is not None
                else random.random
            )
            explorer = Explorer(settings.exploration_rate, budget, draw)
    cooldowns = Cooldowns(settings.cooldown_after_failures, settings.cooldown_seconds)
    metering.watch(cooldowns.open_count, lambda: _spool_depth(sink))
    router = Router(
        settings=settings,
        policy=policy.current,
        prices=prices.current,
        providers=providers,
        classifier=classifier,
        usage_sink=sink,
        cooldowns=cooldowns,
        budgets=budgets,
        judge=judge,
        explorer=explorer,
    )
    local = IdempotencyCache(
        settings.idempotency_ttl_seconds,
        settings.idempotency_max_entries,
        max_bytes=settings.idempotency_max_bytes,
    )
    idempotency: Idempotency = local
    shared = shared_cooldowns = None
    if settings.redis_url:
        shared = SharedState(settings.redis_url, settings.redis_prefix)
        idempotency = SharedIdempotency(shared, local, settings.idempotency_ttl_seconds)
        shared_cooldowns = SharedCooldowns(shared, cooldowns)
    # Keys created over the ledger's CreateKey: asked of the ledger, remembered a few seconds.
    ledger_keys = auth.KeyCache(
        _ledger_keys(ledger_pb2_grpc.LedgerServiceStub(ledger_channel)), ttl=settings.key_cache_seconds
    )
    gate = auth.gate_for("router", settings, RULES, ledger_keys)
    server = service_server.new_server(
        share_port=settings.workers > 1, gate=gate, max_receive_bytes=max_request_bytes(settings)
    )
    router_pb2_grpc.add_RouterServiceServicer_to_server(
        RouterServicer(router, settings, idempotency, shared), server
    )
    running = await service_server.start(
        server,
        settings.address,
        [SERVICE_NAME],
        tls.server_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file),
    )
    try:
        await background.start_background(
            running, settings, sink, policy, prices, classifier, ledger_channel, router
        )
        if shared is not None:
            await background.share(running, shared, idempotency, shared_cooldowns)
    except BaseException:
        await running.stop(0)  # no half-started router left behind; the error says why
        raise
    log.info(
        "router_ready",
        simulated=providers.simulate_all,
        price_map_version=prices.current().version,
        baseline_model=policy.current().baseline_model,
    )
    if providers.simulate_all and settings.simulator == "auto" and not auth.is_loopback(settings.host):
        # Not a developer's machine, and no provider key: a typo in a key's name, or an empty
        # `${OPENAI_API_KEY:-}`, would otherwise quietly answer every request from the simulator.
        log.error(
            "simulator_answers_every_call",
            reason="no provider API key is set",
            detail="set a key, or ROUTER_SIMULATOR=always to mean it, or never to fail instead",
        )
    # Health says who answers: the component is NOT_SERVING while every call goes to the simulator.
    await running.set_component(PROVIDERS_HEALTH, not providers.simulate_all)
    await running.set_serving()
    return running


def main() -> None:
    settings = RouterSettings()
    if settings.workers == 1:
        service_server.run_service("router", settings, create_server)
    else:
        service_server.run_workers(
            "router", lambda i: worker_settings(settings, i), settings.workers, create_server
        )


def worker_settings(settings: RouterSettings, index: int) -> RouterSettings:
    """Worker `index`'s settings: its own spool file (a spool has one writer)."""
    spool = Path(settings.spool_path)
    return settings.model_copy(update={"spool_path": spool.with_name(f"{spool.stem}-w{index}{spool.suffix}")})


if __name__ == "__main__":
    main()
