"""The books of a run: the ledger's records against the calls the simulator received, once every report
has arrived. Read by the soak (benchmarks/soak.py) and the fault suite (tests/e2e/faultload.py).

Zero lost and zero doubled records: the ledger's attempts equal the provider calls the simulator
received, in total and per model; no record key twice; every run's attempts are 1..n; the router's
spool is empty.

One exception, bounded and counted (`Books.phantoms`): an attempt whose client's deadline (or cancel)
struck in the moment between LiteLLM handing the call to its HTTP client and the request reaching the
provider is recorded (the router cannot tell it from a call the provider received, and charges the
prompt's estimate: it errs towards recording spend, never towards losing it) though the simulator never
counted it. Per model, the ledger may exceed the simulator only by such attempts: the last attempt of a
request the client cut short, CANCELLED or TIMEOUT, with no output.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from devstack.stack import Stack
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc

# An attempt a client's own deadline or cancel ended before the provider answered anything.
INTERRUPTED = ("ATTEMPT_OUTCOME_CANCELLED", "ATTEMPT_OUTCOME_TIMEOUT")


def simulator(stack: Stack, path: str, body: object = None, method: str | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports.simulator}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method or ("GET" if body is None else "POST"),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def ledger_stats(stack: Stack, *group_by: ledger_pb2.GroupBy.ValueType) -> ledger_pb2.GetStatsResponse:
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.ledger}") as channel:
        return ledger_pb2_grpc.LedgerServiceStub(channel).GetStats(
            ledger_pb2.GetStatsRequest(group_by=list(group_by)), timeout=10
        )


def exported(stack: Stack) -> list[dict[str, Any]]:
    """Every record the ledger holds (all pages of ExportRecords)."""
    rows: list[dict[str, Any]] = []
    page = ""
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.ledger}") as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        while True:
            text, after = b"", ""
            for part in ledger.ExportRecords(ledger_pb2.ExportRecordsRequest(page_token=page), timeout=60):
                text += part.chunk
                after = part.next_page_token or after
            rows.extend(json.loads(line) for line in text.decode().splitlines() if line)
            if not after:
                return rows
            page = after


@dataclass
class Books:
    """The simulator's counters and the ledger's view, once every report has arrived."""

    sim: dict[str, Any]
    stats: ledger_pb2.GetStatsResponse
    records: list[dict[str, Any]] = field(default_factory=list)
    # What does not reconcile, one line each; empty when the books hold.
    problems: list[str] = field(default_factory=list)
    # Attempts recorded that the simulator never received (see the module's docstring).
    phantoms: int = 0

    def by(self, dimension: ledger_pb2.GroupBy.ValueType) -> dict[str, ledger_pb2.Totals]:
        return {g.key: g.totals for b in self.stats.breakdowns if b.group_by == dimension for g in b.groups}

    def by_model(self) -> dict[str, int]:
        return {model: totals.attempts for model, totals in self.by(ledger_pb2.GROUP_BY_MODEL).items()}

    def of(self, request_id: str) -> list[dict[str, Any]]:
        return sorted((r for r in self.records if r["request_id"] == request_id), key=lambda r: r["attempt"])


def settled(
    stack: Stack,
    group_by: tuple[ledger_pb2.GroupBy.ValueType, ...] = (ledger_pb2.GROUP_BY_MODEL,),
    timeout: float = 60.0,
    quiet: float = 12.0,
) -> Books:
    """Wait until nothing is in flight, nothing is spooled, and the ledger holds every attempt the
    simulator saw (the router's reports are asynchronous), or the counts have not moved for `quiet`
    seconds (longer than the reporter's longest retry backoff, 10 s): a phantom leaves the ledger
    ahead for good, and `reconcile` judges it. At the deadline, return what there is. The ledger's
    stats are broken down by `group_by` (by model, unless told)."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while True:
        sim = simulator(stack, "/_sim/stats")
        try:
            stats = ledger_stats(stack, *group_by)
        except grpc.RpcError:
            stats = None
        if stats is not None:
            now = (sim["totals"]["requests"], stats.totals.attempts, stats.spool_depth, sim["in_flight"])
            if now != last:
                last, since = now, time.monotonic()
            elif (
                sim["in_flight"] == 0
                and now[2] == 0
                and (now[0] == now[1] or time.monotonic() - since >= quiet)
            ):
                return Books(sim, stats)
        if time.monotonic() > deadline:
            if stats is None:
                raise AssertionError("the ledger does not answer GetStats")
            return Books(sim, stats)
        time.sleep(0.3)


def check(stack: Stack, cut_short_ids: Iterable[str]) -> Books:
    """Settle, export every record and reconcile them with the simulator's counters; `cut_short_ids`:
    the request ids whose clients cut them short (a deadline or a cancel)."""
    books = settled(stack)
    books.records = exported(stack)
    return reconcile(books, cut_short_ids)


def reconcile(books: Books, cut_short_ids: Iterable[str]) -> Books:
    """Fill in `books.problems` and `books.phantoms` from its records and counters."""
    sim, stats = books.sim, books.stats
    problems = books.problems
    if len(books.records) != stats.totals.attempts:
        problems.append(f"{len(books.records)} records exported, GetStats counts {stats.totals.attempts}")
    ids = set(cut_short_ids)
    last: dict[tuple[str, str, str], dict[str, Any]] = {}
    for record in books.records:
        run = (record["caller"], record["request_id"], record["run_id"])
        if run not in last or record["attempt"] > last[run]["attempt"]:
            last[run] = record
    cut_short = Counter(
        r["model"]
        for r in last.values()
        if r["request_id"] in ids and r["outcome"] in INTERRUPTED and r["output_tokens"] == 0
    )
    ledger = books.by_model()
    for model in sorted(set(ledger) | set(sim["models"])):
        seen = sim["models"].get(model, {}).get("requests", 0)
        excess = ledger.get(model, 0) - seen
        if not 0 <= excess <= cut_short[model]:
            problems.append(
                f"{model}: ledger {ledger.get(model, 0)} attempts, simulator {seen} calls "
                f"(in all: ledger {stats.totals.attempts}, simulator {sim['totals']['requests']}; "
                f"attempts a client cut short before any output: {cut_short[model]})"
            )
        books.phantoms += max(excess, 0)
    if stats.spool_depth:
        problems.append(f"{stats.spool_depth} records still spooled")
    keys = Counter((r["caller"], r["request_id"], r["run_id"], r["attempt"]) for r in books.records)
    doubled = [key for key, n in keys.items() if n > 1]
    if doubled:
        problems.append(f"{len(doubled)} record keys twice, such as {doubled[:3]}")
    runs: dict[tuple[str, str, str], list[int]] = {}
    for caller, request_id, run_id, attempt in keys:
        runs.setdefault((caller, request_id, run_id), []).append(attempt)
    gaps = [run for run, a in runs.items() if sorted(a) != list(range(1, len(a) + 1))]
    if gaps:
        problems.append(f"{len(gaps)} runs with missing attempts, such as {gaps[:3]}")
    return books
