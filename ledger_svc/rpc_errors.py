"""The database going away, as the RPCs answer it: UNAVAILABLE with reason DATABASE_UNAVAILABLE, which
callers retry (the reporter does). Every handler that reads or writes the database is wrapped."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from sqlalchemy import exc as sa_exc

from service_kit.errors import Reason, Unavailable

log = structlog.get_logger()


# The database is unreachable or went away mid-call: callers should retry (the reporter does).
_DATABASE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError)
# SQLSTATEs of a database going away or not back yet, whatever class the driver's adapter gives them:
# connection exceptions (08...) and operator intervention: 57P01 admin shutdown, 57P02 crash
# shutdown, 57P03 cannot connect now (PostgreSQL stopping, restarting or starting up).
_GONE_SQLSTATES = ("08", "57P")


def database_down(error: BaseException) -> bool:
    """Whether `error` says the database is unavailable (rather than that a statement failed)."""
    if isinstance(error, _DATABASE_DOWN):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return isinstance(state, str) and state.startswith(_GONE_SQLSTATES)
    return False


def _unavailable(error: Exception) -> Unavailable:
    log.warning("database_unavailable", error=type(error).__name__)
    return Unavailable("the ledger database is unavailable; retry later", reason=Reason.DATABASE_UNAVAILABLE)


def database_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(handler)
    async def wrapped(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await handler(self, request, context)
        except Exception as error:
            if database_down(error):
                raise _unavailable(error) from error
            raise

    return wrapped


def database_errors_stream(handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(handler)
    async def wrapped(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for response in handler(self, request, context):
                yield response
        except Exception as error:
            if database_down(error):
                raise _unavailable(error) from error
            raise

    return wrapped
