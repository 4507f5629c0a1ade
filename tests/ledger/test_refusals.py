"""ledger_client.refusals: what a failed RecordUsage means for the records it carried, read from the
status the ledger sends (service_kit's errors, as the ledger raises them)."""

from __future__ import annotations

from typing import Any

import grpc

from ledger_client import refusals
from service_kit.errors import InvalidArgument, ServiceError, Unavailable


class FailedCall:
    """What a failed call looks like to a client: code, details and trailing metadata."""

    def __init__(self, error: ServiceError) -> None:
        self._status = error.to_status()

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> Any:
        return self._status.trailing_metadata


def read(error: ServiceError, batch_size: int) -> refusals.Refusal:
    return refusals.read(FailedCall(error), batch_size)  # type: ignore[arg-type]


def test_a_batch_over_the_ledgers_limit_is_resent_smaller() -> None:
    refusal = read(
        InvalidArgument([("records", "at most 100 records a call")], metadata={"max_batch_records": 100}), 500
    )
    assert (refusal.max_batch_records, refusal.invalid) == (100, {})


def test_invalid_records_are_named_by_their_index_in_the_batch() -> None:
    refusal = read(
        InvalidArgument(
            [
                ("records[1].caller", "must not contain a control character"),
                ("records[1].cost_usd", "must not be negative"),
                ("records[3].model", "required"),
                ("records[9].model", "required"),  # not in this batch of 4: ignored
                ("sender", "too long"),  # not a record
            ]
        ),
        4,
    )
    assert refusal.max_batch_records is None
    assert refusal.invalid == {
        1: "records[1].caller: must not contain a control character; records[1].cost_usd: must not be negative",
        3: "records[3].model: required",
    }
    assert not refusal.transient


def test_other_failures_keep_the_records() -> None:
    unreachable = read(Unavailable("the ledger database is unavailable"), 10)
    assert (unreachable.code, unreachable.transient, unreachable.invalid) == (
        grpc.StatusCode.UNAVAILABLE,
        True,
        {},
    )
    assert read(InvalidArgument([("sender", "too long")]), 10) == refusals.Refusal(
        grpc.StatusCode.INVALID_ARGUMENT
    )
