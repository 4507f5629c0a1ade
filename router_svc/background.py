"""What runs beside the router's server: the policy, price and classifier watchers, the usage sink,
shared state, warm-up, and the health components that follow them. Each piece registers how it stops
before it can fail."""

from __future__ import annotations

import asyncio
import signal

import grpc
import structlog

from llmroute.ledger.v1 import ledger_pb2_grpc
from router_svc.accounting import UsageSink
from router_svc.classification import Classification
from router_svc.idempotency import Idempotency
from router_svc.router import Router
from router_svc.settings import RouterSettings
from router_svc.shared import HEALTH_COMPONENT, SYNC_SECONDS, SharedCooldowns, SharedIdempotency, SharedState
from router_svc.warmup import most_used_models, warm_up, warm_up_plan
from service_kit import server as service_server
from service_kit.policy_source import PolicySource
from service_kit.pricing import PriceSource

log = structlog.get_logger()

# A health component: NOT_SERVING while usage cannot be recorded durably (the spool cannot be written,
# a full disk, or is over its size cap): why the router itself is NOT_SERVING then.
RECORDING_HEALTH = "llmroute.usage_recording"


async def start_background(
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
    running.closers.append(sink.close)
    running.closers.append(router.close)  # before the sink closes: explorations' records go to it
    await sink.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, policy.reload)

    async def stop_reloading() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    running.closers.append(stop_reloading)
    await classifier.warm_up()  # the in-process model loads before SERVING, warm-up calls or not
    if settings.warm_up:
        most_used = []
        if not settings.warm_up_models:
            ledger = ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
            most_used = await most_used_models(
                ledger, settings.warm_up_from_ledger_top, timeout=settings.warm_up_timeout_seconds
            )
        models = warm_up_plan(router, settings.warm_up_models, most_used)
        await warm_up(router, models, settings.warm_up_timeout_seconds)


async def share(
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
    (a load balancer then sends requests elsewhere), SERVING again once it can; the component
    `llmroute.usage_recording` says that this is why."""
    serving = True
    await running.set_component(RECORDING_HEALTH, True)
    while True:
        await asyncio.sleep(interval)
        accepting = sink.accepting()
        if accepting != serving:
            serving = accepting
            if accepting:
                log.info("usage_recording_restored")
            else:
                log.error("usage_recording_unavailable", detail="spool failing or over its size cap")
            await running.set_component(RECORDING_HEALTH, accepting)
            await running.set_serving(accepting)
