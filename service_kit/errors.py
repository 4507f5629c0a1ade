"""Domain errors shared by the services, and their one conversion into a rich gRPC status (AIP-193)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "llmroute.dev"


class Reason(StrEnum):
    """The error catalogue: every reason a service puts in ErrorInfo (AIP-193), with the status it comes
    with in `STATUS`. The contract's copy is common.proto's ErrorReason (ERROR_REASON_<name>)."""

    INTERNAL = "INTERNAL"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    FORCED_MODEL_NOT_ALLOWED = "FORCED_MODEL_NOT_ALLOWED"
    RECORD_TOO_OLD = "RECORD_TOO_OLD"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    MAX_COST_EXCEEDED = "MAX_COST_EXCEEDED"
    TOO_MANY_CONCURRENT_CALLS = "TOO_MANY_CONCURRENT_CALLS"
    UNAVAILABLE = "UNAVAILABLE"
    NO_CANDIDATE_AVAILABLE = "NO_CANDIDATE_AVAILABLE"
    ALL_PROVIDERS_FAILED = "ALL_PROVIDERS_FAILED"
    PROVIDER_STREAM_BROKEN = "PROVIDER_STREAM_BROKEN"
    USAGE_NOT_RECORDABLE = "USAGE_NOT_RECORDABLE"
    BUDGET_CHECK_UNAVAILABLE = "BUDGET_CHECK_UNAVAILABLE"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    KEY_LOOKUP_UNAVAILABLE = "KEY_LOOKUP_UNAVAILABLE"
    NOT_FOUND = "NOT_FOUND"
    REQUEST_NOT_FOUND = "REQUEST_NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    FORCED_MODEL_UNAVAILABLE = "FORCED_MODEL_UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    ROLE_REQUIRED = "ROLE_REQUIRED"
    CALLER_NOT_ALLOWED = "CALLER_NOT_ALLOWED"
    ADMIN_TOKEN_MISSING = "ADMIN_TOKEN_MISSING"
    ADMIN_TOKEN_INVALID = "ADMIN_TOKEN_INVALID"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    API_KEY_MISSING = "API_KEY_MISSING"
    API_KEY_INVALID = "API_KEY_INVALID"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"


# Each reason's status code: an error of one reason always has this code.
STATUS: dict[Reason, grpc.StatusCode] = {
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
    Reason.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.MALFORMED_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.FORCED_MODEL_NOT_ALLOWED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.RECORD_TOO_OLD: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.BUDGET_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.MAX_COST_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.TOO_MANY_CONCURRENT_CALLS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.NO_CANDIDATE_AVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.ALL_PROVIDERS_FAILED: grpc.StatusCode.UNAVAILABLE,
    Reason.PROVIDER_STREAM_BROKEN: grpc.StatusCode.UNAVAILABLE,
    Reason.USAGE_NOT_RECORDABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.BUDGET_CHECK_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.DATABASE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.KEY_LOOKUP_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.REQUEST_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.FORCED_MODEL_UNAVAILABLE: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.ROLE_REQUIRED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.CALLER_NOT_ALLOWED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.ADMIN_TOKEN_MISSING: grpc.StatusCode.PERMISSION_DENIED,
    Reason.ADMIN_TOKEN_INVALID: grpc.StatusCode.PERMISSION_DENIED,
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.API_KEY_MISSING: grpc.StatusCode.UNAUTHENTICATED,
    Reason.API_KEY_INVALID: grpc.StatusCode.UNAUTHENTICATED,
    Reason.IDEMPOTENCY_KEY_REUSED: grpc.StatusCode.ALREADY_EXISTS,
}

# What each reason means, for docs/errors.md and readers.
MEANING: dict[Reason, str] = {
    Reason.INTERNAL: "A bug of ours; the message says no more.",
    Reason.INVALID_ARGUMENT: "A field is wrong; BadRequest lists each violation.",
    Reason.MALFORMED_REQUEST: "The request is not a valid protobuf message of the method's type.",
    Reason.FORCED_MODEL_NOT_ALLOWED: "options.force_model names a model the routing policy does not list.",
    Reason.RECORD_TOO_OLD: "A usage record older than the ledger's retention of request ids.",
    Reason.RESOURCE_EXHAUSTED: "A limit was reached.",
    Reason.BUDGET_EXCEEDED: "The caller's hard budget is spent; metadata names caller, scope, period, limit and spend.",
    Reason.MAX_COST_EXCEEDED: "No candidate fits options.max_cost_usd; metadata gives the cheapest estimate.",
    Reason.TOO_MANY_CONCURRENT_CALLS: "The principal has as many calls or streams open as it may.",
    Reason.UNAVAILABLE: "Try again later or elsewhere.",
    Reason.NO_CANDIDATE_AVAILABLE: "Every candidate model is skipped now; metadata gives the tier and the reasons.",
    Reason.ALL_PROVIDERS_FAILED: "Every candidate model was called and failed; every attempt is recorded.",
    Reason.PROVIDER_STREAM_BROKEN: "The provider failed after the first streamed delta; a partial answer cannot be retried.",
    Reason.USAGE_NOT_RECORDABLE: "The router cannot record usage now (spool failing or full): nothing paid is started.",
    Reason.BUDGET_CHECK_UNAVAILABLE: "The ledger cannot be asked about the caller's budget and the router fails closed.",
    Reason.DATABASE_UNAVAILABLE: "The ledger's database is unreachable.",
    Reason.KEY_LOOKUP_UNAVAILABLE: "An API key cannot be checked against the ledger now.",
    Reason.NOT_FOUND: "The named thing does not exist (for this caller).",
    Reason.REQUEST_NOT_FOUND: "No run of this caller's request with that id (feedback is only for one's own requests).",
    Reason.FAILED_PRECONDITION: "The system is not in a state for this call.",
    Reason.FORCED_MODEL_UNAVAILABLE: "The forced model cannot be used now; metadata gives the skip reason.",
    Reason.DEADLINE_EXCEEDED: "The request's deadline passed before a model answered.",
    Reason.PERMISSION_DENIED: "The caller may not do this.",
    Reason.ROLE_REQUIRED: "The key lacks the role this method needs; metadata names the roles.",
    Reason.CALLER_NOT_ALLOWED: "The key may not act as the caller the request names.",
    Reason.ADMIN_TOKEN_MISSING: "An admin operation without the admin token.",
    Reason.ADMIN_TOKEN_INVALID: "The admin token sent is not the admin token.",
    Reason.UNAUTHENTICATED: "No usable credentials.",
    Reason.API_KEY_MISSING: "Keys are required and none was sent.",
    Reason.API_KEY_INVALID: "The key sent is unknown or revoked.",
    Reason.IDEMPOTENCY_KEY_REUSED: "The request id was used by this caller for a different request.",
}


class ServiceError(Exception):
    """An error with a gRPC status code, a reason in UPPER_SNAKE and metadata naming the values involved."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason: Reason = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason: str = str(reason or self.default_reason)
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}

    def details(self) -> list[any_pb2.Any]:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata))
        return [info]

    def to_status(self) -> grpc.Status:
        status = status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=self.details()
        )
        return rpc_status.to_status(status)


