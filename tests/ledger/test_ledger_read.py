"""WatchSpend, ExportRecords (CSV and JSON lines), budgets with CheckBudget and the admin token, feedback."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from ledger_svc.settings import LedgerSettings
from llmroute.common.v1 import common_pb2 as C
from llmroute.ledger.v1 import ledger_pb2 as L
from tests.ledger.conftest import Backend, Clock, Ledger, start_ledger, stop_ledger
from tests.ledger.ledger_helpers import now_us, record
from tests.rich_status import details

MIN = 60_000_000


# ---- WatchSpend ---------------------------------------------------------------------------------


async def snapshot(
    call: grpc.aio.UnaryStreamCall[L.WatchSpendRequest, L.WatchSpendResponse], timeout: float = 5
) -> L.WatchSpendResponse:
    """The stream's next snapshot, within `timeout` seconds."""
    reply = await asyncio.wait_for(call.read(), timeout)
    assert isinstance(reply, L.WatchSpendResponse), "the stream ended"
    return reply


async def test_watch_spend_sends_a_snapshot_at_once_then_on_change(ledger: Ledger) -> None:
    call = ledger.stub.WatchSpend(L.WatchSpendRequest(interval_seconds=60, last_minutes=30))
    first = await snapshot(call)
    assert first.totals.cost_usd == 0.0
    started = time.monotonic()
    await ledger.stub.RecordUsage(
        L.RecordUsageRequest(records=[record("w1", 1, at=now_us() - MIN, cost=0.25, final=True, total_ms=5)])
    )
    changed = await snapshot(call)
    assert time.monotonic() - started < 5  # long before the 60 s interval
    assert (changed.totals.cost_usd, changed.totals.requests) == (0.25, 1)
    assert changed.time.ToMicroseconds() >= first.time.ToMicroseconds()
    call.cancel()


async def test_many_watchers_of_the_same_figures_share_one_read(midday_ledger: Ledger) -> None:
    """A hundred streams on one caller's spend read the database about once, not a hundred times; a
    new record is still seen by all of them at once."""
    ledger = midday_ledger  # the streams show today's figures: a record a minute ago is today's
    calls = [
        ledger.stub.WatchSpend(L.WatchSpendRequest(interval_seconds=60, caller="carol")) for _ in range(100)
    ]
    original = ledger.store.totals
    counted = 0

    async def counting(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        nonlocal counted
        counted += 1
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    ledger.store.totals = counting  # type: ignore[method-assign]
    try:
        firsts = await asyncio.gather(*(snapshot(c, 10) for c in calls))
        assert all(f.totals.cost_usd == 0.0 for f in firsts)
        assert counted <= 5, counted  # one read, give or take the streams that started late
        await ledger.stub.RecordUsage(
            L.RecordUsageRequest(records=[record("c1", 1, at=ledger.clock() - MIN, caller="carol", cost=0.5)])
        )
        seconds = await asyncio.gather(*(snapshot(c, 10) for c in calls))
        assert all(s.totals.cost_usd == 0.5 for s in seconds)  # the change reached every watcher
        assert counted <= 10, counted
    finally:
        ledger.store.totals = original  # type: ignore[method-assign]
        for c in calls:
            c.cancel()


async def test_watch_spend_ticks_every_interval_and_filters_by_caller(midday_ledger: Ledger) -> None:
    ledger = midday_ledger  # "since the start of today" holds a minute ago at any time of day
    await ledger.stub.RecordUsage(
        L.RecordUsageRequest(
            records=[
                record("a", 1, at=ledger.clock() - MIN, caller="alice", cost=0.1),
                record("b", 1, at=ledger.clock() - MIN, caller="bob", cost=0.2),
            ]
        )
    )
    call = ledger.stub.WatchSpend(L.WatchSpendRequest(interval_seconds=0.1, caller="bob"))
    snapshots = [await snapshot(call) for _ in range(3)]
    call.cancel()
    assert [s.totals.cost_usd for s in snapshots] == [0.2, 0.2, 0.2]  # since the start of today, bob only
    gaps = [b.time.ToMicroseconds() - a.time.ToMicroseconds() for a, b in itertools.pairwise(snapshots)]
    assert all(gap >= 90_000 for gap in gaps)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (L.WatchSpendRequest(interval_seconds=0.001), "interval_seconds"),
        (L.WatchSpendRequest(interval_seconds=-1), "interval_seconds"),
        (L.WatchSpendRequest(last_minutes=-1), "last_minutes"),
    ],
)
async def test_bad_watch_requests(ledger: Ledger, request_: L.WatchSpendRequest, field: str) -> None:
    call = ledger.stub.WatchSpend(request_)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    found = details(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in found.violations


# ---- ExportRecords ------------------------------------------------------------------------------


def _export_records(base: int) -> list[L.UsageRecord]:
    return [
        record("e1", 1, at=base, caller="alice", cost=0.000012345, classifier=0.0000001, input_tokens=10,
               output_tokens=3, outcome=C.ATTEMPT_OUTCOME_VALIDATION_FAILED),
        record("e1", 2, at=base + 1, caller="alice", model="big", cost=0.5, baseline=0.75, final=True, total_ms=12.5),
        record("e2", 1, at=base + 2, caller='bo"b, jr', cost=0, price_known=False, final=True),
    ]  # fmt: skip


async def _export(ledger: Ledger, request: L.ExportRecordsRequest) -> tuple[str, int]:
    chunks = [r.chunk async for r in ledger.stub.ExportRecords(request)]
    return b"".join(chunks).decode(), len(chunks)


async def test_export_csv(ledger: Ledger) -> None:
    base = now_us() - 10 * MIN
    await ledger.stub.RecordUsage(L.RecordUsageRequest(records=_export_records(base)))
    text, _ = await _export(
        ledger, L.ExportRecordsRequest(window=L.TimeWindow(last_minutes=60), format=L.EXPORT_FORMAT_CSV)
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["request_id"], r["attempt"]) for r in rows] == [("e1", "1"), ("e1", "2"), ("e2", "1")]
    first, second, third = rows
    assert first["cost_usd"] == "0.000012345" and first["classifier_cost_usd"] == "0.000000100"
    assert first["outcome"] == "ATTEMPT_OUTCOME_VALIDATION_FAILED" and first["tier"] == "TIER_SIMPLE"
    assert (first["input_tokens"], first["output_tokens"], first["final"]) == ("10", "3", "false")
    assert (second["baseline_cost_usd"], second["total_ms"], second["final"]) == (
        "0.750000000",
        "12.5",
        "true",
    )
    assert third["caller"] == 'bo"b, jr' and third["price_known"] == "false"
    assert datetime.fromisoformat(first["time"]).astimezone(UTC).timestamp() * 1_000_000 == pytest.approx(
        base
    )


