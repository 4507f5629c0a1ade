"""The gateway as a uvicorn server: `create_server(settings)` binds its socket (port 0 for tests)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings


class _Server(uvicorn.Server):
    """uvicorn's server, with SIGTERM and SIGINT handled on the event loop
    (`loop.add_signal_handler`) and a clean exit after the graceful shutdown. uvicorn's own handling
    raises the signal again once it has stopped, so a gateway stopped by SIGTERM would exit with
    status 143 where the other services exit with 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        stops = (signal.SIGTERM, signal.SIGINT)
        for stop in stops:
            loop.add_signal_handler(stop, self.handle_exit, stop, None)
        try:
            yield
        finally:
            for stop in stops:
                loop.remove_signal_handler(stop)


def create_server(settings: GatewaySettings) -> tuple[uvicorn.Server, socket.socket]:
    """The server and its bound listening socket (`server.serve(sockets=[sock])` serves it); the port
    is `sock.getsockname()[1]`. uvicorn stops gracefully on SIGTERM and SIGINT: it stops accepting,
    lets requests in flight finish for up to `grace_seconds`, then closes the gRPC channels."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a response written in two pieces waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.set_inheritable(True)
    config = uvicorn.Config(
        create_app(settings),
        # httptools: the C HTTP parser (h11, the pure-Python one, costs more per request).
        http="httptools",
        loop="asyncio",
        lifespan="on",
        # Our own structured `chat_completion` line replaces the access log.
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.grace_seconds),
        # HTTPS when the gateway has a certificate (GATEWAY_TLS_CERT_FILE / GATEWAY_TLS_KEY_FILE).
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
    )
    return _Server(config), sock
