"""Server bootstrap shared by the services: health, reflection, interceptor, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_kit.interceptor import ServiceInterceptor
from service_kit.logging import configure_logging
from service_kit.settings import ServiceSettings

log = structlog.get_logger()

# Large enough for long conversations; the services enforce their own prompt limits with clear errors.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def new_server() -> grpc.aio.Server:
    return grpc.aio.server(
        interceptors=[ServiceInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
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

    async def set_serving(self) -> None:
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for close in reversed(self.closers):
            await close()


async def start(server: grpc.aio.Server, address: str, service_names: Iterable[str]) -> RunningServer:
    """Add health and reflection, bind `address` and start. Health stays NOT_SERVING until `set_serving`."""
    names = tuple(service_names)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    await server.start()
    return RunningServer(server=server, port=port, health=health_servicer, service_names=names)


async def serve_forever(running: RunningServer, grace: float) -> None:
    """Block until SIGTERM or SIGINT, then shut down gracefully (NOT_SERVING first, then drain)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info("server_started", port=running.port)
    await stopping.wait()
    log.info("server_stopping", grace_seconds=grace)
    await running.stop(grace)
    log.info("server_stopped")


def run_service(
    name: str,
    settings: ServiceSettings,
    create_server: Callable[[Any], Awaitable[RunningServer]],
) -> None:
    """A service's `main()`: configure logging, start, serve until SIGTERM or SIGINT."""
    configure_logging(name, settings.log_level, settings.log_json, settings.log_library_messages)

    async def serve() -> None:
        running = await create_server(settings)
        await serve_forever(running, settings.grace_seconds)

    asyncio.run(serve())
