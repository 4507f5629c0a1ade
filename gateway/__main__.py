"""`python -m gateway`: serve the OpenAI-compatible gateway until SIGTERM."""

import asyncio
import os

import structlog

from gateway.server import create_server
from gateway.settings import GatewaySettings
from service_kit import tracing
from service_kit.logging import configure_logging


async def serve(settings: GatewaySettings) -> None:
    server, sock = create_server(settings)
    structlog.get_logger().info(
        "gateway_started",
        address=f"{settings.host}:{sock.getsockname()[1]}",
        router=settings.router_address,
        ledger=settings.ledger_address,
    )
    await server.serve(sockets=[sock])
    structlog.get_logger().info("gateway_stopped")


def main() -> None:
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level, settings.log_json, settings.log_library_messages)
    # Before the app opens its channels: the gRPC client instrumentation covers channels created after
    # it, so Route, RouteStream and GetStats carry the trace on to the router and the ledger.
    if tracing.configure("gateway"):
        structlog.get_logger().info(
            "tracing", exporter="otlp", endpoint=os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
        )
    asyncio.run(serve(settings))


main()
