"""PostgreSQL stopping or restarting under the ledger: what the driver raises then (an admin shutdown
of the connection, a server that cannot take connections yet) is DATABASE_UNAVAILABLE, as a refused
connection is, never INTERNAL. Found by the fault suite's PostgreSQL restart under load."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from ledger_svc.rpc_errors import database_down, database_errors, database_errors_stream
from service_kit.errors import Unavailable


class _DriverError(Exception):
    """What SQLAlchemy's asyncpg adapter wraps: the server's SQLSTATE on `sqlstate`."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


def _wrapped(sqlstate: str, kind: type[sa_exc.DBAPIError] = sa_exc.InternalError) -> sa_exc.DBAPIError:
    return kind("SELECT 1", {}, _DriverError(sqlstate))


@pytest.mark.parametrize(
    "error",
    [
        _wrapped("57P01"),  # terminating connection due to administrator command (a fast shutdown)
        _wrapped("57P02"),  # crash shutdown
        _wrapped("57P03", sa_exc.DBAPIError),  # the database system is starting up / shutting down
        _wrapped("08006"),  # connection failure
        sa_exc.OperationalError("SELECT 1", {}, Exception("gone")),
        ConnectionRefusedError(),
    ],
)
def test_a_database_going_away_is_unavailable(error: Exception) -> None:
    assert database_down(error)


@pytest.mark.parametrize(
    "error", [_wrapped("23505", sa_exc.IntegrityError), _wrapped("XX000"), ValueError("a bug of ours")]
)
def test_other_errors_are_not_taken_for_an_outage(error: Exception) -> None:
    assert not database_down(error)


async def test_the_rpcs_answer_an_admin_shutdown_as_database_unavailable() -> None:
    class Servicer:
        @database_errors
        async def Unary(self, request: Any, context: Any) -> Any:
            raise _wrapped("57P01")

        @database_errors_stream
        async def Stream(self, request: Any, context: Any) -> Any:
            yield 1
            raise _wrapped("57P03", sa_exc.DBAPIError)

    with pytest.raises(Unavailable) as caught:
        await Servicer().Unary(None, None)
    assert caught.value.reason == "DATABASE_UNAVAILABLE"
    with pytest.raises(Unavailable) as caught:
        async for _ in Servicer().Stream(None, None):
            pass
    assert caught.value.reason == "DATABASE_UNAVAILABLE"
    with pytest.raises(sa_exc.IntegrityError):  # a statement that failed is not an outage

        @database_errors
        async def failing(self: Any, request: Any, context: Any) -> Any:
            raise _wrapped("23505", sa_exc.IntegrityError)

        await failing(None, None, None)
