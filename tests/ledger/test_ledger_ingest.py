"""RecordUsage: idempotency on (request_id, attempt), exact money, sender spool reports, bad input."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest

from llmroute.common.v1 import common_pb2 as C
from llmroute.ledger.v1 import ledger_pb2 as L
from tests.ledger.conftest import Ledger
from tests.ledger.ledger_helpers import now_us, record
from tests.rich_status import details

MIN = 60_000_000


async def test_a_duplicate_delivery_is_counted_once(ledger: Ledger) -> None:
    at = now_us() - MIN
    batch = [record(f"r{i}", 1, at=at, cost=0.001, final=True, total_ms=10) for i in range(5)]
    first = await ledger.stub.RecordUsage(L.RecordUsageRequest(records=batch))
    assert (first.inserted, first.duplicates) == (5, 0)
    again = await ledger.stub.RecordUsage(L.RecordUsageRequest(records=batch))
    assert (again.inserted, again.duplicates) == (0, 5)
    # Overlap plus new records, and the same record twice in one batch.
    extra = record("r9", 1, at=at, cost=0.004, final=True, total_ms=10)
    mixed = await ledger.stub.RecordUsage(L.RecordUsageRequest(records=[batch[0], extra, extra, batch[4]]))
    assert (mixed.inserted, mixed.duplicates) == (1, 3)
    stats = await ledger.stub.GetStats(L.GetStatsRequest(window=L.TimeWindow(last_minutes=10)))
    assert (stats.totals.requests, stats.totals.attempts, stats.totals.cost_usd) == (6, 6, 0.009)


async def test_a_redelivered_attempt_with_other_values_keeps_the_first(ledger: Ledger) -> None:
    at = now_us() - MIN
    await ledger.stub.RecordUsage(L.RecordUsageRequest(records=[record("r1", 1, at=at, cost=0.001)]))
    result = await ledger.stub.RecordUsage(L.RecordUsageRequest(records=[record("r1", 1, at=at, cost=5.0)]))
    assert (result.inserted, result.duplicates) == (0, 1)
    stats = await ledger.stub.GetStats(L.GetStatsRequest(window=L.TimeWindow(last_minutes=10)))
    assert stats.totals.cost_usd == 0.001


async def test_concurrent_duplicate_batches_on_one_replica(ledger: Ledger) -> None:
    at = now_us() - MIN
    records = [
        record(f"c{i}", a, at=at, cost=0.000001 * (i + 1), final=a == 2) for i in range(60) for a in (1, 2)
    ]
    results = await asyncio.gather(
        *(ledger.stub.RecordUsage(L.RecordUsageRequest(records=records[k::3])) for k in range(3)),
        *(ledger.stub.RecordUsage(L.RecordUsageRequest(records=records)) for _ in range(3)),
    )
    assert sum(r.inserted for r in results) == len(records)
    stats = await ledger.stub.GetStats(L.GetStatsRequest(window=L.TimeWindow(last_minutes=10)))
    assert (stats.totals.requests, stats.totals.attempts) == (60, 120)
    assert stats.totals.cost_usd == sum(round(r.usage.cost_usd * 1e9) for r in records) / 1e9


async def test_money_is_summed_exactly(ledger: Ledger) -> None:
    # Ten thousand attempts of 0.1 cent: float addition would drift; nano-dollar integers do not.
    at = now_us() - MIN
    records = [record(f"m{i}", 1, at=at, cost=0.001, classifier=0.0000001, final=True) for i in range(10_000)]
    for i in range(0, len(records), 2500):
        await ledger.stub.RecordUsage(L.RecordUsageRequest(records=records[i : i + 2500]))
    stats = await ledger.stub.GetStats(L.GetStatsRequest(window=L.TimeWindow(last_minutes=10)))
    assert stats.totals.cost_usd == 10.0
    assert stats.totals.classifier_cost_usd == 0.001
    assert sum(0.001 for _ in range(10_000)) != 10.0  # what a float running sum would have reported


async def test_spool_depth_is_the_sum_of_each_senders_latest_report(ledger: Ledger) -> None:
    async def report(sender: str, depth: int) -> None:
        await ledger.stub.RecordUsage(L.RecordUsageRequest(sender=sender, sender_spool_depth=depth))

    await report("router-a", 40)
    await report("router-b", 2)
    await report("router-a", 7)
    stats = await ledger.stub.GetStats(L.GetStatsRequest())
    assert stats.spool_depth == 9


def _bad(**changes: object) -> L.UsageRecord:
    r = record("bad", 1, at=now_us() - MIN)
    for name, value in changes.items():
        if name == "cost_usd":
            r.usage.cost_usd = value  # type: ignore[assignment]
        elif name == "input_tokens":
            r.usage.input_tokens = value  # type: ignore[assignment]
        elif name == "no_time":
            r.ClearField("time")
        else:
            setattr(r, name, value)
    return r


@pytest.mark.parametrize(
    ("bad", "field", "fragment"),
    [
        (_bad(cost_usd=-0.01), "records[1].usage.cost_usd", "negative"),
        (_bad(cost_usd=math.nan), "records[1].usage.cost_usd", "finite"),
        (_bad(input_tokens=-3), "records[1].usage.input_tokens", "negative"),
        (_bad(classifier_cost_usd=-1.0), "records[1].classifier_cost_usd", "negative"),
        (_bad(total_ms=-1.0), "records[1].total_ms", "negative"),
        (_bad(attempt=0), "records[1].attempt", "between 1"),
        (_bad(request_id=""), "records[1].request_id", "required"),
        (_bad(no_time=True), "records[1].time", "required"),
        (_bad(caller="c" * 201), "records[1].caller", "at most 200"),
    ],
)
async def test_bad_records_are_refused_with_the_field(
    ledger: Ledger, bad: L.UsageRecord, field: str, fragment: str
) -> None:
    good = record("good", 1, at=now_us() - MIN, cost=0.001)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.stub.RecordUsage(L.RecordUsageRequest(records=[good, bad]))
    found = details(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in found.violations[field], found.violations
    # Nothing of the batch was stored: a batch is all or nothing.
    stats = await ledger.stub.GetStats(L.GetStatsRequest())
    assert stats.totals.attempts == 0


async def test_a_record_from_the_future_is_refused(ledger: Ledger) -> None:
    future = record("f", 1, at=now_us() + 2 * 3600 * 1_000_000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.stub.RecordUsage(L.RecordUsageRequest(records=[future]))
    found = details(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and "future" in found.violations["records[0].time"]


async def test_an_oversized_batch_names_the_limit(backend: object) -> None:
    from tests.ledger.conftest import start_ledger, stop_ledger

    ledger = await start_ledger(backend.settings(max_batch_records=3))  # type: ignore[attr-defined]
    try:
        records = [record(f"o{i}", 1, at=now_us() - MIN) for i in range(4)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ledger.stub.RecordUsage(L.RecordUsageRequest(records=records))
        found = details(caught.value)
        assert found.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 3" in found.violations["records"]
        assert found.metadata["max_batch_records"] == "3"
    finally:
        await stop_ledger(ledger)


@pytest.mark.parametrize("depth", [-1, 10**12 + 1])
async def test_an_impossible_sender_depth_is_refused(ledger: Ledger, depth: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.stub.RecordUsage(L.RecordUsageRequest(sender="r", sender_spool_depth=depth))
    found = details(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert found.violations["sender_spool_depth"].endswith(f"got {depth}")


async def test_unknown_enum_values_are_kept_not_refused(ledger: Ledger) -> None:
    # A router built from a newer contract may send values this ledger does not know yet: its
    # money must still be counted.
    r = record("new", 1, at=now_us() - MIN, cost=0.002, tier=C.TIER_REASONING, final=True)
    r.category = 42  # type: ignore[assignment]
    await ledger.stub.RecordUsage(L.RecordUsageRequest(records=[r]))
    stats = await ledger.stub.GetStats(L.GetStatsRequest(group_by=[L.GROUP_BY_CATEGORY]))
    assert stats.totals.cost_usd == 0.002
    assert [g.key for g in stats.breakdowns[0].groups] == ["42"]


async def test_free_text_fields_are_bounded(ledger: Ledger) -> None:
    """A record cannot carry a megabyte of text into the ledger and its exports."""
    huge = record("t1", 1, at=now_us() - 60_000_000, error="e" * 1_000_000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.stub.RecordUsage(L.RecordUsageRequest(records=[huge]))
    found = details(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 500" in found.violations["records[0].error"]
    fits = record("t2", 1, at=now_us() - 60_000_000, error="e" * 500, classifier_version="v" * 200)
    assert (await ledger.stub.RecordUsage(L.RecordUsageRequest(records=[fits]))).inserted == 1
