"""ledger_client: the client side of the ledger service, for whoever sends it usage records (the
router, the feedback loop's replay, tests and benchmarks).

- `reporter.py`: `LedgerReporter`, durable, batched, asynchronous delivery of usage records
  (RecordUsage), and `ReporterStats`;
- `spool.py`: the reporter's local SQLite spool and its limits (size on disk, age);
- `refusals.py`: what a failed RecordUsage means for the records it carried.

It depends on grpc, structlog, the generated stubs, `service_kit` (channels, keys) and
`llmroute_client.errors` (the one unpacking of the services' rich status), never on `ledger_svc`:
the router's image ships this package, not the ledger service.
"""

from ledger_client.reporter import LedgerReporter, ReporterStats

__all__ = ["LedgerReporter", "ReporterStats"]
