"""Failed calls as exceptions, with the rich status (AIP-193) the services send, unpacked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class LLMRouteError(Exception):
    """A call that failed: its gRPC code, message, reason (UPPER_SNAKE), metadata and field violations.

    `violations` maps each field to its violation (a field named twice keeps its last);
    `field_violations` is every (field, description) in the order the service sent them."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        violations: dict[str, str] | None = None,
        field_violations: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {reason + ': ' if reason else ''}{message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        self.violations = violations or {}
        self.field_violations = (
            list(field_violations) if field_violations is not None else list(self.violations.items())
        )


class InvalidArgument(LLMRouteError):
    """The request was refused before anything was paid; `violations` names each field."""


class BudgetExceeded(LLMRouteError):
    """RESOURCE_EXHAUSTED: a budget (its scope and limit in `metadata`), a cost cap or a rate limit."""


class Unauthenticated(LLMRouteError):
    """No API key, or one that is unknown or revoked."""


class PermissionDenied(LLMRouteError):
    """The key's roles do not allow the call, or it names a caller the key may not act for."""


class AlreadyExists(LLMRouteError):
    """The request id is bound to a different request: use a new id for a new request."""


class Unavailable(LLMRouteError):
    """The router could not be reached, or no model could answer now; retried before it is raised."""


_BY_CODE: dict[grpc.StatusCode, type[LLMRouteError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: BudgetExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def from_rpc_error(error: Any) -> LLMRouteError:
    """The exception for a failed call (`grpc.RpcError` or `grpc.aio.AioRpcError`), its rich status
    unpacked. The one unpacking of AIP-193 details the clients share: this client and the CLI, the
    gateway, `ledger_client` and the tests."""
    code = error.code()
    reason, metadata = "", {}
    pairs: list[tuple[str, str]] = []
    try:
        rich = rpc_status.from_call(error)
    except ValueError:  # a status whose details disagree with its code: keep the code and message
        rich = None
    if rich is not None:
        for detail in rich.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                pairs = [(v.field, v.description) for v in bad.field_violations]
    kind = _BY_CODE.get(code, LLMRouteError)
    return kind(code, error.details() or "", reason, metadata, dict(pairs), pairs)
