"""What a failed RecordUsage means for the records it carried.

The ledger's answer is read with `llmroute_client.errors.from_rpc_error`, the one unpacking of the
services' rich status (AIP-193) that every client uses:
- INVALID_ARGUMENT with a `records` violation and `max_batch_records` in its metadata: the batch was
  larger than the ledger takes; send smaller ones;
- INVALID_ARGUMENT naming records (`records[3].caller`): those records will never be taken; set them
  aside (the spool's dead letters) so they cannot block the records behind them;
- anything else: not the records' fault; keep them and try again (`transient` says whether the
  ledger is merely unreachable or busy, or something needs fixing first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from llmroute_client.errors import from_rpc_error

__all__ = ["TRANSIENT", "Refusal", "read"]

# Failures that say "try again later": the records stay in the spool.
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    # A missing, wrong or revoked service key is a configuration to fix, not records to give up on.
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}


@dataclass(frozen=True)
class Refusal:
    """A failed RecordUsage, read: the ledger's batch limit when the batch was too large, or the
    batch's invalid records (index in the batch → why), or neither."""

    code: grpc.StatusCode
    max_batch_records: int | None = None
    invalid: dict[int, str] = field(default_factory=dict)

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT


def read(error: grpc.aio.AioRpcError, batch_size: int) -> Refusal:
    """What the ledger said about a batch of `batch_size` records it did not take."""
    code = error.code()
    if code != grpc.StatusCode.INVALID_ARGUMENT:
        return Refusal(code)
    found = from_rpc_error(error)
    if "records" in found.violations and "max_batch_records" in found.metadata:
        return Refusal(code, max_batch_records=int(found.metadata["max_batch_records"]))
    invalid: dict[int, str] = {}
    for name, description in found.violations.items():
        index = _record_index(name)
        if index is not None and index < batch_size:
            invalid[index] = (
                f"{invalid[index]}; {name}: {description}" if index in invalid else f"{name}: {description}"
            )
    return Refusal(code, invalid=invalid)


def _record_index(field: str) -> int | None:
    if not field.startswith("records["):
        return None
    try:
        return int(field[len("records[") : field.index("]")])
    except ValueError:
        return None
