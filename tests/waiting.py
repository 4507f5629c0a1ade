"""Waiting for something to happen: poll a condition until it holds or a deadline passes.

Tests wait for an observable event (a log line, a record, a count, a status), never for a fixed time:
a fixed sleep is too short on a loaded machine and too long on an idle one. The deadlines are
generous (the machines are small and shared); a condition that holds returns at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
INTERVAL = 0.02


class NotYet(AssertionError):
    """The condition did not hold by the deadline."""


def wait_until(
    condition: Callable[[], T | None],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = INTERVAL,
) -> T:
    """Call `condition` until it returns a true value, and return that value. An AssertionError it
    raises counts as "not yet"; at the deadline the last one is raised (or NotYet naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        failure: AssertionError | None = None
        value: T | None = None
        try:
            value = condition()
        except AssertionError as error:
            failure = error
        if value:
            return value
        if time.monotonic() > deadline:
            raise NotYet(f"{what}: not within {timeout} s") from failure
        time.sleep(interval)


@overload
async def eventually(
    condition: Callable[[], Awaitable[T | None]],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = INTERVAL,
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T | None],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = INTERVAL,
) -> T: ...


async def eventually(
    condition: Callable[[], Awaitable[T | None] | T | None],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = INTERVAL,
) -> T:
    """`wait_until` in an event loop: `condition` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        failure: AssertionError | None = None
        value: T | None = None
        try:
            result = condition()
            value = await result if isinstance(result, Awaitable) else result
        except AssertionError as error:
            failure = error
        if value:
            return value
        if time.monotonic() > deadline:
            raise NotYet(f"{what}: not within {timeout} s") from failure
        await asyncio.sleep(interval)
