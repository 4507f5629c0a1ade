"""Domain errors shared by the services, and their one conversion into a rich gRPC status (AIP-193)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "llmroute.dev"


class ServiceError(Exception):
    """An error with a gRPC status code, a reason in UPPER_SNAKE and metadata naming the values involved."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
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
    default_reason = "INVALID_ARGUMENT"

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
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"
