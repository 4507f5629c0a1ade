"""One server interceptor: binds per-call log context and turns domain errors into rich statuses."""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
import structlog
from google.protobuf.message import DecodeError

from service_kit import auth, metadata, metrics, tracing
from service_kit.errors import InvalidArgument, Reason, ServiceError

log = structlog.get_logger()


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Binds `rpc_method` and `request_id` into contextvars, maps `ServiceError` to its status, and
    counts each RPC by method and status code (service_kit/metrics.py).

    Anything else that escapes a handler is a bug: it is logged with its traceback and the client
    gets INTERNAL without the exception text (which could echo a prompt).
    """

    def __init__(self, gate: auth.Gate | None = None) -> None:
        self._gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(("/grpc.health", "/grpc.reflection")):
            return handler
        request_id = metadata.get(handler_call_details.invocation_metadata, metadata.REQUEST_ID)
        invocation_metadata = handler_call_details.invocation_metadata
        if handler.unary_unary:
            admit = _admission(self._gate, method, invocation_metadata, stream=False)
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, request_id, admit),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            admit = _admission(self._gate, method, invocation_metadata, stream=True)
            # types-grpcio types a handler's behaviour as the blocking server's; under grpc.aio a
            # server-streaming one is the servicer's async generator function.
            behavior = cast(Callable[..., AsyncGenerator[Any, None]], handler.unary_stream)
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(behavior, method, request_id, admit),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler


def _bind(method: str, request_id: str) -> None:
    structlog.contextvars.bind_contextvars(rpc_method=method, request_id=request_id or None)
    tracing.tag_request(request_id)


def _admission(
    gate: auth.Gate | None, method: str, invocation_metadata: Any, stream: bool
) -> Callable[[], Awaitable[Callable[[], None]]]:
    """Run inside the call's task: authenticate, check the method's roles, bind the principal, take
    one of its call slots. Returns the slot's release."""

    async def admit() -> Callable[[], None]:
        if gate is None:
            return _no_slot
        principal = await gate.admit(method, invocation_metadata)
        auth.Gate.bind(principal)
        if principal is not None:
            structlog.contextvars.bind_contextvars(principal=principal.name)
        return gate.hold(principal, stream)

    return admit


def _no_slot() -> None:
    return None


class _Undecodable:
    """A request whose bytes are not the method's message: refused as INVALID_ARGUMENT once the caller
    is admitted (grpc would answer UNKNOWN, quoting the parser's exception)."""


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return _Undecodable()

    return parse


def _decoded(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            [("request", "is not a valid protobuf message of this method's request type")],
            reason=Reason.MALFORMED_REQUEST,
        )


async def _fail(context: grpc.aio.ServicerContext[Any, Any], error: Exception, started: float) -> None:
    """Abort the call with the error's status; a ServiceError is expected, anything else is a bug."""
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    if isinstance(error, ServiceError):
        log.info("rpc_failed", code=error.code.name, reason=error.reason, duration_ms=duration_ms)
        await context.abort_with_status(error.to_status())
    # Where it failed, but not the exception's message: it may quote a prompt or a model's output.
    frames = [
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}"
        for f in traceback.extract_tb(error.__traceback__)
    ]
    log.error(
        "rpc_internal_error", error_type=type(error).__name__, frames=frames[-8:], duration_ms=duration_ms
    )
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")


def _wrap_unary(
    behavior: Callable[..., Awaitable[Any]],
    method: str,
    request_id: str,
    admit: Callable[[], Awaitable[Callable[[], None]]],
) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _bind(method, request_id)
        started = time.perf_counter()
        code = "OK"
        release = _no_slot
        try:
            release = await admit()
            _decoded(request)
            return await behavior(request, context)
        except grpc.aio.AbortError:
            code = _code(context)
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as error:
            code = _error_code(error)
            await _fail(context, error, started)
        finally:
            release()
            metrics.observe_rpc(method, code, time.perf_counter() - started)

    return wrapped


def _wrap_stream(
    behavior: Callable[..., AsyncGenerator[Any, None]],
    method: str,
    request_id: str,
    admit: Callable[[], Awaitable[Callable[[], None]]],
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        _bind(method, request_id)
        started = time.perf_counter()
        code = "OK"
        release = _no_slot
        try:
            release = await admit()
            _decoded(request)
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response
        except grpc.aio.AbortError:
            code = _code(context)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        except Exception as error:
            code = _error_code(error)
            await _fail(context, error, started)
        finally:
            release()
            metrics.observe_rpc(method, code, time.perf_counter() - started)

    return wrapped


def _code(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The status a handler aborted with."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _error_code(error: Exception) -> str:
    return error.code.name if isinstance(error, ServiceError) else "INTERNAL"
