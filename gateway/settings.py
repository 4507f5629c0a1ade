"""gateway configuration, from GATEWAY_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service_kit.policy import DEFAULT_POLICY_PATH


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    router_address: str = "127.0.0.1:50051"
    ledger_address: str = "127.0.0.1:50053"
    # The gRPC deadline of each Route / RouteStream call: it bounds classification and every provider
    # call of the request together (an HTTP request carries no deadline of its own).
    route_timeout_seconds: float = Field(default=300.0, gt=0)
    # GetStats deadline.
    stats_timeout_seconds: float = Field(default=30.0, gt=0)
    # /readyz asks the router's health service, for at most this long.
    ready_timeout_seconds: float = Field(default=1.0, gt=0)
    # Larger request bodies are refused (413) before they are parsed.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # Model names an application already sends, and what they mean here: {"gpt-4o": "llmroute/auto"}
    # routes an application that asks for gpt-4o without a change to its code (JSON in the env var).
    model_aliases: dict[str, str] = Field(default_factory=dict)
    # For GET /v1/models: the routing policy the router serves (the same file) and the price overrides
    # it applies (ROUTER_PRICE_OVERRIDES_PATH's file, when the router has one). Both are re-read when
    # they change.
    policy_path: Path = DEFAULT_POLICY_PATH
    price_overrides_path: Path | None = None
    # TLS (service_kit/tls.py). peer_ca_file: the CA that signed the router's and the ledger's
    # certificates; set, the gateway calls them over TLS (unset: plaintext, as on loopback).
    # tls_cert_file + tls_key_file (PEM): the gateway serves HTTPS with them, and presents the
    # certificate to the router and the ledger (mutual TLS, when they require a client certificate).
    peer_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    log_level: str = "INFO"
    log_json: bool = True
    # Include libraries' own log messages (they may quote requests, so off by default).
    log_library_messages: bool = False
    # Seconds requests in flight get to finish on SIGTERM.
    grace_seconds: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _whole_tls_pair(self) -> GatewaySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE")
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