async def test_export_jsonl_in_chunks(backend: Backend) -> None:
    ledger = await start_ledger(backend.settings(export_chunk_bytes=1024))
    try:
        base = now_us() - 10 * MIN
        records = [record(f"j{i:04d}", 1, at=base + i, cost=0.001 * i, final=True) for i in range(300)]
        await ledger.stub.RecordUsage(L.RecordUsageRequest(records=records))
        text, chunks = await _export(ledger, L.ExportRecordsRequest(window=L.TimeWindow(last_minutes=60)))
        assert chunks > 10
        lines = [json.loads(line) for line in text.splitlines()]
        assert [line["request_id"] for line in lines] == [f"j{i:04d}" for i in range(300)]
        assert (
            lines[7]["cost_usd"] == 0.007
            and lines[7]["final"] is True
            and lines[7]["category"] == "CATEGORY_CHAT"
        )
        empty, _ = await _export(
            ledger, L.ExportRecordsRequest(window=L.TimeWindow(last_minutes=1), format=L.EXPORT_FORMAT_CSV)
        )
        assert empty.splitlines() == [empty.splitlines()[0]] and empty.startswith(
            "request_id,run_id,attempt,time"
        )
    finally:
        await stop_ledger(ledger)


async def test_bad_export_requests(ledger: Ledger) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(ledger, L.ExportRecordsRequest(format=7))  # type: ignore[arg-type]
    found = details(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and "unknown format" in found.violations["format"]
    since = L.TimeWindow()
    since.since.FromMicroseconds(now_us())
    since.until.FromMicroseconds(now_us() - MIN)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(ledger, L.ExportRecordsRequest(window=since))
    found = details(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and "window.until" in found.violations


# ---- Budgets ------------------------------------------------------------------------------------


def _budget(caller: str, period: int, soft: float, hard: float) -> L.SetBudgetRequest:
    return L.SetBudgetRequest(
        budget=L.Budget(caller=caller, period=period, soft_limit_usd=soft, hard_limit_usd=hard)  # type: ignore[arg-type]
    )


@pytest.fixture
async def admin_ledger(backend: Backend, midday: Clock) -> AsyncIterator[Ledger]:
    # At midday on the 15th: spend a second ago is in this day's and this month's budget periods.
    ledger = await start_ledger(backend.settings(admin_token="s3cret"), midday)
    yield ledger
    await stop_ledger(ledger)


ADMIN = (("x-admin-token", "s3cret"),)


async def test_set_budget_is_an_admin_operation(admin_ledger: Ledger) -> None:
    request = _budget("alice", L.BUDGET_PERIOD_DAILY, 1, 2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin_ledger.stub.SetBudget(request)
    found = details(caught.value)
    assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_TOKEN_MISSING")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin_ledger.stub.SetBudget(request, metadata=(("x-admin-token", "guess"),))
    found = details(caught.value)
    assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_TOKEN_INVALID")
    stored = await admin_ledger.stub.SetBudget(request, metadata=ADMIN)
    assert stored.budget == request.budget
    # Reading needs no token.
    assert len((await admin_ledger.stub.GetBudgets(L.GetBudgetsRequest())).budgets) == 1


async def test_without_a_configured_token_anyone_may_set_budgets(ledger: Ledger) -> None:
    assert isinstance(ledger.settings, LedgerSettings) and ledger.settings.admin_token is None
    await ledger.stub.SetBudget(_budget("", L.BUDGET_PERIOD_MONTHLY, 0, 100))


async def test_check_budget_states(admin_ledger: Ledger) -> None:
    stub = admin_ledger.stub
    await stub.SetBudget(_budget("alice", L.BUDGET_PERIOD_DAILY, 0.10, 0.20), metadata=ADMIN)
    await stub.SetBudget(_budget("", L.BUDGET_PERIOD_MONTHLY, 0, 1.0), metadata=ADMIN)

    async def spend(
        request_id: str, caller: str, cost: float, classifier: float = 0.0, judge: float = 0.0
    ) -> None:
        r = record(
            request_id,
            1,
            at=admin_ledger.clock() - 1_000_000,
            caller=caller,
            cost=cost,
            classifier=classifier,
            judge=judge,
            final=True,
        )
        await stub.RecordUsage(L.RecordUsageRequest(records=[r]))

    check = await stub.CheckBudget(L.CheckBudgetRequest(caller="alice"))
    assert check.state == L.BUDGET_STATE_OK
    assert {(b.budget.caller, b.budget.period) for b in check.budgets} == {
        ("alice", L.BUDGET_PERIOD_DAILY),
        ("", L.BUDGET_PERIOD_MONTHLY),
    }
    await spend("b1", "alice", 0.09, classifier=0.01)  # the classifier's cost is spend too
    check = await stub.CheckBudget(L.CheckBudgetRequest(caller="alice"))
    assert check.state == L.BUDGET_STATE_SOFT_LIMIT
    assert {b.budget.caller: b.spent_usd for b in check.budgets} == {"alice": 0.1, "": 0.1}
    await spend("b2", "alice", 0.05, judge=0.05)  # and so is the LLM judge's
    assert (await stub.CheckBudget(L.CheckBudgetRequest(caller="alice"))).state == L.BUDGET_STATE_HARD_LIMIT
    # Another caller only has the global budget, which is not reached.
    other = await stub.CheckBudget(L.CheckBudgetRequest(caller="nobody-seen-yet"))
    assert other.state == L.BUDGET_STATE_OK
    assert [(b.budget.caller, b.spent_usd, b.state) for b in other.budgets] == [("", 0.2, L.BUDGET_STATE_OK)]
    await spend("b3", "bob", 0.8)
    assert (await stub.CheckBudget(L.CheckBudgetRequest(caller="bob"))).state == L.BUDGET_STATE_HARD_LIMIT
    # Replacing a budget: (caller, period) identifies it.
    await stub.SetBudget(_budget("alice", L.BUDGET_PERIOD_DAILY, 5, 10), metadata=ADMIN)
    listed = await stub.GetBudgets(L.GetBudgetsRequest(caller="alice"))
    mine = [b for b in listed.budgets if b.budget.caller == "alice"]
    assert len(mine) == 1 and mine[0].budget.hard_limit_usd == 10 and mine[0].state == L.BUDGET_STATE_OK
    every = await stub.GetBudgets(L.GetBudgetsRequest())
    assert len(every.budgets) == 2


async def test_spend_outside_the_period_does_not_count(ledger: Ledger) -> None:
    await ledger.stub.SetBudget(_budget("carol", L.BUDGET_PERIOD_DAILY, 0, 1))
    old = record("old", 1, at=now_us() - 3 * 24 * 3600 * 1_000_000, caller="carol", cost=5.0)
    await ledger.stub.RecordUsage(L.RecordUsageRequest(records=[old]))
    check = await ledger.stub.CheckBudget(L.CheckBudgetRequest(caller="carol"))
    assert (check.state, check.budgets[0].spent_usd) == (L.BUDGET_STATE_OK, 0.0)


@pytest.mark.parametrize(
    ("request_", "field", "fragment"),
    [
        (_budget("alice", L.BUDGET_PERIOD_DAILY, -1, 5), "budget.soft_limit_usd", "negative"),
        (_budget("alice", L.BUDGET_PERIOD_DAILY, 1, -5), "budget.hard_limit_usd", "negative"),
        (_budget("alice", L.BUDGET_PERIOD_DAILY, float("inf"), 5), "budget.soft_limit_usd", "finite"),
        (_budget("alice", L.BUDGET_PERIOD_DAILY, 6, 5), "budget.soft_limit_usd", "must not exceed"),
        (_budget("alice", L.BUDGET_PERIOD_DAILY, 0, 0), "budget.hard_limit_usd", "set soft_limit_usd"),
        (_budget("alice", L.BUDGET_PERIOD_UNSPECIFIED, 1, 2), "budget.period", "DAILY"),
        (_budget("alice", 9, 1, 2), "budget.period", "DAILY"),
        (_budget("al\x00ice", L.BUDGET_PERIOD_DAILY, 1, 2), "budget.caller", "NUL"),
        (_budget("al\x07ice", L.BUDGET_PERIOD_DAILY, 1, 2), "budget.caller", "control"),
        (_budget(" alice", L.BUDGET_PERIOD_DAILY, 1, 2), "budget.caller", "whitespace"),
        (_budget("x" * 201, L.BUDGET_PERIOD_DAILY, 1, 2), "budget.caller", "at most 200"),
    ],
)
async def test_bad_budgets(
    admin_ledger: Ledger, request_: L.SetBudgetRequest, field: str, fragment: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin_ledger.stub.SetBudget(request_, metadata=ADMIN)
    found = details(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in found.violations[field], found.violations


async def test_bad_budget_reads(ledger: Ledger) -> None:
    for call in (
        ledger.stub.CheckBudget(L.CheckBudgetRequest(caller="tab\there")),
        ledger.stub.GetBudgets(L.GetBudgetsRequest(caller="y" * 500)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        found = details(caught.value)
        assert found.code == grpc.StatusCode.INVALID_ARGUMENT and "caller" in found.violations


# ---- Feedback -----------------------------------------------------------------------------------


async def test_feedback_is_stored_against_the_callers_latest_answered_run(ledger: Ledger) -> None:
    at = now_us() - 60_000_000
    runs = [
        record("r1", 1, at=at, caller="alice", run_id="run-a", final=True),
        record("r1", 1, at=at + 1000, caller="alice", run_id="run-b", final=True),
        record("r1", 1, at=at, caller="bob", run_id="run-c", final=True),
    ]
    await ledger.stub.RecordUsage(L.RecordUsageRequest(records=runs))
    reply = await ledger.stub.RecordFeedback(
        L.RecordFeedbackRequest(
            request_id="r1",
            caller="alice",
            verdict=L.FEEDBACK_VERDICT_BAD,
            needed_tier=C.TIER_COMPLEX,
            note="missed the edge case",
        )
    )
    assert reply.stored and reply.run_id == "run-b"  # the latest answered run of alice's r1
    await ledger.stub.RecordFeedback(
        L.RecordFeedbackRequest(request_id="r1", run_id="run-a", verdict=L.FEEDBACK_VERDICT_GOOD),
        metadata=(("x-caller", "alice"),),
    )
    stored = await ledger.store.feedback_for("r1")
    assert [(f["caller"], f["run_id"], f["verdict"], f["needed_tier"], f["note"]) for f in stored] == [
        ("alice", "run-b", L.FEEDBACK_VERDICT_BAD, C.TIER_COMPLEX, "missed the edge case"),
        ("alice", "run-a", L.FEEDBACK_VERDICT_GOOD, C.TIER_UNSPECIFIED, ""),
    ]
    # A run that is not the caller's, or not there at all, is NOT_FOUND, and nothing is stored.
    for caller, run_id in (("carol", ""), ("bob", "run-a"), ("alice", "run-z")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await ledger.stub.RecordFeedback(
                L.RecordFeedbackRequest(
                    request_id="r1", caller=caller, run_id=run_id, verdict=L.FEEDBACK_VERDICT_GOOD
                )
            )
        found = details(raised.value)
        assert found.code == grpc.StatusCode.NOT_FOUND and found.reason == "REQUEST_NOT_FOUND"
    assert len(await ledger.store.feedback_for("r1")) == 2


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (L.RecordFeedbackRequest(verdict=L.FEEDBACK_VERDICT_GOOD, caller="a"), "request_id"),
        (L.RecordFeedbackRequest(request_id="r", verdict=L.FEEDBACK_VERDICT_GOOD), "caller"),
        (L.RecordFeedbackRequest(request_id="r"), "verdict"),
        (L.RecordFeedbackRequest(request_id="r", verdict=L.FeedbackVerdict.ValueType(12)), "verdict"),
        (
            L.RecordFeedbackRequest(
                request_id="r", verdict=L.FEEDBACK_VERDICT_BAD, needed_tier=C.Tier.ValueType(17)
            ),
            "needed_tier",
        ),
        (L.RecordFeedbackRequest(request_id="r", verdict=L.FEEDBACK_VERDICT_BAD, note="n" * 10_001), "note"),
    ],
)
async def test_bad_feedback(ledger: Ledger, request_: L.RecordFeedbackRequest, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.stub.RecordFeedback(request_)
    found = details(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and field in found.violations


async def test_csv_export_never_hands_a_spreadsheet_a_formula(ledger: Ledger) -> None:
    hostile = record('=HYPERLINK("http://x")', 1, at=now_us() - 1000, caller="@sum", error="+1-2", final=True)
    await ledger.stub.RecordUsage(L.RecordUsageRequest(records=[hostile]))
    chunks = [
        c.chunk async for c in ledger.stub.ExportRecords(L.ExportRecordsRequest(format=L.EXPORT_FORMAT_CSV))
    ]
    [row] = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert (
        row["request_id"] == '\'=HYPERLINK("http://x")'
        and row["caller"] == "'@sum"
        and row["error"] == "'+1-2"
    )
    assert row["model"] == "small-model"  # ordinary text is untouched


async def test_stalled_exports_cannot_starve_the_budget_check(ledger: Ledger) -> None:
    """Exports whose clients stop reading hold read connections: CheckBudget has a pool of its own."""
    at = now_us() - 60_000_000
    for start in range(0, 12_000, 1000):
        await ledger.stub.RecordUsage(
            L.RecordUsageRequest(
                records=[
                    record(f"bulk-{i}", 1, at=at, final=True, error="e" * 300)
                    for i in range(start, start + 1000)
                ]
            )
        )
    stalled = []
    for _ in range(ledger.settings.database_pool_size):  # as many streams as read connections
        stream = ledger.stub.ExportRecords(L.ExportRecordsRequest())
        await stream.read()  # the first chunk, then the client stops reading
        stalled.append(stream)
    try:
        reply = await ledger.stub.CheckBudget(L.CheckBudgetRequest(caller="alice"), timeout=3)
        assert reply.state == L.BUDGET_STATE_OK
    finally:
        for stream in stalled:
            stream.cancel()


async def test_a_long_export_comes_in_pages_that_join_into_the_whole(
    ledger_settings: LedgerSettings, tmp_path: Path
) -> None:
    """Over LEDGER_EXPORT_MAX_RECORDS, a call stops with a next_page_token; the pages, joined, are the
    export in one piece (same records, one CSV header), and a token that is not the ledger's is refused."""
    from tests.ledger.conftest import start_ledger, stop_ledger

    whole = await start_ledger(ledger_settings.model_copy(update={"export_max_records": 1_000_000}))
    try:
        at = now_us() - 60 * MIN
        await whole.stub.RecordUsage(
            L.RecordUsageRequest(records=[record(f"p{i}", 1, at=at + i, cost=0.001) for i in range(25)])
        )
        csv = L.EXPORT_FORMAT_CSV
        one = b"".join([c.chunk async for c in whole.stub.ExportRecords(L.ExportRecordsRequest(format=csv))])
    finally:
        await stop_ledger(whole)
    paged = await start_ledger(ledger_settings.model_copy(update={"export_max_records": 10}))
    try:
        pages, token = [], ""
        while True:
            messages = [
                m
                async for m in paged.stub.ExportRecords(L.ExportRecordsRequest(format=csv, page_token=token))
            ]
            pages.append(b"".join(m.chunk for m in messages))
            token = messages[-1].next_page_token if messages else ""
            if not token:
                break
        assert len(pages) == 3  # 10 + 10 + 5
        assert b"".join(pages) == one and one.count(b"request_id") == 1
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in paged.stub.ExportRecords(L.ExportRecordsRequest(page_token="bm90LWEtdG9rZW4")):
                pass
        found = details(raised.value)
        assert found.code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in found.violations
    finally:
        await stop_ledger(paged)