# A status travels in HTTP/2 trailers, which gRPC clients cap (8 KiB by default): past that the client
# gets RESOURCE_EXHAUSTED and never sees the status. Descriptions quote what was sent (a role, a model
# name), so the violations and the message are bounded in bytes: UTF-8 here, percent-encoded (up to
# three times longer) in grpc-message and base64 in grpc-status-details-bin.
_MAX_DESCRIPTION_BYTES = 200
_MAX_VIOLATIONS_BYTES = 3000
_MAX_MESSAGE_BYTES = 500


def _cut(text: str, limit: int) -> str:
    data = text.encode()
    return text if len(data) <= limit else data[: limit - 3].decode(errors="ignore") + "..."


class InvalidArgument(ServiceError):
    """Bad input; carries one BadRequest field violation per problem."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = Reason.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[tuple[str, str]], **kwargs: object) -> None:
        self.violations = []
        size = 0
        for index, (field, description) in enumerate(violations):
            violation = (_cut(field, _MAX_DESCRIPTION_BYTES), _cut(description, _MAX_DESCRIPTION_BYTES))
            size += len(violation[0].encode()) + len(violation[1].encode())
            if size > _MAX_VIOLATIONS_BYTES:
                self.violations.append(("", f"and {len(violations) - index} more violations"))
                break
            self.violations.append(violation)
        message = "; ".join(f"{field}: {description}" for field, description in self.violations)
        super().__init__(_cut(f"invalid request: {message}", _MAX_MESSAGE_BYTES), **kwargs)  # type: ignore[arg-type]

    def details(self) -> list[any_pb2.Any]:
        bad_request = any_pb2.Any()
        bad_request.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
                    for field, description in self.violations
                ]
            )
        )
        return [*super().details(), bad_request]


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = Reason.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = Reason.UNAVAILABLE


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = Reason.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = Reason.FAILED_PRECONDITION


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = Reason.DEADLINE_EXCEEDED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = Reason.PERMISSION_DENIED
