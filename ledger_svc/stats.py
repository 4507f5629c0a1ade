"""GetStats in the database: full hours from the hourly rollups, partial hours from the raw tables.

A window [since, until) is cut at hour boundaries. Whole hours are read from `usage_hourly` (one
row per hour and dimension value, whatever the traffic); the partial hours at either
end come from `usage_records` (per-attempt figures) and `requests` (per-request figures), whose rows
are small ranges on indexed times. Both are summed in one UNION ALL query per breakdown.

Raw rows of pruned hours are gone: a window edge that falls in a pruned hour is moved to that hour's
start, and the response's resolved window says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger_svc.records import enum_name, iso_hour, to_usd
from ledger_svc.schema import (
    DIM_CATEGORY,
    DIM_MODEL,
    DIM_POLICY,
    DIM_TIER,
    DIM_TOTAL,
    HOUR_US,
    LATENCY_COLUMNS,
    ROLLUP_COUNTERS,
    attempt_sums,
    bucket_value,
    requests,
    usage_hourly,
    usage_records,
)
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2

TOTAL = 0  # not a GroupBy: the window's totals
HOUR = ledger_pb2.GROUP_BY_HOUR
CALLER = ledger_pb2.GROUP_BY_CALLER


@dataclass(frozen=True)
class Plan:
    """Where each part of a window is read from.

    Whole hours come from the rollups. A partial hour at either end is read from the raw tables,
    or, when the rest of that hour holds fewer rows, as the hour's rollup minus the raw rest. Rows
    are timed up to now (later only from a clock ahead of the ledger's), so a window ending now
    reads its last hour as the rollup minus next to nothing, and no edge scans more than half an
    hour of raw rows.
    """

    since_us: int
    until_us: int
    full_hours: tuple[int, int] | None  # [first, end) hour numbers read from the rollups
    add: tuple[tuple[int, int], ...] = ()  # µs ranges of raw rows to add
    subtract: tuple[tuple[int, int], ...] = ()  # µs ranges of raw rows to subtract

    @property
    def raw(self) -> tuple[tuple[int, int], ...]:
        return self.add + self.subtract


def plan(since_us: int, until_us: int, pruned_before_us: int, horizon_us: float = math.inf) -> Plan:
    """Cut [since, until) at hour boundaries. Raw rows of pruned hours are gone: an edge in a pruned
    hour is rounded down to the hour, so that a record counts when its hour starts in the window.
    `horizon_us`: now; time past it holds next to no rows, so a range there counts as costing
    nothing to read (it is still read: rows from a clock ahead of the ledger's are subtracted too)."""
    h = HOUR_US

    def span(a: int, b: int) -> float:  # how much of [a, b) holds rows, in time
        return max(0.0, min(b, horizon_us) - a)

    first_full = -(-since_us // h)  # ceil
    end_full = until_us // h
    add: list[tuple[int, int]] = []
    subtract: list[tuple[int, int]] = []
    if first_full > end_full:  # inside one hour
        hour = since_us // h
        if since_us == until_us:
            return Plan(since_us, until_us, None)
        if hour * h < pruned_before_us:
            return Plan(hour * h, hour * h, None)
        if span(since_us, until_us) <= span(hour * h, since_us) + span(until_us, (hour + 1) * h):
            return Plan(since_us, until_us, None, add=((since_us, until_us),))
        for a, b in ((hour * h, since_us), (until_us, (hour + 1) * h)):
            if a < b:
                subtract.append((a, b))
        return Plan(since_us, until_us, (hour, hour + 1), subtract=tuple(subtract))
    first, end = first_full, end_full
    if since_us < first_full * h:  # the head, inside hour first_full - 1
        hour = first_full - 1
        if hour * h < pruned_before_us:
            since_us, first = hour * h, hour
        elif span(since_us, first_full * h) <= span(hour * h, since_us):
            add.append((since_us, first_full * h))
        else:
            first = hour
            subtract.append((hour * h, since_us))
    if end_full * h < until_us:  # the tail, inside hour end_full
        hour = end_full
        if hour * h < pruned_before_us:
            until_us = hour * h
        elif span(hour * h, until_us) <= span(until_us, (hour + 1) * h):
            add.append((hour * h, until_us))
        else:
            end = hour + 1
            subtract.append((until_us, (hour + 1) * h))
    return Plan(since_us, until_us, (first, end) if first < end else None, tuple(add), tuple(subtract))


@dataclass
class Aggregate:
    """Additive counters (schema.ROLLUP_COUNTERS) and a latency histogram {bucket: requests}."""

    counters: list[int] = field(default_factory=lambda: [0] * len(ROLLUP_COUNTERS))
    latency: dict[int, int] = field(default_factory=dict)

    def get(self, name: str) -> int:
        return self.counters[ROLLUP_COUNTERS.index(name)]


def grouped(query: Any, *exprs: Any) -> Any:
    """GROUP BY the non-constant expressions (PostgreSQL refuses GROUP BY '')."""
    keep = [e for e in exprs if not getattr(e, "is_literal", False)]
    return query.group_by(*keep) if keep else query


def _key_exprs(dim: int) -> tuple[int, Any, Any, Any]:
    """(rollup dim, rollup key, usage_records key, requests key) for a GroupBy (or TOTAL)."""
    h, r, q = usage_hourly.c, usage_records.c, requests.c
    empty: Any = sa.literal_column("''")
    if dim == TOTAL:
        return DIM_TOTAL, h.key, empty, empty
    if dim == HOUR:
        return DIM_TOTAL, h.hour, r.ts // HOUR_US, q.home_ts // HOUR_US
    if dim == CALLER:
        return DIM_TOTAL, h.caller, r.caller, q.caller
    if dim == ledger_pb2.GROUP_BY_MODEL:
        return DIM_MODEL, h.key, r.model, q.model
    if dim == ledger_pb2.GROUP_BY_TIER:
        return DIM_TIER, h.key, sa.cast(r.tier, sa.String), sa.cast(q.tier, sa.String)
    if dim == ledger_pb2.GROUP_BY_CATEGORY:
        return DIM_CATEGORY, h.key, sa.cast(r.category, sa.String), sa.cast(q.category, sa.String)
    if dim == ledger_pb2.GROUP_BY_POLICY_VERSION:
        return DIM_POLICY, h.key, r.policy_version, sa.func.coalesce(q.policy_version, "")
    raise ValueError(f"unknown dimension {dim}")


def _rollup_filter(
    table: sa.Table, rollup_dim: int, per_caller: bool, caller: str | None, hours: tuple[int, int]
) -> Any:
    c = table.c
    conditions = [c.dim == rollup_dim, c.per_caller == int(per_caller), c.hour >= hours[0], c.hour < hours[1]]
    if per_caller and caller is not None:
        conditions.append(c.caller == caller)
    elif not per_caller:
        conditions.append(c.caller == "")
    return sa.and_(*conditions)


async def aggregate(conn: AsyncConnection, dim: int, p: Plan, caller: str | None) -> dict[Any, Aggregate]:
    """Counters and latency histograms per key of `dim` over the planned window."""
    rollup_dim, rollup_key, raw_key, req_key = _key_exprs(dim)
    per_caller = caller is not None or dim == CALLER
    result: dict[Any, Aggregate] = {}

    def add(key: Any, counters: Sequence[Any], latency: Iterable[tuple[int, Any]] = ()) -> None:
        agg = result.setdefault(key, Aggregate())
        agg.counters = [a + int(b or 0) for a, b in zip(agg.counters, counters, strict=True)]
        for bucket, n in latency:
            if n:
                count = agg.latency.get(bucket, 0) + int(n)
                if count:
                    agg.latency[bucket] = count
                else:
                    del agg.latency[bucket]

    if p.full_hours:
        h = usage_hourly.c
        query = sa.select(
            rollup_key,
            *(sa.func.sum(h[name]) for name in ROLLUP_COUNTERS),
            *(sa.func.sum(h[name]) for name in LATENCY_COLUMNS),
        ).where(_rollup_filter(usage_hourly, rollup_dim, per_caller, caller, p.full_hours))
        width = len(ROLLUP_COUNTERS)
        for row in await conn.execute(grouped(query, rollup_key)):
            if row[1] is not None:  # an aggregate over no rows
                add(row[0], row[1 : 1 + width], enumerate(row[1 + width :]))
    for ranges, sign in ((p.add, 1), (p.subtract, -1)):
        if ranges:
            await _raw(conn, ranges, sign, caller, raw_key, req_key, add)
    return result


async def _raw(
    conn: AsyncConnection,
    ranges: Sequence[tuple[int, int]],
    sign: int,
    caller: str | None,
    raw_key: Any,
    req_key: Any,
    add: Callable[..., None],
) -> None:
    """Counters and latency from raw rows in `ranges`, added (sign 1) or subtracted (sign -1).

    One SELECT per range: a single range is an index range scan on both databases, where an OR of
    ranges may not be.
    """
    r, q = usage_records.c, requests.c
    zero: Any = sa.literal_column("0")
    attempt_aggregates = attempt_sums(r)
    request_sums = [
        sa.func.count(),
        sa.func.sum(sa.case((q.escalated == sa.true(), 1), else_=0)),
        sa.func.sum(sa.case((q.attempt_count > 1, 1), else_=0)),
        sa.func.sum(sa.case((q.cache_hit == sa.true(), 1), else_=0)),
    ]
    n_attempt = len(attempt_aggregates)
    counter_parts: list[Any] = []
    latency_parts: list[Any] = []
    for since, until in ranges:
        raw_where = [r.ts >= since, r.ts < until]
        req_where = [q.home_ts >= since, q.home_ts < until]
        if caller is not None:
            raw_where.append(r.caller == caller)
            req_where.append(q.caller == caller)
        raw_select = sa.select(
            raw_key.label("k"),
            *(s.label(name) for s, name in zip(attempt_aggregates, ROLLUP_COUNTERS, strict=False)),
            *(zero.label(name) for name in ROLLUP_COUNTERS[n_attempt:]),
        ).where(*raw_where)
        counter_parts.append(grouped(raw_select, raw_key))
        req_select = sa.select(
            req_key.label("k"),
            *(zero.label(name) for name in ROLLUP_COUNTERS[:n_attempt]),
            *(s.label(name) for s, name in zip(request_sums, ROLLUP_COUNTERS[n_attempt:], strict=True)),
        ).where(*req_where)
        counter_parts.append(grouped(req_select, req_key))
        latency_parts.append(
            grouped(
                sa.select(req_key.label("k"), q.lat_bucket.label("b"), sa.func.count().label("n")).where(
                    *req_where, q.lat_bucket.is_not(None)
                ),
                req_key,
                q.lat_bucket,
            )
        )
    union = sa.union_all(*counter_parts).subquery()
    query = sa.select(union.c.k, *(sa.func.sum(union.c[name]) for name in ROLLUP_COUNTERS)).group_by(
        union.c.k
    )
    for row in await conn.execute(query):
        add(row[0], [sign * int(v or 0) for v in row[1:]])
    lat_union = sa.union_all(*latency_parts).subquery()
    lat_query = sa.select(lat_union.c.k, lat_union.c.b, sa.func.sum(lat_union.c.n)).group_by(
        lat_union.c.k, lat_union.c.b
    )
    for key, bucket, n in await conn.execute(lat_query):
        add(key, [0] * len(ROLLUP_COUNTERS), [(int(bucket), sign * int(n))])


def percentile(histogram: dict[int, int], p: float) -> float:
    """Nearest-rank percentile over a latency histogram, as the bucket's representative value."""
    total = sum(histogram.values())
    if total == 0:
        return 0.0
    rank = max(1, math.ceil(p * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return round(bucket_value(bucket), 3)
    return round(bucket_value(max(histogram)), 3)  # pragma: no cover


def totals_pb(agg: Aggregate) -> ledger_pb2.Totals:
    g = agg.get
    requests_n = g("requests")
    cost, baseline, classifier = g("cost_nusd"), g("baseline_nusd"), g("classifier_nusd")
    judge = g("judge_nusd")

    def rate(n: int) -> float:
        return n / requests_n if requests_n else 0.0

    return ledger_pb2.Totals(
        requests=requests_n,
        attempts=g("attempts"),
        input_tokens=g("input_tokens"),
        output_tokens=g("output_tokens"),
        cost_usd=to_usd(cost),
        baseline_cost_usd=to_usd(baseline),
        gross_savings_usd=to_usd(baseline - cost),
        classifier_cost_usd=to_usd(classifier),
        net_savings_usd=to_usd(baseline - cost - classifier - judge),
        judge_cost_usd=to_usd(judge),
        failed_attempt_cost_usd=to_usd(g("failed_nusd")),
        escalation_rate=rate(g("escalated_requests")),
        fallback_rate=rate(g("fallback_requests")),
        cache_hit_rate=rate(g("cache_hits")),
        latency_p50_ms=percentile(agg.latency, 0.50),
        latency_p95_ms=percentile(agg.latency, 0.95),
        unpriced_attempts=g("unpriced_attempts"),
        reasoning_tokens=g("reasoning_tokens"),
        baseline_reasoning_cost_usd=to_usd(g("baseline_reasoning_nusd")),
        exploration_cost_usd=to_usd(g("exploration_nusd")),
        exploration_attempts=g("exploration_attempts"),
        simulated_attempts=g("simulated_attempts"),
        simulated_cost_usd=to_usd(g("simulated_nusd")),
    )


def group_key(dim: int, key: Any) -> str:
    if dim == HOUR:
        return iso_hour(int(key))
    if dim == ledger_pb2.GROUP_BY_TIER:
        return enum_name(common_pb2.Tier, int(key))
    if dim == ledger_pb2.GROUP_BY_CATEGORY:
        return enum_name(common_pb2.Category, int(key))
    return str(key)


def breakdown_pb(dim: int, groups: dict[Any, Aggregate]) -> ledger_pb2.Breakdown:
    # A value seen only in the part of an hour a window subtracts nets out to nothing: not a group.
    items = [
        (group_key(dim, key), agg)
        for key, agg in groups.items()
        if key is not None and (agg.get("attempts") or agg.get("requests"))
    ]
    items.sort(key=lambda item: (-item[1].get("cost_nusd"), item[0]))
    return ledger_pb2.Breakdown(
        group_by=dim,  # type: ignore[arg-type]
        groups=[ledger_pb2.Group(key=key, totals=totals_pb(agg)) for key, agg in items],
    )


def merge(aggregates: Iterable[Aggregate]) -> Aggregate:
    total = Aggregate()
    for agg in aggregates:
        total.counters = [a + b for a, b in zip(total.counters, agg.counters, strict=True)]
        for bucket, n in agg.latency.items():
            total.latency[bucket] = total.latency.get(bucket, 0) + n
    return total
