"""The gateway's HTTP endpoints (a Starlette app), each a thin translation onto one gRPC call.

`POST /v1/chat/completions` → Route (or RouteStream with `stream: true`), `GET /stats` → GetStats,
`GET /stats/stream` → WatchSpend (server-sent events), `GET /readyz` → the router's health service;
`GET /v1/models` reads the policy and the price map (`gateway/catalog.py`); `GET /` is the live spend
page (`gateway/static/`, which reads /stats and /stats/stream); `GET /metrics` is Prometheus'
(`gateway/metrics.py`). The HTTP `Authorization` header goes on every call unchanged as gRPC metadata
`authorization`, and `X-Request-Id` as `x-request-id` (the services' tracing id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import chat, completion, metrics, stats
from gateway.catalog import Catalog
from gateway.errors import GatewayError, from_rpc_error, invalid_request
from gateway.settings import GatewaySettings
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from service_kit import health_rpc, tls
from service_kit.policy import NAME_BY_TIER

log = structlog.get_logger()
STATIC = Path(__file__).resolve().parent / "static"
# The spend page loads only its own files and talks only to this gateway.
PAGE_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}
Metadata = tuple[tuple[str, str], ...]


def forwarded_metadata(request: Request) -> Metadata:
    """What travels from the HTTP request to every gRPC call: the caller's credentials (the router
    checks them; the gateway neither reads nor logs them) and the tracing id."""
    items = []
    authorization = request.headers.get("authorization")
    if authorization is not None:
        items.append(("authorization", authorization))
    trace_id = request.headers.get("x-request-id")
    if trace_id is not None:
        items.append(("x-request-id", trace_id))
    return tuple(items)


async def _cancel_on_disconnect(request: Request, call: grpc.aio.Call) -> None:
    """Cancel the call when the HTTP client goes away: the router then cancels the provider call."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    call.cancel()


