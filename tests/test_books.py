"""The books check the soak and the fault suite end with (benchmarks/books.py): what it must flag
(a lost record, a doubled one, a gap in a run's attempts, spooled records) and the one excess it
allows (a phantom: a call a client cut short before it reached the provider)."""

from __future__ import annotations

from typing import Any

from benchmarks.books import Books, reconcile
from llmroute.ledger.v1 import ledger_pb2

MODEL = "groq/openai/gpt-oss-20b"


def _record(
    request_id: str, attempt: int = 1, outcome: str = "ATTEMPT_OUTCOME_OK", output: int = 5
) -> dict[str, Any]:
    return {
        "caller": "soak",
        "request_id": request_id,
        "run_id": f"run-{request_id}",
        "attempt": attempt,
        "model": MODEL,
        "outcome": outcome,
        "output_tokens": output,
    }


def _books(records: list[dict[str, Any]], simulated: int, spooled: int = 0) -> Books:
    stats = ledger_pb2.GetStatsResponse(spool_depth=spooled)
    stats.totals.attempts = len(records)
    breakdown = stats.breakdowns.add(group_by=ledger_pb2.GROUP_BY_MODEL)
    group = breakdown.groups.add(key=MODEL)
    group.totals.attempts = len(records)
    sim = {"models": {MODEL: {"requests": simulated}}, "totals": {"requests": simulated}}
    return Books(sim, stats, records=records)


def test_books_that_match_hold() -> None:
    books = reconcile(_books([_record("a"), _record("b", 1), _record("b", 2)], simulated=3), [])
    assert books.problems == [] and books.phantoms == 0


def test_a_lost_record_is_flagged() -> None:
    books = reconcile(_books([_record("a")], simulated=2), [])
    assert len(books.problems) == 1 and "simulator 2 calls" in books.problems[0]


def test_a_record_twice_is_flagged_even_when_the_counts_match() -> None:
    books = reconcile(_books([_record("a"), _record("a")], simulated=2), [])
    assert any("twice" in problem for problem in books.problems)


def test_a_run_missing_an_attempt_is_flagged() -> None:
    books = reconcile(_books([_record("a", 1), _record("a", 3)], simulated=2), [])
    assert any("missing attempts" in problem for problem in books.problems)


def test_records_left_in_the_spool_are_flagged() -> None:
    books = reconcile(_books([_record("a")], simulated=1, spooled=4), [])
    assert books.problems == ["4 records still spooled"]


def test_a_phantom_is_allowed_only_for_a_request_its_client_cut_short_before_any_output() -> None:
    cancelled = _record("c", outcome="ATTEMPT_OUTCOME_CANCELLED", output=0)
    books = reconcile(_books([_record("a"), cancelled], simulated=1), ["c"])
    assert books.problems == [] and books.phantoms == 1
    # The same excess is a problem when the client did not cut that request short,
    assert reconcile(_books([_record("a"), cancelled], simulated=1), []).problems
    # or when the cut attempt had output (the provider answered part of it: it received the call).
    answered = _record("c", outcome="ATTEMPT_OUTCOME_CANCELLED", output=3)
    assert reconcile(_books([_record("a"), answered], simulated=1), ["c"]).problems
