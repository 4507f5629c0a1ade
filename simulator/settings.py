"""Simulator configuration, from SIMULATOR_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from service_kit.auth import is_loopback
from service_kit.settings import ServiceSettings


class SimulatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SIMULATOR_")

    port: int = Field(default=8089, ge=0, le=65535)
    # Multiplies every model's time to first token and token time; 0 answers instantly (tests, benchmarks).
    latency_scale: float = Field(default=1.0, ge=0)
    # Extra delay before the first request of each new TCP connection, modelling TLS/connection set-up.
    # Not scaled by latency_scale, so a benchmark can measure connection reuse on its own.
    connect_delay_ms: float = Field(default=0.0, ge=0)
    # Upper bound for the `timeout` fault, which otherwise hangs until the client goes away.
    max_hang_seconds: float = Field(default=300.0, gt=0)
    # Small models sometimes fail hard prompts the way real ones do, silently: an empty answer or a
    # refusal (see simulator/quality.py). Off by default so tests control every fault; the demo turns
    # it on to show the router's validators and escalation at work.
    weak_model_failures: bool = False
    # Fault injection (the x-sim-fault header, [[sim:fault=...]] in a prompt, /_sim/faults rules): on,
    # off, or auto: on only when bound to loopback (the dev stack, the tests), so a simulator reachable
    # by others cannot be told to fail every model for everyone.
    faults: Literal["auto", "on", "off"] = "auto"

    @property
    def faults_enabled(self) -> bool:
        return self.faults == "on" or (self.faults == "auto" and is_loopback(self.host))
