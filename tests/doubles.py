"""Test doubles that implement the real interfaces."""

from __future__ import annotations

from collections.abc import Sequence

from llmroute.ledger.v1 import ledger_pb2


class RecordingSink:
    """A usage sink (the router's interface to the ledger) that keeps what it is given, in memory."""

    def __init__(self) -> None:
        self.records: list[ledger_pb2.UsageRecord] = []
        self.started = self.closed = False

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    def submit(self, records: Sequence[ledger_pb2.UsageRecord]) -> None:
        self.records.extend(records)

    def accepting(self) -> bool:
        return True
