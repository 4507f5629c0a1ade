"""llmroute_client.errors.from_rpc_error, the one unpacking of the services' rich status (the client,
the CLI, the gateway, ledger_client and the tests use it)."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from llmroute_client.errors import BudgetExceeded, InvalidArgument, LLMRouteError, from_rpc_error
from service_kit import errors


class FailedCall:
    def __init__(self, status: grpc.Status, code: grpc.StatusCode | None = None) -> None:
        self._status, self._code = status, code or status.code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> Any:
        return self._status.trailing_metadata


def test_reason_metadata_and_every_violation_in_order() -> None:
    sent = errors.InvalidArgument(
        [("messages", "required"), ("options.temperature", "at most 2"), ("messages", "at most 500")],
        reason="BAD_REQUEST",
        metadata={"limit": 500},
    )
    found = from_rpc_error(FailedCall(sent.to_status()))
    assert isinstance(found, InvalidArgument)
    assert (found.code, found.reason, found.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "BAD_REQUEST",
        {"limit": "500"},
    )
    assert found.field_violations == [
        ("messages", "required"),
        ("options.temperature", "at most 2"),
        ("messages", "at most 500"),
    ]
    assert found.violations == {"messages": "at most 500", "options.temperature": "at most 2"}


def test_the_class_follows_the_code() -> None:
    found = from_rpc_error(
        FailedCall(errors.ResourceExhausted("spent", reason=errors.Reason.BUDGET_EXCEEDED).to_status())
    )
    assert isinstance(found, BudgetExceeded) and found.reason == "BUDGET_EXCEEDED"


def test_details_that_disagree_with_the_code_leave_the_code_and_message() -> None:
    status = rpc_status.to_status(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="bad"))
    found = from_rpc_error(FailedCall(status, code=grpc.StatusCode.INTERNAL))
    assert type(found) is LLMRouteError
    assert (found.code, found.message, found.reason, found.violations) == (
        grpc.StatusCode.INTERNAL,
        "bad",
        "",
        {},
    )
