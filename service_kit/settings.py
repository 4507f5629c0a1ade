"""Settings shared by every service; each service subclasses with its own env prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings


class ServiceSettings(BaseSettings):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    log_level: str = "INFO"
    log_json: bool = True
    # Include libraries' own log messages (they may quote requests, so off by default).
    log_library_messages: bool = False
    # Seconds in-flight calls get to finish on SIGTERM.
    grace_seconds: float = Field(default=5.0, ge=0)
    # Once started, move every object then alive out of the garbage collector's reach (gc.freeze): the
    # libraries, price map, models and policy, about 450,000 objects in the router, which every full
    # collection otherwise walks (0.25-0.3 s of CPU each under load, with every request waiting).
    gc_freeze: bool = True
    # Prometheus metrics at http://host:metrics_port/metrics (service_kit/metrics.py); 0: not served.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # API keys (service_kit/auth.py): the keys file (hashes only; `llmroute keys` edits it). Unset: the
    # service runs open, on a loopback host only, unless allow_open says the network controls access.
    keys_file: Path | None = None
    allow_open: bool = False
    # With keys: calls one principal may have in progress at once, and how many of them streams
    # (RESOURCE_EXHAUSTED beyond, reason TOO_MANY_CONCURRENT_CALLS); 0: no limit.
    max_calls_per_principal: int = Field(default=256, ge=0)
    max_streams_per_principal: int = Field(default=8, ge=0)
    # Keys created over the ledger's CreateKey are looked up there and remembered this long: a
    # revoked one stops working within it.
    key_cache_seconds: float = Field(default=10.0, gt=0)
    # TLS on the port (service_kit/tls.py): the certificate chain and its key (PEM). With a client CA,
    # mutual TLS: only clients with a certificate it signed may connect.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
