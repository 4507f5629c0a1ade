"""Per-model circuit breaker: repeated failures put a model in cooldown; one probe call may end it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _State:
    failures: int = 0
    open_until: float = 0.0
    # While a probe runs, until when; a probe that never reports (its request was cancelled) expires.
    probing_until: float = 0.0


class Cooldowns:
    """closed → (N consecutive failures) → open for `seconds` → half-open: one probe → closed or open."""

    def __init__(
        self, after_failures: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._after = after_failures
        self._seconds = seconds
        self._clock = clock
        self._states: dict[str, _State] = {}

    def available(self, model: str) -> bool:
        """False while in cooldown. After it, True for exactly one caller (the probe) until it reports."""
        state = self._states.get(model)
        if state is None or state.failures < self._after:
            return True
        now = self._clock()
        if now < state.open_until or now < state.probing_until:
            return False
        state.probing_until = now + self._seconds
        return True

    def in_cooldown(self, model: str) -> bool:
        state = self._states.get(model)
        if state is None or state.failures < self._after:
            return False
        now = self._clock()
        return now < state.open_until or now < state.probing_until

    def success(self, model: str) -> None:
        self._states.pop(model, None)

    def failure(self, model: str) -> None:
        state = self._states.setdefault(model, _State())
        state.failures += 1
        state.probing_until = 0.0
        if state.failures >= self._after:
            state.open_until = self._clock() + self._seconds

    def release(self, model: str) -> None:
        """The call ended without a verdict on the model's health (cancelled, rejected input)."""
        state = self._states.get(model)
        if state is not None:
            state.probing_until = 0.0
