"""The RouterService gRPC server: request validation and wiring; the routing itself is in routing.py."""

from __future__ import annotations

import asyncio
import math
import random
import re
import signal
import uuid
from collections.abc import AsyncIterator, Hashable
from pathlib import Path
from typing import Protocol

import grpc
import structlog

from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc import metering, schemas
from router_svc._litellm import litellm
from router_svc.budgets import BudgetGate
from router_svc.classification import Classification
from router_svc.cooldown import Cooldowns
from router_svc.exploration import ExplorationBudget, Explorer
from router_svc.idempotency import IdempotencyCache, fingerprint
from router_svc.judge import Judge
from router_svc.metering import MeteredSink
from router_svc.pricing import PriceSource
from router_svc.providers import Providers
from router_svc.routing import RouteInput, Router, UsageSink
from router_svc.settings import RouterSettings
from router_svc.shared import HEALTH_COMPONENT, SYNC_SECONDS, SharedCooldowns, SharedIdempotency, SharedState
from router_svc.validators import Expectations
from router_svc.warmup import most_used_models, warm_up, warm_up_plan
from service_kit import auth, metadata, tls, tracing
from service_kit import server as service_server
from service_kit.errors import InvalidArgument
from service_kit.policy import TIER_BY_NAME
from service_kit.policy_source import PolicySource
from service_kit.validation import bounded, message_violations

log = structlog.get_logger()

# A health component: SERVING when calls go to real providers, NOT_SERVING when the simulator answers all.
PROVIDERS_HEALTH = "llmroute.real_providers"
# Who may call what, when keys are required (service_kit/auth.py).
RULES = {"Route": ("caller", "admin"), "RouteStream": ("caller", "admin")}

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CALLER = re.compile(r"^[A-Za-z0-9._:@/-]{1,128}$")


def parse_request(
    request: router_pb2.RouteRequest | router_pb2.RouteStreamRequest,
    invocation_metadata: object,
    settings: RouterSettings,
) -> RouteInput:
    """Validate a Route/RouteStream request; every problem becomes one field violation."""
    violations = message_violations(
        request.messages, settings.max_prompt_chars, max_messages=settings.max_messages
    )
    # Only the request's own field is an idempotency key; x-request-id metadata only traces.
    request_id = request.request_id or uuid.uuid4().hex
    if not _REQUEST_ID.match(request_id):
        violations.append(("request_id", "must be 1-128 characters of letters, digits and ._:-"))
    # Open (no keys): the caller is whoever the request names. With keys: the key's principal, or a
    # sub-caller it may name (service_kit/auth.py); naming anyone else is PERMISSION_DENIED.
    principal = auth.current()
    requested = request.caller or metadata.get(invocation_metadata, metadata.CALLER)
    caller = auth.scope_caller(requested) or (principal.name if principal else settings.default_caller)
    if not _CALLER.match(caller):
        violations.append(("caller", "must be 1-128 characters of letters, digits and ._:@/-"))
    options = request.options
    max_output_tokens = options.max_output_tokens if options.HasField("max_output_tokens") else None
    if max_output_tokens is not None and not 0 < max_output_tokens <= settings.max_output_tokens:
        violations.append(
            (
                "options.max_output_tokens",
                f"must be a number of tokens between 1 and {settings.max_output_tokens}",
            )
        )
    temperature = options.temperature if options.HasField("temperature") else None
    if temperature is not None and not (math.isfinite(temperature) and 0 <= temperature <= 2):
        violations.append(("options.temperature", "must be a number between 0 and 2"))
    max_cost = options.max_cost_usd if options.HasField("max_cost_usd") else None
    if max_cost is not None and not (math.isfinite(max_cost) and max_cost >= 0):
        violations.append(("options.max_cost_usd", "must be a non-negative number of US dollars"))
    if options.force_tier not in common_pb2.Tier.values():
        violations.append(("options.force_tier", f"unknown tier {options.force_tier}"))
    if len(options.force_model) > 200:
        violations.append(("options.force_model", "is longer than 200 characters"))
    schema = None
    if options.json_schema:
        try:
            schema = schemas.parse(options.json_schema, settings.max_json_schema_bytes)
        except schemas.SchemaProblem as problem:
            violations.append(("options.json_schema", str(problem)))
    if violations:
        raise InvalidArgument(bounded(violations))
    return RouteInput(
        messages=tuple(request.messages),
        request_id=request_id,
        client_request_id=bool(request.request_id),
        fingerprint=fingerprint(request.messages, options) if request.request_id else b"",
        trace_id=metadata.get(invocation_metadata, metadata.REQUEST_ID) or request_id,
        caller=caller,
        max_output_tokens=max_output_tokens,
        temperature=temperature,
        force_tier=options.force_tier,
        force_model=options.force_model,
        max_cost_usd=max_cost,
        expectations=Expectations(
            json_output=options.json_output or schema is not None,
            json_schema=schema,
            caller_capped_output=max_output_tokens is not None,
        ),
        buffered_stream=options.buffered_stream,
    )


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


