"""A stand-in router process for the crash tests: submits records through a LedgerReporter and prints
`acked <request_id>` after each submit() returned (the point where a router answers its caller).

    python -m tests.ledger.reporter_worker ADDRESS SPOOL PREFIX COUNT
"""

from __future__ import annotations

import asyncio
import sys

from google.protobuf import timestamp_pb2

from ledger_client import LedgerReporter
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2


async def main(address: str, spool: str, prefix: str, count: int) -> None:
    reporter = LedgerReporter(address, spool, sender=f"worker-{prefix}", backoff_max=0.2, flush_interval=0.01)
    await reporter.start()
    for i in range(count):
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        request_id = f"{prefix}-{i}"
        reporter.submit(
            [
                ledger_pb2.UsageRecord(
                    request_id=request_id,
                    attempt=1,
                    time=now,
                    caller="crash-test",
                    model="m",
                    usage=common_pb2.Usage(cost_usd=0.000001, baseline_cost_usd=0.00001),
                    price_known=True,
                    final=True,
                    total_ms=5,
                )
            ]
        )
        print(f"acked {request_id}", flush=True)
        if i % 20 == 0:
            await asyncio.sleep(0.005)  # let the sender run, as a busy router would
    print("done", flush=True)
    await asyncio.sleep(3600)  # keep sending until killed; never close the reporter


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
