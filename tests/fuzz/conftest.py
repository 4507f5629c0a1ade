"""Fuzzing harness: hypothesis profiles, one event loop per module, and the status checks every fuzz
test applies (docs/reliability.md, "Hostile input").

Profiles: `ci` (the default; derandomized, so CI draws the same examples every run and a failure
reproduces) and `long` (random examples, `LLMROUTE_FUZZ_SCALE` times as many, 50 by default):

    LLMROUTE_FUZZ_PROFILE=long .venv/bin/python -m pytest -q tests/fuzz
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, settings

from service_kit import health_rpc
from tests.ledger.conftest import backend  # noqa: F401 (the fixture: SQLite and PostgreSQL)
from tests.rich_status import Details, details

T = TypeVar("T")

PROFILE = os.environ.get("LLMROUTE_FUZZ_PROFILE", "ci")
SCALE = int(os.environ.get("LLMROUTE_FUZZ_SCALE", "50")) if PROFILE == "long" else 1
_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    "print_blob": True,
}
settings.register_profile("fuzz-ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("fuzz-long", derandomize=False, **_COMMON)
if PROFILE not in ("ci", "long"):
    raise ValueError(f"LLMROUTE_FUZZ_PROFILE must be ci or long, not {PROFILE!r}")


def fuzz(examples: int) -> settings:
    """Settings for one fuzz test: `examples` in CI, SCALE times as many in the long profile."""
    return settings(settings.get_profile(f"fuzz-{PROFILE}"), max_examples=examples * SCALE)


# What no input may ever get: a bug (INTERNAL, UNKNOWN), a hang (DEADLINE_EXCEEDED under the generous
# deadlines the tests give), or a status the service did not choose (no ErrorInfo reason).
NEVER = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED})


def clear_status(error: grpc.aio.AioRpcError, allowed: Iterable[grpc.StatusCode]) -> Details:
    """The error's rich status, checked: an allowed code, chosen by the service (an ErrorInfo reason),
    and for INVALID_ARGUMENT at least one field violation naming a field."""
    found = details(error)
    assert found.code not in NEVER, f"{found.code.name}: {found.message[:300]}"
    assert found.code in set(allowed), f"unexpected {found.code.name}: {found.message[:300]}"
    if is_over_receive_limit(found):
        return found  # refused by gRPC before any service code ran: its own status, no ErrorInfo
    assert found.reason, f"{found.code.name} without an ErrorInfo reason: {found.message[:300]}"
    if found.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert found.violations, f"INVALID_ARGUMENT without field violations: {found.message[:300]}"
    return found


def is_over_receive_limit(found: Details) -> bool:
    """gRPC's refusal of a message over the server's receive limit (docs/security.md)."""
    return found.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in found.message


async def serving(channel: grpc.aio.Channel, service: str = "") -> None:
    """The server's health says SERVING (for `service`, or the whole server)."""
    reply = await health_rpc.check_async(channel)(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


class Loop:
    """One event loop for a module's servers, driven from synchronous hypothesis examples: between
    examples it stands still, each example runs it until its checks are done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine: Awaitable[T], timeout: float = 60) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, timeout))

    def close(self) -> None:
        self.loop.close()


async def raw_call(
    channel: grpc.aio.Channel,
    method: str,
    payload: bytes,
    stream: bool,
    metadata: tuple[tuple[str, str], ...] = (),
) -> grpc.aio.AioRpcError | None:
    """Send `payload` as the request bytes of `method` (/package.Service/Method), whatever they are;
    read a stream's first message. The error, if the call failed."""
    identity = bytes  # neither side decodes: the server's deserializer gets the bytes as they are
    try:
        if stream:
            call = channel.unary_stream(method, request_serializer=identity, response_deserializer=identity)
            responses = call(payload, metadata=metadata, timeout=30)
            async for _ in responses:
                break
            responses.cancel()
        else:
            unary = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)
            await unary(payload, metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as error:
        return error
    return None
