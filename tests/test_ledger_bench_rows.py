"""The ledger benchmark bulk-loads rows it builds itself: they must fit the ledger's schema as it is."""

from __future__ import annotations

from benchmarks.ledger_bench import RECORD_COLUMNS, REQUEST_COLUMNS, day_of_records
from ledger_svc.schema import HOUR_US


def test_the_benchmarks_rows_fill_every_column_of_the_records_and_request_states() -> None:
    records, states = day_of_records(50, end_us=1_000 * HOUR_US)
    assert len(records) >= 50 and states
    assert {len(r) for r in records} == {len(RECORD_COLUMNS)}
    assert {len(s) for s in states} == {len(REQUEST_COLUMNS)}
    assert all(r[RECORD_COLUMNS.index("ts")] >= 1_000 * HOUR_US - 24 * HOUR_US for r in records)