class Gateway:
    """The endpoints, with the gRPC stubs they call (opened in the app's lifespan)."""

    def __init__(self, settings: GatewaySettings, catalog: Catalog) -> None:
        self._settings = settings
        self._catalog = catalog
        self._channels: list[grpc.aio.Channel] = []

    async def open(self) -> None:
        settings = self._settings
        credentials = tls.channel_credentials(
            settings.peer_ca_file, settings.tls_cert_file, settings.tls_key_file
        )

        # round_robin: an address that resolves to several pods (Kubernetes' router-headless Service)
        # gets a connection to each and spreads the calls; one address behaves as before.
        options = [("grpc.lb_policy_name", "round_robin")]

        def channel(address: str) -> grpc.aio.Channel:
            if credentials is None:
                return grpc.aio.insecure_channel(address, options=options)
            return grpc.aio.secure_channel(address, credentials, options=options)

        router, ledger = channel(settings.router_address), channel(settings.ledger_address)
        self._channels = [router, ledger]
        self._router = router_pb2_grpc.RouterServiceStub(router)
        self._health = health_rpc.check_async(router)
        self._ledger = ledger_pb2_grpc.LedgerServiceStub(ledger)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def _body(self, request: Request) -> Any:
        limit = self._settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise GatewayError(413, f"the body is over {limit} bytes", type="invalid_request_error")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise GatewayError(413, f"the body is over {limit} bytes", type="invalid_request_error")
        try:
            return json.loads(body)
        except ValueError:
            raise invalid_request(None, "the body is not valid JSON") from None

    async def chat_completions(self, request: Request) -> Response:
        started = time.perf_counter()
        parsed = chat.parse(
            await self._body(request), request.headers.get("idempotency-key"), self._settings.model_aliases
        )
        metadata = forwarded_metadata(request)
        if parsed.stream:
            return await self._stream(request, parsed, metadata, started)
        call = self._router.Route(
            parsed.route, timeout=self._settings.route_timeout_seconds, metadata=metadata
        )
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, call))
        try:
            reply: router_pb2.RouteResponse = await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, parsed.param_for) from None
        except asyncio.CancelledError:
            if watcher.done():  # the client went away: nobody reads an answer
                log.info("chat_completion_abandoned", stream=False)
                return Response(status_code=499)
            raise
        finally:
            watcher.cancel()
        _log_completed(reply, stream=False, started=started)
        return JSONResponse(completion.completion(reply, parsed), headers=completion.headers(reply))

    async def _stream(
        self, request: Request, parsed: chat.ChatRequest, metadata: Metadata, started: float
    ) -> Response:
        call = self._router.RouteStream(
            parsed.stream_request(), timeout=self._settings.route_timeout_seconds, metadata=metadata
        )
        # The first event decides the HTTP status: an error before any text (bad input, a spent
        # budget, no model available) is answered like a non-streamed one.
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, call))
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, parsed.param_for) from None
        except asyncio.CancelledError:
            if watcher.done():
                log.info("chat_completion_abandoned", stream=True)
                return Response(status_code=499)
            raise
        finally:
            watcher.cancel()
        if not isinstance(first, router_pb2.RouteStreamResponse):  # grpc.aio.EOF
            raise GatewayError(502, "the router ended the stream without an answer", type="server_error")
        stream_id = parsed.route.request_id or uuid.uuid4().hex
        headers = {"cache-control": "no-cache", "x-llmroute-stream-id": stream_id}
        if parsed.route.request_id:
            headers["x-llmroute-request-id"] = headers["x-request-id"] = parsed.route.request_id
        events = self._events(call, first, completion.ChunkWriter(parsed, stream_id), parsed, started)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def _events(
        self,
        call: grpc.aio.UnaryStreamCall[router_pb2.RouteStreamRequest, router_pb2.RouteStreamResponse],
        first: router_pb2.RouteStreamResponse,
        writer: completion.ChunkWriter,
        parsed: chat.ChatRequest,
        started: float,
    ) -> AsyncIterator[bytes]:
        event: object = first
        try:
            while isinstance(event, router_pb2.RouteStreamResponse):  # until grpc.aio.EOF
                if event.HasField("summary"):
                    _log_completed(event.summary, stream=True, started=started)
                    yield writer.finish(event.summary)
                    return
                yield writer.delta(event.delta.content)
                event = await call.read()
            failure = GatewayError(502, "the router ended the stream without a summary", type="server_error")
            yield writer.error(failure.body())
        except grpc.aio.AioRpcError as error:
            failure = from_rpc_error(error, parsed.param_for)
            log.info("chat_completion_failed", stream=True, status=failure.status, code=failure.code)
            yield writer.error(failure.body())
        finally:
            # A client that went away mid-stream cancels the router's call (and its provider call).
            call.cancel()

    async def models(self, request: Request) -> Response:
        return JSONResponse(self._catalog.listing())

    async def model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        found = self._catalog.model(model_id)
        if found is None:
            raise GatewayError(
                404,
                f"the model {model_id[:200]!r} is not in the routing policy",
                type="invalid_request_error",
                code="model_not_found",
                param="model",
            )
        return JSONResponse(found)

    async def stats(self, request: Request) -> Response:
        query = stats.parse(request.query_params)
        try:
            reply = await self._ledger.GetStats(
                query, timeout=self._settings.stats_timeout_seconds, metadata=forwarded_metadata(request)
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, stats.param_for) from None
        return JSONResponse(stats.to_json(reply))

    async def stats_stream(self, request: Request) -> Response:
        """WatchSpend as server-sent events: one `data: {"time", "totals"}` per snapshot. As with a
        streamed completion, the first snapshot decides the HTTP status (a missing key is 401 here);
        an error after it is an `event: error` with the error's JSON."""
        call = self._ledger.WatchSpend(
            stats.parse_watch(request.query_params), metadata=forwarded_metadata(request)
        )
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, call))
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, stats.param_for) from None
        except asyncio.CancelledError:
            if watcher.done():
                return Response(status_code=499)
            raise
        finally:
            watcher.cancel()
        if not isinstance(first, ledger_pb2.WatchSpendResponse):  # grpc.aio.EOF
            raise GatewayError(502, "the ledger ended the stream without a snapshot", type="server_error")
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(_snapshots(call, first), media_type="text/event-stream", headers=headers)

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Ready when the router answers its health check SERVING."""
        try:
            reply = await self._health(
                health_pb2.HealthCheckRequest(service=""), timeout=self._settings.ready_timeout_seconds
            )
        except grpc.aio.AioRpcError as error:
            return JSONResponse({"status": "not_ready", "router": f"unreachable: {error.code().name}"}, 503)
        router_status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        ready = reply.status == health_pb2.HealthCheckResponse.SERVING
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "router": router_status}, 200 if ready else 503
        )


async def _snapshots(
    call: grpc.aio.UnaryStreamCall[ledger_pb2.WatchSpendRequest, ledger_pb2.WatchSpendResponse],
    first: ledger_pb2.WatchSpendResponse,
) -> AsyncIterator[bytes]:
    event: object = first
    try:
        while isinstance(event, ledger_pb2.WatchSpendResponse):  # until grpc.aio.EOF
            yield b"data: " + json.dumps(stats.snapshot_to_json(event)).encode() + b"\n\n"
            event = await call.read()
    except grpc.aio.AioRpcError as error:
        failure = from_rpc_error(error, stats.param_for)
        log.info("stats_stream_failed", status=failure.status, code=failure.code)
        yield b"event: error\ndata: " + json.dumps(failure.body()).encode() + b"\n\n"
    finally:
        call.cancel()  # a page closed mid-stream ends the ledger's watch


def _log_completed(reply: router_pb2.RouteResponse, *, stream: bool, started: float) -> None:
    log.info(
        "chat_completion",
        request_id=reply.request_id,
        model=reply.model,
        tier=NAME_BY_TIER.get(reply.tier, ""),
        cost_usd=reply.usage.cost_usd,
        replayed=reply.replayed,
        stream=stream,
        total_ms=round((time.perf_counter() - started) * 1000, 2),
    )


async def _gateway_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, GatewayError)
    if error.status >= 500:
        log.warning("request_failed", path=request.url.path, status=error.status, code=error.code)
    else:
        log.info("request_refused", path=request.url.path, status=error.status, code=error.code)
    return error.response()


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return GatewayError(
        error.status_code, str(error.detail), type="invalid_request_error", headers=error.headers
    ).response()


async def _unexpected(request: Request, error: Exception) -> Response:
    log.error("gateway_internal_error", path=request.url.path, error_type=type(error).__name__)
    return GatewayError(500, "internal error in the gateway", type="server_error").response()


def create_app(settings: GatewaySettings, catalog: Catalog | None = None) -> Starlette:
    gateway = Gateway(settings, catalog or Catalog(settings.policy_path, settings.price_overrides_path))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.open()
        try:
            yield
        finally:
            await gateway.close()

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        GatewayError: _gateway_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }
    return Starlette(
        routes=[
            Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
            Route("/v1/models", gateway.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", gateway.model, methods=["GET"]),
            Route("/stats", gateway.stats, methods=["GET"]),
            Route("/stats/stream", gateway.stats_stream, methods=["GET"]),
            Route("/healthz", gateway.healthz, methods=["GET"]),
            Route("/readyz", gateway.readyz, methods=["GET"]),
            Route("/metrics", metrics.metrics, methods=["GET"]),
            Route("/", gateway.page, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(metrics.MetricsMiddleware)],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
