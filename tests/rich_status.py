"""Unpack AIP-193 rich error details from a failed call, the way a client would: with
llmroute_client's own unpacking, so every test that reads a status also checks the client's."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from llmroute_client.errors import from_rpc_error


@dataclass
class Details:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: dict[str, str] = field(default_factory=dict)


def details(error: grpc.aio.AioRpcError) -> Details:
    found = from_rpc_error(error)
    return Details(found.code, found.message, found.reason, found.metadata, found.violations)
