"""OpenAI-shaped error responses, and the one mapping from gRPC statuses (with their rich details) to them.

Every error the gateway answers has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
so an OpenAI SDK raises its usual exception class for it (`BadRequestError` for 400,
`AuthenticationError` for 401, `RateLimitError` for 429...). The gRPC status's `ErrorInfo` (reason,
metadata) and `BadRequest` field violations are kept under `error.llmroute`, with the router's field
names translated to the request's own parameter names (`options.temperature` → `temperature`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from starlette.responses import JSONResponse

from llmroute_client import errors as client_errors
from service_kit.errors import Reason

# Headers the OpenAI SDKs honour: with "false" they do not retry what retrying cannot fix (by default
# they retry 408, 409, 429 and 5xx).
NO_RETRY = {"x-should-retry": "false"}


class GatewayError(Exception):
    """An error answered to the HTTP client: its status, and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        llmroute: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.llmroute = dict(llmroute or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.llmroute:
            error["llmroute"] = self.llmroute
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid_request(param: str | None, message: str, code: str = "invalid_value") -> GatewayError:
    """The gateway's own 400: a request it cannot translate (wrong type, unsupported parameter)."""
    return GatewayError(
        400,
        f"{param}: {message}" if param else message,
        type="invalid_request_error",
        code=code,
        param=param,
        headers=NO_RETRY,
    )


# gRPC code → HTTP status and OpenAI error type, before the reasons that refine it (below).
_BY_CODE: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.ABORTED: (409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}


def from_rpc_error(
    error: grpc.aio.AioRpcError, param_for: Callable[[str], str] = lambda name: name
) -> GatewayError:
    """The HTTP answer for a failed Route, RouteStream or GetStats call. `param_for` turns a field of
    the gRPC request into the HTTP request's parameter it came from."""
    found = client_errors.from_rpc_error(error)  # the rich status, unpacked as every client does
    status, type_ = _BY_CODE.get(found.code, (500, "server_error"))
    code = found.reason.lower() if found.reason else found.code.name.lower()
    headers: dict[str, str] = {}
    message = found.message
    param = None
    extra: dict[str, Any] = {"grpc_code": found.code.name}
    if found.reason:
        extra["reason"] = found.reason
    if found.metadata:
        extra["metadata"] = found.metadata
    if found.violations:
        violations = [(param_for(name), description) for name, description in found.field_violations]
        extra["violations"] = [{"param": p, "description": d} for p, d in violations]
        param = violations[0][0]
        message = "invalid request: " + "; ".join(f"{p}: {d}" for p, d in violations)

    if found.reason == Reason.FORCED_MODEL_NOT_ALLOWED:
        code, param = "model_not_found", param_for("options.force_model")
    elif found.reason == Reason.FORCED_MODEL_UNAVAILABLE:
        param = param_for("options.force_model")
        if found.metadata.get("skipped_reason") == "cooldown":  # failing now, back after its cooldown
            status, type_ = 503, "service_unavailable"
    elif found.reason == Reason.BUDGET_EXCEEDED:
        # What OpenAI answers when a quota is spent: code written for OpenAI already handles it. It is
        # not retried: the budget stays spent until its period ends, which Retry-After says.
        status, type_, code = 429, "insufficient_quota", "insufficient_quota"
        headers.update(NO_RETRY)
        until_reset = _seconds_until_period_end(found.metadata.get("period", ""))
        if until_reset is not None:
            headers["retry-after"] = str(until_reset)
    elif found.reason == Reason.MAX_COST_EXCEEDED:
        # The request's own cost cap is below every candidate's estimate: paying more would serve it.
        status, type_ = 402, "invalid_request_error"
        param = param_for("options.max_cost_usd")
        headers.update(NO_RETRY)
    elif found.code == grpc.StatusCode.ALREADY_EXISTS:
        param = param_for("request_id")
        headers.update(NO_RETRY)
    elif found.code == grpc.StatusCode.UNAVAILABLE and not found.reason:
        code = "upstream_unavailable"  # the gateway could not reach the service at all
    if status < 500 and status != 429:
        headers.update(NO_RETRY)
    return GatewayError(status, message, type=type_, code=code, param=param, headers=headers, llmroute=extra)


def _seconds_until_period_end(period: str, now: dt.datetime | None = None) -> int | None:
    """Seconds until a budget period (UTC day or month) starts again."""
    now = now or dt.datetime.now(dt.UTC)
    if period == "daily":
        end = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
    elif period == "monthly":
        end = dt.datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=dt.UTC)
    else:
        return None
    return max(1, int((end - now).total_seconds()))
