"""Server bootstrap shared by the services: health, reflection, interceptor, graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_kit import auth, metrics, tracing
from service_kit.interceptor import ServiceInterceptor
from service_kit.logging import configure_logging
from service_kit.settings import ServiceSettings

log = structlog.get_logger()

# Large enough for long conversations; the services enforce their own prompt limits with clear errors.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def new_server(
    share_port: bool = False, gate: auth.Gate | None = None, max_receive_bytes: int = MAX_MESSAGE_BYTES
) -> grpc.aio.Server:
    """A server with the shared interceptor (and its `gate`: who may call what). The port is exclusive
    (a second instance on it fails to start) unless `share_port`: worker processes of one service then
    share it (SO_REUSEPORT). A message over `max_receive_bytes` is refused by gRPC before it is
    decoded (RESOURCE_EXHAUSTED)."""
    return grpc.aio.server(
        interceptors=[ServiceInterceptor(gate)],
        options=[
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1 if share_port else 0),
        ],
    )


@dataclass
class RunningServer:
    """A started server; `stop` drains it and then runs the service's closers."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def set_serving(self, serving: bool = True) -> None:
        """Report SERVING (or NOT_SERVING, while the service cannot take work); ignored once stopping."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def set_component(self, name: str, up: bool) -> None:
        """A part's own health under its own name (`grpc.health.v1.Health/Check` with `service` set to
        it), for a part whose loss degrades the service without stopping it."""
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for close in reversed(self.closers):
            await close()


async def start(
    server: grpc.aio.Server,
    address: str,
    service_names: Iterable[str],
    credentials: grpc.ServerCredentials | None = None,
) -> RunningServer:
    """Add health and reflection, bind `address` (TLS with `credentials`) and start. Health stays
    NOT_SERVING until `set_serving`."""
    names = tuple(service_names)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    await server.start()
    return RunningServer(server=server, port=port, health=health_servicer, service_names=names)


def stop_requested() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT from now on (installed before start-up, so a signal during
    warm-up stops the service cleanly instead of killing it)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    return stopping


async def serve_forever(running: RunningServer, grace: float, stopping: asyncio.Event | None = None) -> None:
    """Block until SIGTERM or SIGINT, then shut down gracefully (NOT_SERVING first, then drain)."""
    stopping = stopping or stop_requested()
    log.info("server_started", port=running.port)
    await stopping.wait()
    log.info("server_stopping", grace_seconds=grace)
    await running.stop(grace)
    log.info("server_stopped")


def freeze_heap() -> None:
    """Collect, then freeze what is left (`gc.freeze`): objects alive once the service has started
    (imported libraries, price map, models, policy) are never walked by a collection again, so a full
    collection scans only what requests created since. Measured in the router at concurrency 64
    (docs/reliability.md, "Overhead at concurrency 64"): full collections fell from 0.25-0.3 s of CPU
    each, with every request in flight waiting, to about 10 ms. An object frozen here is still freed by
    reference counting; only a reference cycle among them is never collected (they are start-up's)."""
    gc.collect()
    gc.freeze()
    log.info("heap_frozen", objects=gc.get_freeze_count())


def run_service(
    name: str,
    settings: ServiceSettings,
    create_server: Callable[[Any], Awaitable[RunningServer]],
    worker: int | None = None,
) -> None:
    """A service's `main()`: configure logging, start, serve until SIGTERM or SIGINT."""
    configure_logging(name, settings.log_level, settings.log_json, settings.log_library_messages)
    if worker is not None:
        structlog.contextvars.bind_contextvars(worker=worker)

    if tracing.configure(name):
        log.info("tracing", exporter="otlp", endpoint=os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
    if settings.metrics_port:
        # Workers share the service's port, not the metrics one: worker i serves on metrics_port + i.
        port = metrics.serve(settings.host, settings.metrics_port + (worker or 0))
        log.info("metrics_serving", port=port)

    async def serve() -> None:
        stopping = stop_requested()
        running = await create_server(settings)
        if settings.gc_freeze:
            freeze_heap()
        await serve_forever(running, settings.grace_seconds, stopping)

    asyncio.run(serve())
    # Stopped: a late signal (a worker's parent forwarding one more) must not turn exit 0 into a kill.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def run_workers(
    name: str,
    settings_of: Callable[[int], ServiceSettings],
    count: int,
    create_server: Callable[[Any], Awaitable[RunningServer]],
) -> None:
    """Run `count` processes of one service on one port (SO_REUSEPORT; the kernel spreads connections
    over them): a Python process runs one event loop on one core, so this is how a service uses more
    cores. Each worker gets `settings_of(index)`. This process only forwards SIGTERM, SIGINT and SIGHUP
    and waits; when one worker exits, the others are stopped, and it exits with the first nonzero code."""
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=run_service, args=(name, settings_of(i), create_server, i), name=f"{name}-{i}")
        for i in range(count)
    ]
    for worker in workers:
        worker.start()

    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    multiprocessing.connection.wait([w.sentinel for w in workers])
    if not stopping:  # a worker ended on its own (crashed): stop the others, once
        forward(signal.SIGTERM, None)
    for worker in workers:
        worker.join()
    codes = [w.exitcode or 0 for w in workers]
    sys.exit(next((code for code in codes if code), 0))
