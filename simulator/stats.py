"""Request counters per model, served by GET /_sim/stats so tests and benchmarks can check behaviour."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class ModelStats:
    # Valid chat-completion requests received (malformed bodies are answered 400 and not counted).
    requests: int = 0
    # Requests whose response was sent in full, whatever its status (fault responses included).
    completed: int = 0
    # Requests that had a fault injected (header, directive or rule).
    faulted: int = 0
    # Requests the client abandoned before the response was finished (disconnect detected).
    cancelled: int = 0
    # Usage reported in completed responses.
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class Stats:
    models: dict[str, ModelStats] = field(default_factory=dict)
    # TCP connections opened by clients (each paid connect_delay_ms once).
    connections: int = 0
    in_flight: int = 0

    def model(self, name: str) -> ModelStats:
        stats = self.models.get(name)
        if stats is None:
            stats = self.models[name] = ModelStats()
        return stats

    def started(self, model: str, faulted: bool) -> None:
        stats = self.model(model)
        stats.requests += 1
        stats.faulted += faulted
        self.in_flight += 1

    def completed(self, model: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        stats = self.model(model)
        stats.completed += 1
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        self.in_flight -= 1

    def cancelled(self, model: str) -> None:
        self.model(model).cancelled += 1
        self.in_flight -= 1

    def reset(self) -> None:
        self.models.clear()
        self.connections = 0
        # in_flight is left alone: those requests are still running and will decrement it.

    def snapshot(self) -> dict[str, Any]:
        totals = ModelStats()
        for stats in self.models.values():
            for key, value in asdict(stats).items():
                setattr(totals, key, getattr(totals, key) + value)
        return {
            "models": {name: asdict(stats) for name, stats in sorted(self.models.items())},
            "totals": asdict(totals),
            "connections": self.connections,
            "in_flight": self.in_flight,
        }