class Idempotency(Protocol):
    """Bound idempotency keys: in this replica's memory (IdempotencyCache) or shared (SharedIdempotency)."""

    async def claim(self, key: Hashable, digest: bytes) -> router_pb2.RouteResponse | None: ...

    def finish(self, key: Hashable, response: router_pb2.RouteResponse) -> None: ...

    def fail(self, key: Hashable, error: BaseException) -> None: ...


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
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
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
        self, request: router_pb2.RouteStreamRequest, context: grpc.aio.ServicerContext
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
    from ledger_svc.client import LedgerReporter

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


def _ledger_keys(ledger: ledger_pb2_grpc.LedgerServiceStub) -> auth.Lookup:
    async def lookup(key_id: str, key_digest: str) -> auth.Principal | None:
        reply = await ledger.LookupKey(ledger_pb2.LookupKeyRequest(id=key_id, sha256=key_digest), timeout=2)
        if not reply.found:
            return None
        key = reply.key
        return auth.Principal(key.name, frozenset(key.roles), tuple(key.callers), key.id)

    return lookup


def max_request_bytes(settings: RouterSettings) -> int:
    """The largest Route request the limits admit, as gRPC receives it: every text at 4 bytes a
    character (UTF-8's most), the schema, and room for the fields' framing. Anything larger is refused
    by gRPC before it is decoded."""
    return (
        4 * settings.max_prompt_chars
        + settings.max_json_schema_bytes
        + 64 * settings.max_messages
        + (64 << 10)
    )


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
        await _start_background(running, settings, sink, policy, prices, classifier, ledger_channel, router)
        if shared is not None:
            await _share(running, shared, idempotency, shared_cooldowns)
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


async def _start_background(
    running: service_server.RunningServer,
    settings: RouterSettings,
    sink: UsageSink,
    policy: PolicySource,
    prices: PriceSource,
    classifier: Classification,
    ledger_channel: grpc.aio.Channel,
    router: Router,
) -> None:
    """Start what runs beside the server; each piece registers how it stops before it can fail."""
    running.closers.append(classifier.close)
    running.closers.append(ledger_channel.close)
    if router.budgets is not None:
        running.closers.append(router.budgets.close)  # before the channel closes (closers run reversed)
    watchers = [
        asyncio.create_task(policy.watch()),
        asyncio.create_task(prices.run()),
        asyncio.create_task(classifier.watch()),
        asyncio.create_task(_watch_recording(running, sink)),
    ]

    async def stop_watching() -> None:
        for watcher in watchers:
            watcher.cancel()

    running.closers.append(stop_watching)
    close = getattr(sink, "close", None)
    if close is not None:
        running.closers.append(close)
    running.closers.append(router.close)  # before the sink closes: explorations' records go to it
    start = getattr(sink, "start", None)
    if start is not None:
        await start()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, policy.reload)
    await classifier.warm_up()  # the in-process model loads before SERVING, warm-up calls or not
    if settings.warm_up:
        most_used = []
        if not settings.warm_up_models:
            ledger = ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
            most_used = await most_used_models(ledger, settings.warm_up_from_ledger_top, timeout=1.0)
        models = warm_up_plan(router, settings.warm_up_models, most_used)
        await warm_up(router, models, settings.warm_up_timeout_seconds)


async def _share(
    running: service_server.RunningServer,
    shared: SharedState,
    idempotency: Idempotency,
    cooldowns: SharedCooldowns | None,
) -> None:
    """Shared state's background work and clean-up; a Redis that is down at start is only logged."""
    running.closers.append(shared.close)
    if isinstance(idempotency, SharedIdempotency):
        running.closers.append(idempotency.close)
    if cooldowns is not None:
        syncing = asyncio.create_task(cooldowns.run())

        async def stop_syncing() -> None:
            syncing.cancel()
            await asyncio.gather(syncing, return_exceptions=True)

        running.closers.append(stop_syncing)
    watching = asyncio.create_task(_watch_shared(running, shared))

    async def stop_watching() -> None:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

    running.closers.append(stop_watching)
    log.info("shared_state", **shared.health())


async def _watch_shared(
    running: service_server.RunningServer, shared: SharedState, interval: float = SYNC_SECONDS
) -> None:
    """Health shows whether Redis is shared now: the component `llmroute.shared_state` is NOT_SERVING
    while the router runs on its own memory (the router itself stays SERVING: it answers, unshared)."""
    reported: bool | None = None
    while True:
        if shared.available != reported:
            reported = shared.available
            await running.set_component(HEALTH_COMPONENT, reported)
        await asyncio.sleep(interval)


async def _watch_recording(
    running: service_server.RunningServer, sink: UsageSink, interval: float = 0.5
) -> None:
    """Health follows whether usage can be recorded: NOT_SERVING while the spool cannot take records
    (a load balancer then sends requests elsewhere), SERVING again once it can."""
    serving = True
    while True:
        await asyncio.sleep(interval)
        accepting = sink.accepting()
        if accepting != serving:
            serving = accepting
            if accepting:
                log.info("usage_recording_restored")
            else:
                log.error("usage_recording_unavailable", detail="spool failing or over its size cap")
            await running.set_serving(accepting)


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
