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
        self._on_open: Callable[[str, float], None] | None = None
        self._on_close: Callable[[str], None] | None = None

    def listen(self, on_open: Callable[[str, float], None], on_close: Callable[[str], None]) -> None:
        """Be told when this replica opens a model's breaker (for how many seconds) or closes it
        after a successful probe (router_svc/shared.py shares both with the other replicas)."""
        self._on_open, self._on_close = on_open, on_close

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

    def open_count(self) -> int:
        """How many models are in cooldown now (the metrics' circuit-breaker gauge)."""
        return sum(1 for model in list(self._states) if self.in_cooldown(model))

    def in_cooldown(self, model: str) -> bool:
        state = self._states.get(model)
        if state is None or state.failures < self._after:
            return False
        now = self._clock()
        return now < state.open_until or now < state.probing_until

    def success(self, model: str) -> None:
        state = self._states.pop(model, None)
        if state is not None and state.failures >= self._after and self._on_close is not None:
            self._on_close(model)

    def failure(self, model: str) -> None:
        state = self._states.setdefault(model, _State())
        state.failures += 1
        state.probing_until = 0.0
        if state.failures >= self._after:
            state.open_until = self._clock() + self._seconds
            if self._on_open is not None:
                self._on_open(model, self._seconds)

    def hold(self, model: str, seconds: float) -> None:
        """The provider asked for no call to this model for `seconds` (a 429's retry-after): its
        breaker open at least that long, however few failures it had (an open one stays open as long as
        it was); then one probe, as after any cooldown. Shared with the other replicas like an opening."""
        state = self._states.setdefault(model, _State())
        until = self._clock() + seconds
        state.failures = max(state.failures, self._after)
        state.probing_until = 0.0
        if until > state.open_until:
            state.open_until = until
            if self._on_open is not None:
                self._on_open(model, seconds)

    def open_elsewhere(self, model: str, seconds: float) -> bool:
        """Another replica opened this model's breaker for `seconds` more: it is open here too (True
        when that changed anything)."""
        state = self._states.setdefault(model, _State())
        until = self._clock() + seconds
        if state.failures >= self._after and state.open_until >= until - 0.5:
            return False
        state.failures = max(state.failures, self._after)
        state.open_until = until
        state.probing_until = 0.0
        return True

    def close_elsewhere(self, model: str) -> None:
        """Another replica's probe succeeded (or the cooldown ended there): closed here too."""
        self._states.pop(model, None)

    def release(self, model: str) -> None:
        """The call ended without a verdict on the model's health (cancelled, rejected input)."""
        state = self._states.get(model)
        if state is not None:
            state.probing_until = 0.0
