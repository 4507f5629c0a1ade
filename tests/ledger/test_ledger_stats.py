"""GetStats: figures checked exactly against hand-computed fixtures, windows, groupings, rollups."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from ledger_svc import stats as stats_queries
from ledger_svc.schema import usage_hourly
from ledger_svc.stats import Plan, plan
from llmroute.common.v1 import common_pb2 as C
from llmroute.ledger.v1 import ledger_pb2 as L
from tests.ledger.conftest import Ledger
from tests.ledger.ledger_helpers import (
    HOUR_US,
    Expected,
    now_us,
    record,
    reference,
    reference_percentile,
    ts,
    us,
)
from tests.rich_status import details

H0 = us(datetime(2025, 6, 2, 10, 0))
MIN = 60_000_000


def fixture_records() -> list[L.UsageRecord]:
    """Four requests over two hours; see test_totals_by_hand for the figures."""
    return [
        # r1: alice, answered by the first model.
        record("r1", 1, at=H0 + 10 * MIN, cost=0.001, baseline=0.010, classifier=0.0002,
               input_tokens=100, output_tokens=50, final=True, total_ms=100),
        # r2: alice, rejected output on the simple tier, escalated to a complex model that answered.
        record("r2", 1, at=H0 + 20 * MIN, category=C.CATEGORY_CODE, outcome=C.ATTEMPT_OUTCOME_ESCALATED,
               cost=0.002, classifier=0.0002, input_tokens=200, output_tokens=100),
        record("r2", 2, at=H0 + 20 * MIN, category=C.CATEGORY_CODE, model="big-model", tier=C.TIER_COMPLEX,
               cost=0.02, baseline=0.03, input_tokens=200, output_tokens=300, final=True, total_ms=2000),
        # r3: bob, cached classification, provider error, fallback to another model.
        record("r3", 1, at=H0 + 70 * MIN, caller="bob", outcome=C.ATTEMPT_OUTCOME_PROVIDER_ERROR, cache_hit=True),
        record("r3", 2, at=H0 + 70 * MIN, caller="bob", model="mid-model", cost=0.003, baseline=0.012,
               input_tokens=100, output_tokens=100, final=True, total_ms=400, cache_hit=True),
        # r4: bob, cached, a model without a price.
        record("r4", 1, at=H0 + 80 * MIN, caller="bob", model="free-model", baseline=0.005, input_tokens=10,
               output_tokens=10, final=True, total_ms=50, cache_hit=True, price_known=False),
    ]  # fmt: skip


def window(since: int | None = None, until: int | None = None) -> L.TimeWindow:
    w = L.TimeWindow()
    if since is not None:
        w.since.CopyFrom(ts(since))
    if until is not None:
        w.until.CopyFrom(ts(until))
    return w


async def ingest(ledger: Ledger, records: list[L.UsageRecord]) -> L.RecordUsageResponse:
    return await ledger.stub.RecordUsage(L.RecordUsageRequest(records=records))


def groups(response: L.GetStatsResponse, dim: int) -> list[tuple[str, L.Totals]]:
    (breakdown,) = [b for b in response.breakdowns if b.group_by == dim]
    return [(g.key, g.totals) for g in breakdown.groups]


async def test_totals_by_hand(ledger: Ledger) -> None:
    await ingest(ledger, fixture_records())
    stats = await ledger.stub.GetStats(L.GetStatsRequest(window=window(H0, H0 + 2 * HOUR_US)))
    t = stats.totals
    assert (t.requests, t.attempts) == (4, 6)
    assert (t.input_tokens, t.output_tokens) == (610, 560)
    assert t.cost_usd == 0.026  # 0.001 + 0.002 + 0.02 + 0 + 0.003 + 0 (failed attempts are spend too)
    assert t.baseline_cost_usd == 0.057  # set on the answering attempts only
    assert t.gross_savings_usd == 0.031
    assert t.classifier_cost_usd == 0.0004  # r1 and r2; r3 and r4 came from the cache
    assert t.net_savings_usd == 0.0306
    assert t.failed_attempt_cost_usd == 0.002  # r2's rejected first attempt
    assert t.escalation_rate == 0.25
    assert t.fallback_rate == 0.5
    assert t.cache_hit_rate == 0.5
    assert t.unpriced_attempts == 1
    # Final-attempt latencies 50, 100, 400, 2000: nearest rank, reported as the histogram bucket.
    assert t.latency_p50_ms == reference_percentile([50, 100, 400, 2000], 0.5)
    assert abs(t.latency_p50_ms - 100) / 100 <= 0.048  # the documented bound
    assert abs(t.latency_p95_ms - 2000) / 2000 <= 0.048
    assert (
        stats.window.since.ToMicroseconds() == H0 and stats.window.until.ToMicroseconds() == H0 + 2 * HOUR_US
    )


async def test_default_breakdowns_and_their_order(ledger: Ledger) -> None:
    await ingest(ledger, fixture_records())
    stats = await ledger.stub.GetStats(L.GetStatsRequest(window=window(H0, H0 + 2 * HOUR_US)))
    assert [b.group_by for b in stats.breakdowns] == [L.GROUP_BY_MODEL, L.GROUP_BY_TIER, L.GROUP_BY_CALLER]
    by_model = groups(stats, L.GROUP_BY_MODEL)
    # By descending cost; mid-model and small-model tie at 0.003 and are ordered by name.
    assert [k for k, _ in by_model] == ["big-model", "mid-model", "small-model", "free-model"]
    m = dict(by_model)
    assert (m["small-model"].attempts, m["small-model"].requests, m["small-model"].cost_usd) == (3, 3, 0.003)
    # Requests belong to their first attempt's model; attempts and spend to their own.
    assert (m["big-model"].attempts, m["big-model"].requests, m["big-model"].cost_usd) == (1, 0, 0.02)
    assert m["small-model"].escalation_rate == 1 / 3 and m["small-model"].fallback_rate == 2 / 3
    assert m["free-model"].unpriced_attempts == 1
    tiers = dict(groups(stats, L.GROUP_BY_TIER))
    assert set(tiers) == {"TIER_SIMPLE", "TIER_COMPLEX"}
    assert (tiers["TIER_SIMPLE"].attempts, tiers["TIER_SIMPLE"].requests) == (5, 4)
    callers = dict(groups(stats, L.GROUP_BY_CALLER))
    assert (callers["alice"].requests, callers["alice"].attempts, callers["alice"].cost_usd) == (2, 3, 0.023)
    assert (callers["bob"].requests, callers["bob"].attempts, callers["bob"].cost_usd) == (2, 3, 0.003)
    assert callers["bob"].cache_hit_rate == 1.0 and callers["alice"].cache_hit_rate == 0.0


async def test_hour_and_category_breakdowns_and_caller_filter(ledger: Ledger) -> None:
    records = fixture_records()
    await ingest(ledger, records)
    stats = await ledger.stub.GetStats(
        L.GetStatsRequest(
            window=window(H0, H0 + 2 * HOUR_US), group_by=[L.GROUP_BY_HOUR, L.GROUP_BY_CATEGORY], caller="bob"
        )
    )
    reference(records, H0, H0 + 2 * HOUR_US, caller="bob")[""].check(stats.totals)
    hours = dict(groups(stats, L.GROUP_BY_HOUR))
    assert list(hours) == ["2025-06-02T11:00:00Z"]
    for dim in (L.GROUP_BY_HOUR, L.GROUP_BY_CATEGORY):
        expected = reference(records, H0, H0 + 2 * HOUR_US, dim, caller="bob")
        got = dict(groups(stats, dim))
        assert set(got) == set(expected)
        for key, totals in got.items():
            expected[key].check(totals)
    everyone = await ledger.stub.GetStats(
        L.GetStatsRequest(
            window=window(H0, H0 + 2 * HOUR_US), group_by=[L.GROUP_BY_HOUR, L.GROUP_BY_CATEGORY]
        )
    )
    # By descending cost: alice's hour (0.023) before bob's (0.003).
    assert list(dict(groups(everyone, L.GROUP_BY_HOUR))) == ["2025-06-02T10:00:00Z", "2025-06-02T11:00:00Z"]
    assert set(dict(groups(everyone, L.GROUP_BY_CATEGORY))) == {"CATEGORY_CHAT", "CATEGORY_CODE"}


async def test_partial_hours_come_from_raw_records(ledger: Ledger) -> None:
    records = fixture_records()
    await ingest(ledger, records)
    # [10:15, 11:15): r2 (10:20) from the head, r3 (11:10) from the tail; r1 and r4 are outside.
    since, until = H0 + 15 * MIN, H0 + 75 * MIN
    stats = await ledger.stub.GetStats(
        L.GetStatsRequest(window=window(since, until), group_by=[L.GROUP_BY_MODEL, L.GROUP_BY_HOUR])
    )
    expected = reference(records, since, until)[""]
    assert expected.requests == 2
    expected.check(stats.totals)
    for dim in (L.GROUP_BY_MODEL, L.GROUP_BY_HOUR):
        want = reference(records, since, until, dim)
        got = dict(groups(stats, dim))
        assert set(got) == set(want)
        for key, totals in got.items():
            want[key].check(totals)


async def test_windows_last_minutes_and_all_time(ledger: Ledger) -> None:
    recent = record("recent", 1, at=now_us() - 5 * MIN, cost=0.5, final=True, total_ms=10)
    await ingest(ledger, [*fixture_records(), recent])
    last_hour = await ledger.stub.GetStats(L.GetStatsRequest(window=L.TimeWindow(last_minutes=60)))
    assert (last_hour.totals.requests, last_hour.totals.cost_usd) == (1, 0.5)
    resolved = last_hour.window.until.ToMicroseconds() - last_hour.window.since.ToMicroseconds()
    assert resolved == 60 * MIN
    all_time = await ledger.stub.GetStats(L.GetStatsRequest())
    assert (all_time.totals.requests, all_time.totals.cost_usd) == (5, 0.526)
    empty = await ledger.stub.GetStats(L.GetStatsRequest(window=window(H0 - HOUR_US, H0)))
    assert empty.totals == L.Totals()
    assert all(not b.groups for b in empty.breakdowns)


async def test_out_of_order_and_split_deliveries_match_the_reference(ledger: Ledger) -> None:
    records = fixture_records()
    # Attempt 2 before attempt 1, each in its own batch, with re-deliveries in between.
    for batch in (
        [records[2]],
        [records[5], records[4]],
        [records[1], records[2]],
        [records[0], records[3]],
        records,
    ):
        await ingest(ledger, batch)
    stats = await ledger.stub.GetStats(L.GetStatsRequest(window=window(H0, H0 + 2 * HOUR_US)))
    reference(records, H0, H0 + 2 * HOUR_US)[""].check(stats.totals)


def random_records(seed: int, n_requests: int, start: int, hours: int) -> list[L.UsageRecord]:
    rnd = random.Random(seed)
    models = {C.TIER_SIMPLE: ["s1", "s2"], C.TIER_MODERATE: ["m1"], C.TIER_COMPLEX: ["c1", "c2"]}
    out = []
    for i in range(n_requests):
        at = start + rnd.randrange(hours * HOUR_US)
        caller = rnd.choice(["alice", "bob", "carol"])
        category = rnd.choice([C.CATEGORY_CHAT, C.CATEGORY_CODE, C.CATEGORY_MATH])
        tier = rnd.choice(list(models))
        cache_hit = rnd.random() < 0.3
        attempts = rnd.choice([1, 1, 1, 2, 3])
        for a in range(1, attempts + 1):
            last = a == attempts
            outcome = (
                C.ATTEMPT_OUTCOME_OK
                if last
                else rnd.choice(
                    [C.ATTEMPT_OUTCOME_PROVIDER_ERROR, C.ATTEMPT_OUTCOME_ESCALATED, C.ATTEMPT_OUTCOME_TIMEOUT]
                )
            )
            answered = last and rnd.random() < 0.95
            out.append(
                record(
                    f"q{seed}-{i}", a, at=at + a * 1000, caller=caller, category=category, tier=tier,
                    model=rnd.choice(models[tier]), outcome=outcome, cost=rnd.randrange(0, 5000) / 1e7,
                    baseline=rnd.randrange(1000, 90000) / 1e7 if answered else 0.0,
                    classifier=rnd.randrange(0, 300) / 1e8 if a == 1 and not cache_hit else 0.0,
                    judge=rnd.randrange(0, 200) / 1e8 if rnd.random() < 0.3 else 0.0,
                    input_tokens=rnd.randrange(1, 3000), output_tokens=rnd.randrange(0, 2000), final=answered,
                    total_ms=rnd.uniform(20, 20000) if answered else 0.0, cache_hit=cache_hit,
                    price_known=rnd.random() > 0.05,
                )
            )  # fmt: skip
            if tier != C.TIER_COMPLEX and outcome == C.ATTEMPT_OUTCOME_ESCALATED:
                tier = C.Tier.ValueType(tier + 1)
    return out


async def test_random_windows_match_the_reference(ledger: Ledger) -> None:
    records = random_records(7, 300, H0, 6)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    for i in range(0, len(shuffled), 97):
        await ingest(ledger, shuffled[i : i + 97] + shuffled[max(0, i - 5) : i])  # with re-deliveries
    rnd = random.Random(3)
    cases = [(H0, H0 + 6 * HOUR_US), (H0 + 1, H0 + 6 * HOUR_US - 1), (H0 + 7 * MIN, H0 + 49 * MIN)]
    for _ in range(12):
        a, b = sorted(rnd.randrange(H0 - HOUR_US, H0 + 7 * HOUR_US) for _ in range(2))
        cases.append((a, b))
    for since, until in cases:
        caller = rnd.choice([None, "alice"])
        dims = rnd.sample(
            [L.GROUP_BY_MODEL, L.GROUP_BY_TIER, L.GROUP_BY_CALLER, L.GROUP_BY_CATEGORY, L.GROUP_BY_HOUR], 2
        )
        stats = await ledger.stub.GetStats(
            L.GetStatsRequest(window=window(since, until), group_by=dims, caller=caller or "")
        )
        reference(records, since, until, caller=caller).get("", Expected()).check(stats.totals)
        for dim in dims:
            want = reference(records, since, until, dim, caller=caller)
            got = dict(groups(stats, dim))
            assert set(got) == set(want), (since, until, dim)
            for key, totals in got.items():
                want[key].check(totals)


async def test_incremental_rollups_equal_a_rebuild_from_raw(ledger: Ledger) -> None:
    records = random_records(11, 200, H0, 4)
    random.Random(2).shuffle(records)
    for i in range(0, len(records), 50):
        await ingest(ledger, records[i : i + 50])

    async def snapshot() -> set[tuple[object, ...]]:
        async with ledger.store.engines.read.connect() as conn:
            return {tuple(r) for r in await conn.execute(sa.select(usage_hourly))}

    incremental = await snapshot()
    await ledger.store.rebuild_rollups()
    assert incremental == await snapshot()


@pytest.mark.parametrize(
    ("request_", "field", "fragment"),
    [
        (L.GetStatsRequest(window=window(H0 + 10, H0)), "window.until", "before window.since"),
        (L.GetStatsRequest(window=L.TimeWindow(last_minutes=-5)), "window.last_minutes", "negative"),
        (L.GetStatsRequest(window=L.TimeWindow(last_minutes=10**9)), "window.last_minutes", "at most"),
        (
            L.GetStatsRequest(window=L.TimeWindow(since=ts(H0), last_minutes=5)),
            "window.last_minutes",
            "not both",
        ),
        (
            L.GetStatsRequest(group_by=[L.GROUP_BY_MODEL, L.GroupBy.ValueType(99)]),
            "group_by[1]",
            "unknown dimension 99",
        ),
        (L.GetStatsRequest(group_by=[L.GROUP_BY_UNSPECIFIED]), "group_by[0]", "unknown dimension 0"),
        (L.GetStatsRequest(group_by=[L.GROUP_BY_TIER, L.GROUP_BY_TIER]), "group_by[1]", "twice"),
        (L.GetStatsRequest(caller="bad\ncaller"), "caller", "control characters"),
    ],
)
async def test_bad_stats_requests(
    ledger: Ledger, request_: L.GetStatsRequest, field: str, fragment: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.stub.GetStats(request_)
    found = details(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert found.reason == "INVALID_ARGUMENT"
    assert fragment in found.violations[field]


def test_plan_reads_the_shorter_side_of_partial_hours() -> None:
    base = 100 * HOUR_US
    # 50-minute edges: the hours' rollups minus 10 minutes of raw rows each.
    p = plan(base + 10 * MIN, base + 2 * HOUR_US + 50 * MIN, 0)
    assert p.full_hours == (100, 103) and p.add == ()
    assert p.subtract == ((base, base + 10 * MIN), (base + 2 * HOUR_US + 50 * MIN, base + 3 * HOUR_US))
    # 10-minute edges: read raw.
    p = plan(base + 50 * MIN, base + 2 * HOUR_US + 10 * MIN, 0)
    assert p.full_hours == (101, 102) and p.subtract == ()
    assert p.add == ((base + 50 * MIN, base + HOUR_US), (base + 2 * HOUR_US, base + 2 * HOUR_US + 10 * MIN))
    # Inside one hour.
    assert plan(base + 5 * MIN, base + 15 * MIN, 0).add == ((base + 5 * MIN, base + 15 * MIN),)
    p = plan(base + 5 * MIN, base + 55 * MIN, 0)
    assert p.full_hours == (100, 101) and p.subtract == (
        (base, base + 5 * MIN),
        (base + 55 * MIN, base + HOUR_US),
    )
    # Aligned: rollups only.
    assert plan(base, base + 24 * HOUR_US, 0) == Plan(base, base + 24 * HOUR_US, (100, 124))
    # A pruned head hour is rounded down to the hour; the tail still uses raw rows.
    p = plan(base + 10 * MIN, base + 2 * HOUR_US + 50 * MIN, base + HOUR_US)
    assert (p.since_us, p.full_hours, p.add) == (base, (100, 103), ())
    assert p.subtract == ((base + 2 * HOUR_US + 50 * MIN, base + 3 * HOUR_US),)
    assert plan(base + 5 * MIN, base + 15 * MIN, base + HOUR_US) == Plan(base, base, None)


def test_plan_counts_time_after_now_as_holding_no_rows() -> None:
    base = 100 * HOUR_US
    now = base + 2 * HOUR_US + 10 * MIN
    # A window ending now, 10 minutes into its hour: the hour's rollup minus what follows now
    # (nothing, or rows from a clock ahead), not 10 minutes of raw rows; the head is unchanged.
    p = plan(base + 50 * MIN, now, 0, horizon_us=now)
    assert p.full_hours == (101, 103)
    assert p.add == ((base + 50 * MIN, base + HOUR_US),) and p.subtract == ((now, base + 3 * HOUR_US),)
    # Inside one hour: 5 minutes before the window is less to read than the 10 minutes inside it.
    p = plan(base + 5 * MIN, base + 15 * MIN, 0, horizon_us=base + 15 * MIN)
    assert p.full_hours == (100, 101)
    assert p.subtract == ((base, base + 5 * MIN), (base + 15 * MIN, base + HOUR_US))
    # A window in the past is planned as without a horizon.
    assert plan(base + 50 * MIN, base + 70 * MIN, 0, horizon_us=now) == plan(
        base + 50 * MIN, base + 70 * MIN, 0
    )


async def test_a_window_ending_now_early_in_the_hour_is_exact_without_reading_the_hour_raw(
    midday_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The current hour's figures come from its rollup minus the rows after now, which are only
    rows from a clock ahead of the ledger's: they are subtracted, and the answer stays exact."""
    ledger = midday_ledger
    ledger.clock.advance(10 * 60)  # 12:10
    now = ledger.clock()
    records = [
        record("before", 1, at=now - 50 * MIN, cost=0.1, final=True, total_ms=10),  # 11:20, outside
        record("head", 1, at=now - 20 * MIN, cost=0.01, final=True, total_ms=10),  # 11:50
        record("early", 1, at=now - 5 * MIN, cost=0.001, final=True, total_ms=20),  # 12:05
        record("late", 1, at=now - 1 * MIN, cost=0.0001, final=True, total_ms=30),  # 12:09
        record("ahead", 1, at=now + 2 * MIN, cost=1.0, final=True, total_ms=40),  # a clock ahead
    ]
    await ingest(ledger, records)
    reads: list[tuple[tuple[tuple[int, int], ...], int]] = []
    raw = stats_queries._raw

    async def spy(conn: Any, ranges: Any, sign: int, *rest: Any) -> None:
        reads.append((tuple(ranges), sign))
        await raw(conn, ranges, sign, *rest)

    monkeypatch.setattr(stats_queries, "_raw", spy)
    stats = await ledger.stub.GetStats(L.GetStatsRequest(window=L.TimeWindow(last_minutes=30)))
    since, until = stats.window.since.ToMicroseconds(), stats.window.until.ToMicroseconds()
    assert stats.totals.requests == 3
    reference(records, since, until)[""].check(stats.totals)
    noon = until // HOUR_US * HOUR_US
    added = [r for ranges, sign in reads if sign == 1 for r in ranges]
    subtracted = [r for ranges, sign in reads if sign == -1 for r in ranges]
    # For the totals and each breakdown: the head's 10 minutes, not the current hour's first 10.
    assert set(added) == {(since, noon)}
    assert set(subtracted) == {(until, noon + HOUR_US)}


async def test_simulated_attempts_are_their_own_line_from_rollups_and_raw_records(ledger: Ledger) -> None:
    """A record the simulator answered is flagged, and GetStats says how many and at what real price,
    over whole hours (rollups) and partial ones (raw records) alike."""
    await ingest(
        ledger,
        [
            record("s1", 1, at=H0 + 5 * MIN, cost=0.004, simulated=True),
            record("s2", 1, at=H0 + 70 * MIN, cost=0.001, simulated=True),
            record("p1", 1, at=H0 + 80 * MIN, cost=0.010),
        ],
    )
    whole = await ledger.stub.GetStats(L.GetStatsRequest(window=window(H0, H0 + 2 * HOUR_US)))
    assert whole.totals.simulated_attempts == 2 and whole.totals.attempts == 3
    assert whole.totals.simulated_cost_usd == pytest.approx(0.005)
    partial = await ledger.stub.GetStats(L.GetStatsRequest(window=window(H0 + 30 * MIN, H0 + 75 * MIN)))
    assert partial.totals.simulated_attempts == 1
    assert partial.totals.simulated_cost_usd == pytest.approx(0.001)
