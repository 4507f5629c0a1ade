"""The ledger's tables as the queries see them (the current schema version), and their units.

Conventions, shared by SQLite and PostgreSQL so one code path serves both:
- times are integer microseconds since the Unix epoch, UTC (`ts`, `*_ts`); hours are `ts // HOUR_US`;
- money is integer nano-dollars (`*_nusd`, 1e-9 USD): sums are exact, never float-rounded, so
  totals reconcile to the last digit across replicas and re-deliveries;
- enums are stored as their proto numbers.

`ledger_svc.migrations` creates these tables; a test checks that the migrated database matches them.
"""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
NUSD_PER_USD = 1_000_000_000

# Dimension codes of the rollup tables; the same numbers as the proto's GroupBy where they overlap.
DIM_TOTAL = 0
DIM_MODEL = 1
DIM_TIER = 2
DIM_CATEGORY = 4
DIM_POLICY = 6  # the policy version (migration 5)

# Request latency histograms live in the rollup rows, one integer column per bucket, so they cost no
# extra rows to write or read. Bucket 0 holds [0, 10) ms; bucket b in 1..126 holds
# [10·γ^(b-1), 10·γ^b) ms; bucket 127 holds everything from 10·γ^126 ms (about 27 minutes) up.
# A percentile is reported as its bucket's point 2·lo·γ/(1+γ), whose relative error is at most
# (γ-1)/(γ+1) = 4.8% for latencies between 10 ms and 27 minutes.
LATENCY_GAMMA = 1.1
LATENCY_MIN_MS = 10.0
LATENCY_BUCKETS = 128
LATENCY_COLUMNS = tuple(f"lat_{b:03d}" for b in range(LATENCY_BUCKETS))
_LOG_GAMMA = math.log(LATENCY_GAMMA)


def latency_bucket(ms: float) -> int:
    if ms < LATENCY_MIN_MS:
        return 0
    return min(LATENCY_BUCKETS - 1, 1 + int(math.log(ms / LATENCY_MIN_MS) / _LOG_GAMMA))


def bucket_value(bucket: int) -> float:
    """The value reported for a bucket: the point with the least worst-case relative error."""
    if bucket <= 0:
        return LATENCY_MIN_MS / 2
    low = LATENCY_MIN_MS * LATENCY_GAMMA ** (bucket - 1)
    if bucket >= LATENCY_BUCKETS - 1:
        return low
    return 2 * low * LATENCY_GAMMA / (1 + LATENCY_GAMMA)


metadata = sa.MetaData()

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_ts", sa.BigInteger, nullable=False),
)

