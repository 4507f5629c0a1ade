"""The CLI's channels: the API key from the environment (`LLMROUTE_API_KEY`, or a file named by
`LLMROUTE_API_KEY_FILE`), never from a flag that `ps` would show, sent as `authorization: Bearer`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from llmroute_client.client import from_environment


def secret(name: str) -> str:
    """`NAME` from the environment, else the contents of the file `NAME_FILE` names, else ''."""
    return from_environment(name)


def api_key() -> str:
    return secret("LLMROUTE_API_KEY")


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, key: str) -> None:
        self._pair = ("authorization", f"Bearer {key}")

    def _with_key(self, details: Any) -> _Details:
        pairs = [pair for pair in (details.metadata or ()) if pair[0] != "authorization"]
        return _Details(
            details.method,
            details.timeout,
            [*pairs, self._pair],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)


def channel(address: str) -> grpc.Channel:
    """A channel to a service, carrying the API key when one is set."""
    plain = grpc.insecure_channel(address)
    key = api_key()
    return grpc.intercept_channel(plain, _Bearer(key)) if key else plain
