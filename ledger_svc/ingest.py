"""The ingest transaction: records, request states and hourly rollups, all or nothing.

A record's key is (request_id, caller, run_id, attempt); a request state's is its run,
(request_id, caller, run_id). Per batch, inside one transaction:
1. the batch's request states are created if new and locked, in key order (concurrent
   batches touching the same runs queue up here, and cannot deadlock);
2. the records already stored for those runs are read: under the lock nobody else can add
   any, so what is not there yet is new, and only new records count;
3. new records are inserted; the hourly rollups are incremented (per attempt at the attempt's own
   hour and dimensions, per request at its home: attempt 1's); request states are updated.

The hot statements are SQLAlchemy Core constructs compiled once for the engine's dialect and run
with `exec_driver_sql` over tuples: the same SQL as Core would send, without Core's per-parameter
work, which at thousands of records a second costs more than the database does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from ledger_svc.db import insert_for
from ledger_svc.schema import (
    ATTEMPT_COUNTERS,
    DIM_CATEGORY,
    DIM_MODEL,
    DIM_POLICY,
    DIM_TIER,
    DIM_TOTAL,
    HOUR_US,
    LATENCY_COLUMNS,
    ROLLUP_COUNTERS,
    ROLLUP_KEY,
    attempt_sums,
    latency_bucket,
    requests,
    reservations,
    usage_hourly,
    usage_records,
)
from llmroute.common.v1 import common_pb2

RollupKey = tuple[int, int, str, int, str]
RunKey = tuple[str, str, str]  # (request_id, caller, run_id)
RecordKey = tuple[str, str, str, int]  # (request_id, caller, run_id, attempt)
RUN_KEY = ("request_id", "caller", "run_id")
RECORD_KEY = (*RUN_KEY, "attempt")

_ESCALATED = common_pb2.ATTEMPT_OUTCOME_ESCALATED
RECORD_COLUMNS = tuple(c.name for c in usage_records.columns)
STATE_COLUMNS = tuple(c.name for c in requests.columns)
_STATE_UPDATED = tuple(c for c in STATE_COLUMNS if c not in RUN_KEY)
_N_ATTEMPT = len(ATTEMPT_COUNTERS)
_SUMMED = (*ROLLUP_COUNTERS, *LATENCY_COLUMNS)  # what an upsert adds to a rollup row
_N_LATENCY = len(ROLLUP_COUNTERS)  # where the histogram starts in a row's values


class _Compiled:
    """A statement compiled once for one dialect, executed over rows of positional values.

    Each run is one DBAPI executemany: asyncpg pipelines the rows through one prepared statement,
    which PostgreSQL handles faster than multi-row VALUES statements (those are planned per call).
    """

    def __init__(self, statement: Any, dialect: Dialect, order: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect)
        if tuple(compiled.positiontup or ()) != tuple(order):
            raise RuntimeError(f"unexpected parameter order {compiled.positiontup} for {order}")
        self.sql = compiled.string

    async def run(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            await conn.exec_driver_sql(self.sql, rows)


class Statements:
    def __init__(self, dialect_name: str, dialect: Dialect) -> None:
        def insert(table: sa.Table, columns: Sequence[str]) -> Any:
            return insert_for(dialect_name, table).values({c: sa.bindparam(c) for c in columns})

        placeholder = (*RUN_KEY, "first_ts", "cache_hit", "attempt_count", "escalated")
        self.new_requests = _Compiled(
            insert(requests, placeholder).on_conflict_do_nothing(index_elements=list(RUN_KEY)),
            dialect,
            placeholder,
        )
        self.records = _Compiled(
            insert(usage_records, RECORD_COLUMNS).on_conflict_do_nothing(index_elements=list(RECORD_KEY)),
            dialect,
            RECORD_COLUMNS,
        )
        # The states exist (step 1 created them): an upsert is a multi-row UPDATE that both dialects accept.
        state = insert(requests, STATE_COLUMNS)
        self.update_requests = _Compiled(
            state.on_conflict_do_update(
                index_elements=list(RUN_KEY), set_={c: state.excluded[c] for c in _STATE_UPDATED}
            ),
            dialect,
            STATE_COLUMNS,
        )
        rollup = insert(usage_hourly, (*ROLLUP_KEY, *_SUMMED))
        self.rollups = _Compiled(
            rollup.on_conflict_do_update(
                index_elements=list(ROLLUP_KEY),
                set_={name: usage_hourly.c[name] + rollup.excluded[name] for name in _SUMMED},
            ),
            dialect,
            (*ROLLUP_KEY, *_SUMMED),
        )


def rollup_keys(
    hour: int, caller: str, model: str, tier: int, category: int, policy: str | None
) -> tuple[RollupKey, ...]:
    """The rollup rows one record (or request) adds to: each dimension, for all callers and per caller."""
    tier_key, category_key, policy_key = str(tier), str(category), policy or ""
    return (
        (DIM_TOTAL, 0, "", hour, ""),
        (DIM_MODEL, 0, "", hour, model),
        (DIM_TIER, 0, "", hour, tier_key),
        (DIM_CATEGORY, 0, "", hour, category_key),
        (DIM_POLICY, 0, "", hour, policy_key),
        (DIM_TOTAL, 1, caller, hour, ""),
        (DIM_MODEL, 1, caller, hour, model),
        (DIM_TIER, 1, caller, hour, tier_key),
        (DIM_CATEGORY, 1, caller, hour, category_key),
        (DIM_POLICY, 1, caller, hour, policy_key),
    )


def _request_contribution(state: dict[str, Any]) -> tuple[int, int, int, int]:
    if state["home_ts"] is None:
        return (0, 0, 0, 0)
    return (1, int(bool(state["escalated"])), int(state["attempt_count"] > 1), int(bool(state["cache_hit"])))


def _latency_counted(state: dict[str, Any]) -> bool:
    return state["home_ts"] is not None and state["lat_bucket"] is not None


def run_key(row: dict[str, Any]) -> RunKey:
    return (row["request_id"], row["caller"], row["run_id"])


def record_key(row: dict[str, Any]) -> RecordKey:
    return (row["request_id"], row["caller"], row["run_id"], row["attempt"])


async def insert_batch(conn: Any, statements: Statements, rows: list[dict[str, Any]]) -> set[RecordKey]:
    """Store record rows (unique by record key); returns the keys that were new."""
    first_ts: dict[RunKey, int] = {}
    for row in rows:
        run, ts = run_key(row), row["ts"]
        if run not in first_ts or ts < first_ts[run]:
            first_ts[run] = ts
    runs = sorted(first_ts)
    ids = sorted({rid for rid, _, _ in runs})
    # 1. Create and lock the request states (every run of these request ids: the index's prefix).
    await statements.new_requests.run(conn, [(*run, first_ts[run], False, 0, False) for run in runs])
    states = {
        (row.request_id, row.caller, row.run_id): dict(row._mapping)
        for row in await conn.execute(
            sa.select(requests)
            .where(requests.c.request_id.in_(ids))
            .order_by(requests.c.request_id, requests.c.caller, requests.c.run_id)
            .with_for_update()
        )
    }
    # 2. What is already stored (re-deliveries) does not count again.
    present = {
        tuple(found)
        for found in await conn.execute(
            sa.select(*(usage_records.c[c] for c in RECORD_KEY)).where(usage_records.c.request_id.in_(ids))
        )
    }
    new_rows = [row for row in rows if record_key(row) not in present]
    if not new_rows:
        return set()
    # 3. Insert, roll up, update request states.
    await statements.records.run(conn, [tuple(row[c] for c in RECORD_COLUMNS) for row in new_rows])
    rollup: dict[RollupKey, list[int]] = defaultdict(lambda: [0] * len(_SUMMED))
    by_run: dict[RunKey, list[dict[str, Any]]] = defaultdict(list)
    for row in new_rows:
        explored = bool(row["exploration"])
        if not explored:  # exploration attempts are never part of the run's answer
            by_run[run_key(row)].append(row)
        cost = row["cost_nusd"]
        counters = (
            1,
            row["input_tokens"],
            row["output_tokens"],
            cost,
            row["baseline_nusd"],
            row["classifier_nusd"],
            0 if row["final"] or explored else cost,
            0 if row["price_known"] else 1,
            row["judge_nusd"],
            row["reasoning_tokens"],
            row["baseline_reasoning_nusd"],
            cost + row["judge_nusd"] if explored else 0,
            1 if explored else 0,
            1 if row["simulated"] else 0,
            cost if row["simulated"] else 0,
        )
        for key in rollup_keys(
            row["ts"] // HOUR_US,
            row["caller"],
            row["model"],
            row["tier"],
            row["category"],
            row["policy_version"],
        ):
            values = rollup[key]
            for i in range(_N_ATTEMPT):
                values[i] += counters[i]
    updates = []
    for run, run_rows in by_run.items():
        before = states[run]
        after = dict(before)
        for row in sorted(run_rows, key=lambda r: r["attempt"]):
            after["attempt_count"] += 1
            if row["ts"] < after["first_ts"]:
                after["first_ts"] = row["ts"]
            if row["outcome"] == _ESCALATED:
                after["escalated"] = True
            if row["attempt"] == 1:
                after["home_ts"] = row["ts"]
                after["model"] = row["model"]
                after["tier"] = row["tier"]
                after["category"] = row["category"]
                after["cache_hit"] = row["cache_hit"]
                after["policy_version"] = row["policy_version"]
            if row["final"] and after["lat_bucket"] is None:  # the first answer wins
                after["total_ms"] = row["total_ms"]
                after["lat_bucket"] = latency_bucket(row["total_ms"])
        updates.append(tuple(after[c] for c in STATE_COLUMNS))
        if after["home_ts"] is None:
            continue
        home = rollup_keys(
            after["home_ts"] // HOUR_US,
            after["caller"],
            after["model"],
            after["tier"],
            after["category"],
            after["policy_version"],
        )
        delta = [
            a - b for a, b in zip(_request_contribution(after), _request_contribution(before), strict=True)
        ]
        new_latency = _latency_counted(after) and not _latency_counted(before)
        for key in home:
            if any(delta):
                values = rollup[key]
                for i, value in enumerate(delta):
                    values[_N_ATTEMPT + i] += value
            if new_latency:
                rollup[key][_N_LATENCY + after["lat_bucket"]] += 1
    await statements.update_requests.run(conn, updates)
    # The runs' spend is in: their budget holds go, in the same transaction (never counted twice).
    held = reservations.c
    await conn.execute(
        reservations.delete().where(
            held.request_id.in_(sorted({rid for rid, _, _ in by_run})),
            sa.tuple_(held.request_id, held.caller, held.run_id).in_(sorted(by_run)),
        )
    )
    # Sorted, so that concurrent batches lock shared rollup rows in the same order.
    await statements.rollups.run(conn, [(*key, *values) for key, values in sorted(rollup.items())])
    return {record_key(row) for row in new_rows}


async def rebuild(conn: Any, statements: Statements, first_hour: int) -> None:
    """Write the rollups of hours >= first_hour from the raw tables (their rollup rows must be gone).

    The database groups the raw rows into cells (hour, caller, model, tier, category); the cells
    are spread over the rollup keys here, by the same rules as ingest.
    """
    r, q = usage_records.c, requests.c
    rollup: dict[RollupKey, list[int]] = defaultdict(lambda: [0] * len(_SUMMED))
    hour = r.ts // HOUR_US
    cells = (r.caller, hour, r.model, r.tier, r.category, r.policy_version)
    attempts = sa.select(*cells, *attempt_sums(r)).where(r.ts >= first_hour * HOUR_US).group_by(*cells)
    for caller, h, model, tier, category, policy, *counters in await conn.execute(attempts):
        for key in rollup_keys(h, caller, model, tier, category, policy):
            values = rollup[key]
            for i in range(_N_ATTEMPT):
                values[i] += int(counters[i])
    home_hour = q.home_ts // HOUR_US
    home_cells = (q.caller, home_hour, q.model, q.tier, q.category, q.policy_version, q.lat_bucket)
    per_request = (
        sa.select(
            *home_cells,
            sa.func.count(),
            sa.func.sum(sa.case((q.escalated == sa.true(), 1), else_=0)),
            sa.func.sum(sa.case((q.attempt_count > 1, 1), else_=0)),
            sa.func.sum(sa.case((q.cache_hit == sa.true(), 1), else_=0)),
        )
        .where(q.home_ts >= first_hour * HOUR_US)
        .group_by(*home_cells)
    )
    for caller, h, model, tier, category, policy, bucket, *counters in await conn.execute(per_request):
        for key in rollup_keys(h, caller, model, tier, category, policy):
            values = rollup[key]
            for i, value in enumerate(counters):
                values[_N_ATTEMPT + i] += int(value)
            if bucket is not None:
                values[_N_LATENCY + bucket] += int(counters[0])
    await statements.rollups.run(conn, [(*key, *values) for key, values in sorted(rollup.items())])