# Single values the replicas share. `pruned_before`: raw records and request states older than this
# (an hour boundary, µs) are gone; only the hourly rollups remain for them.
ledger_meta = sa.Table(
    "ledger_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

# One row per provider attempt, as delivered. (request_id, caller, run_id, attempt) is the idempotency
# key (migration 4): every distinct provider call has its own, a re-delivered record hits its own.
usage_records = sa.Table(
    "usage_records",
    metadata,
    sa.Column("request_id", sa.String(200), primary_key=True),
    sa.Column("caller", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("category", sa.Integer, nullable=False),
    sa.Column("tier", sa.Integer, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("classifier_source", sa.Integer, nullable=False),
    sa.Column("classifier_version", sa.Text, nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("provider", sa.String(200), nullable=False),
    sa.Column("outcome", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cached_input_tokens", sa.BigInteger, nullable=False),
    sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_nusd", sa.BigInteger, nullable=False),
    sa.Column("baseline_nusd", sa.BigInteger, nullable=False),
    sa.Column("classifier_nusd", sa.BigInteger, nullable=False),
    sa.Column("price_map_version", sa.Text, nullable=False),
    sa.Column("price_known", sa.Boolean, nullable=False),
    sa.Column("classify_ms", sa.Float, nullable=False),
    sa.Column("provider_ms", sa.Float, nullable=False),
    sa.Column("total_ms", sa.Float, nullable=False),
    sa.Column("cache_hit", sa.Boolean, nullable=False),
    sa.Column("final", sa.Boolean, nullable=False),
    sa.Column("received_ts", sa.BigInteger, nullable=False),
    sa.Column("judge_nusd", sa.BigInteger, nullable=False, server_default="0"),  # migration 3
    # Migration 4: the baseline's reasoning share, the policy version, the classifier's prompt family.
    sa.Column("baseline_reasoning_nusd", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("policy_version", sa.String(64), nullable=False, server_default=""),
    sa.Column("family", sa.String(64), nullable=False, server_default=""),
    # Migration 5: exploration attempts and the judge's verdicts, the feedback loop's evidence.
    sa.Column("exploration", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("judge_verdict", sa.SmallInteger, nullable=False, server_default="0"),
    # Migration 7: the bundled simulator answered.
    sa.Column("simulated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_usage_records_ts", "ts"),
)

# One row per run of a routed request: what its attempts so far say about it. The run's "home" is its
# attempt 1 (time, model, tier, category); request-level figures are counted there.
requests = sa.Table(
    "requests",
    metadata,
    sa.Column("request_id", sa.String(200), primary_key=True),
    sa.Column("caller", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("first_ts", sa.BigInteger, nullable=False),
    sa.Column("home_ts", sa.BigInteger, nullable=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("tier", sa.Integer, nullable=True),
    sa.Column("category", sa.Integer, nullable=True),
    sa.Column("cache_hit", sa.Boolean, nullable=False),
    sa.Column("attempt_count", sa.Integer, nullable=False),
    sa.Column("escalated", sa.Boolean, nullable=False),
    sa.Column("total_ms", sa.Float, nullable=True),
    sa.Column("lat_bucket", sa.Integer, nullable=True),
    sa.Column("policy_version", sa.String(64), nullable=True),  # migration 5: the home's
    sa.Index("ix_requests_home_ts", "home_ts"),
)

# Additive counters and latency histograms per hour, per dimension value, for all callers
# (per_caller=0, caller='') and for each caller (per_caller=1). Maintained in the ingest transaction,
# so every hour is always rolled up.
ROLLUP_COUNTERS = (
    "attempts",
    "input_tokens",
    "output_tokens",
    "cost_nusd",
    "baseline_nusd",
    "classifier_nusd",
    "failed_nusd",
    "unpriced_attempts",
    "judge_nusd",
    "reasoning_tokens",
    "baseline_reasoning_nusd",
    "exploration_nusd",
    "exploration_attempts",
    "simulated_attempts",
    "simulated_nusd",
    "requests",
    "escalated_requests",
    "fallback_requests",
    "cache_hits",
)
ATTEMPT_COUNTERS = ROLLUP_COUNTERS[:15]


def attempt_sums(r: Any) -> list[Any]:
    """SQL aggregates of raw attempt rows (`usage_records.c`), in the order of ATTEMPT_COUNTERS."""
    explored = r.exploration == sa.true()
    return [
        sa.func.count(),
        sa.func.sum(r.input_tokens),
        sa.func.sum(r.output_tokens),
        sa.func.sum(r.cost_nusd),
        sa.func.sum(r.baseline_nusd),
        sa.func.sum(r.classifier_nusd),
        sa.func.sum(sa.case((sa.and_(r.final == sa.false(), ~explored), r.cost_nusd), else_=0)),
        sa.func.sum(sa.case((r.price_known == sa.false(), 1), else_=0)),
        sa.func.sum(r.judge_nusd),
        sa.func.sum(r.reasoning_tokens),
        sa.func.sum(r.baseline_reasoning_nusd),
        sa.func.sum(sa.case((explored, r.cost_nusd + r.judge_nusd), else_=0)),
        sa.func.sum(sa.case((explored, 1), else_=0)),
        sa.func.sum(sa.case((r.simulated == sa.true(), 1), else_=0)),
        sa.func.sum(sa.case((r.simulated == sa.true(), r.cost_nusd), else_=0)),
    ]


REQUEST_COUNTERS = ROLLUP_COUNTERS[15:]
ROLLUP_KEY = ("dim", "per_caller", "caller", "hour", "key")

usage_hourly = sa.Table(
    "usage_hourly",
    metadata,
    sa.Column("dim", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("per_caller", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("caller", sa.String(200), primary_key=True),
    sa.Column("hour", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("key", sa.String(200), primary_key=True),
    *(sa.Column(name, sa.BigInteger, nullable=False) for name in ROLLUP_COUNTERS),
    *(sa.Column(name, sa.Integer, nullable=False) for name in LATENCY_COLUMNS),
    # Breakdowns over all callers (GROUP_BY_CALLER without a caller filter) read hours first.
    sa.Index("ix_usage_hourly_hour", "dim", "per_caller", "hour"),
    sqlite_with_rowid=False,
)

# Spending limits; caller '' is the global budget. Limits of 0 are "not set".
budgets = sa.Table(
    "budgets",
    metadata,
    sa.Column("caller", sa.String(200), primary_key=True),
    sa.Column("period", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("soft_nusd", sa.BigInteger, nullable=False),
    sa.Column("hard_nusd", sa.BigInteger, nullable=False),
    sa.Column("updated_ts", sa.BigInteger, nullable=False),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(200), nullable=False),
    sa.Column("verdict", sa.SmallInteger, nullable=False),
    sa.Column("needed_tier", sa.SmallInteger, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("created_ts", sa.BigInteger, nullable=False),
    # Migration 5: the run the verdict is about.
    sa.Column("caller", sa.String(200), nullable=False, server_default=""),
    sa.Column("run_id", sa.String(64), nullable=False, server_default=""),
    sa.Index("ix_feedback_request_id", "request_id"),
)

# Budget holds of calls in flight (ReserveBudget, migration 6): released when the run's records are
# ingested (same transaction as their spend) or when they expire (a router that crashed).
reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("caller", sa.String(200), nullable=False),
    sa.Column("request_id", sa.String(200), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("amount_nusd", sa.BigInteger, nullable=False),
    sa.Column("created_ts", sa.BigInteger, nullable=False),
    sa.Column("expires_ts", sa.BigInteger, nullable=False),
    sa.Index("ix_reservations_request_id", "request_id"),
    sa.Index("ix_reservations_caller", "caller"),
)

# API keys created over CreateKey (docs/security.md): digests only. Roles and callers are
# comma-separated (a caller name cannot contain a comma).
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("roles", sa.String(100), nullable=False),
    sa.Column("callers", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_ts", sa.BigInteger, nullable=False),
    sa.Column("revoked_ts", sa.BigInteger, nullable=False, server_default="0"),
)

# Each router replica's last reported spool depth.
senders = sa.Table(
    "senders",
    metadata,
    sa.Column("sender", sa.String(200), primary_key=True),
    sa.Column("spool_depth", sa.BigInteger, nullable=False),
    sa.Column("updated_ts", sa.BigInteger, nullable=False),
)
