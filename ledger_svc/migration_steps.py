"""Each schema version's DDL, frozen: what `ledger_svc.migrations` applies, in order.

Never edit a released step; add the next one (and its line in `migrations.MIGRATIONS`). A step
defines the tables it creates here, not by importing `schema` (which describes the latest version
and will move on), and keeps its DDL portable (SQLAlchemy constructs) or branches on
`conn.dialect.name`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection


async def _create(conn: AsyncConnection, md: sa.MetaData) -> None:
    await conn.run_sync(md.create_all)


def v1_tables() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "ledger_meta",
        md,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "usage_records",
        md,
        sa.Column("request_id", sa.String(200), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("caller", sa.String(200), nullable=False),
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
        sa.Index("ix_usage_records_ts", "ts"),
    )
    sa.Table(
        "requests",
        md,
        sa.Column("request_id", sa.String(200), primary_key=True),
        sa.Column("first_ts", sa.BigInteger, nullable=False),
        sa.Column("home_ts", sa.BigInteger, nullable=True),
        sa.Column("caller", sa.String(200), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("tier", sa.Integer, nullable=True),
        sa.Column("category", sa.Integer, nullable=True),
        sa.Column("cache_hit", sa.Boolean, nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("escalated", sa.Boolean, nullable=False),
        sa.Column("total_ms", sa.Float, nullable=True),
        sa.Column("lat_bucket", sa.Integer, nullable=True),
        sa.Index("ix_requests_home_ts", "home_ts"),
    )
    counters = (
        "attempts",
        "input_tokens",
        "output_tokens",
        "cost_nusd",
        "baseline_nusd",
        "classifier_nusd",
        "failed_nusd",
        "unpriced_attempts",
        "requests",
        "escalated_requests",
        "fallback_requests",
        "cache_hits",
    )
    sa.Table(
        "usage_hourly",
        md,
        sa.Column("dim", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("per_caller", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("caller", sa.String(200), primary_key=True),
        sa.Column("hour", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("key", sa.String(200), primary_key=True),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in counters),
        # Latency histogram: 128 buckets (see schema.latency_bucket, γ = 1.1 from 10 ms).
        *(sa.Column(f"lat_{b:03d}", sa.Integer, nullable=False) for b in range(128)),
        sa.Index("ix_usage_hourly_hour", "dim", "per_caller", "hour"),
        sqlite_with_rowid=False,
    )
    return md


async def v1(conn: AsyncConnection) -> None:
    md = v1_tables()
    await _create(conn, md)
    await conn.execute(md.tables["ledger_meta"].insert().values(key="pruned_before", value=0))


async def v2(conn: AsyncConnection) -> None:
    md = sa.MetaData()
    sa.Table(
        "budgets",
        md,
        sa.Column("caller", sa.String(200), primary_key=True),
        sa.Column("period", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("soft_nusd", sa.BigInteger, nullable=False),
        sa.Column("hard_nusd", sa.BigInteger, nullable=False),
        sa.Column("updated_ts", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "feedback",
        md,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("verdict", sa.SmallInteger, nullable=False),
        sa.Column("needed_tier", sa.SmallInteger, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_ts", sa.BigInteger, nullable=False),
        sa.Index("ix_feedback_request_id", "request_id"),
    )
    sa.Table(
        "senders",
        md,
        sa.Column("sender", sa.String(200), primary_key=True),
        sa.Column("spool_depth", sa.BigInteger, nullable=False),
        sa.Column("updated_ts", sa.BigInteger, nullable=False),
    )
    await _create(conn, md)


async def v3(conn: AsyncConnection) -> None:
    # Portable DDL (SQLite and PostgreSQL); existing rows and rollups get 0: nothing was judged before.
    for table in ("usage_records", "usage_hourly"):
        await conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN judge_nusd BIGINT NOT NULL DEFAULT 0"))


def _v4_tables() -> sa.MetaData:
    """Records and request states keyed by run: (request_id, caller, run_id[, attempt])."""
    md = sa.MetaData()
    sa.Table(
        "usage_records",
        md,
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
        sa.Column("judge_nusd", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("baseline_reasoning_nusd", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("policy_version", sa.String(64), nullable=False, server_default=""),
        sa.Column("family", sa.String(64), nullable=False, server_default=""),
    )
    sa.Table(
        "requests",
        md,
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
    )
    return md


async def v4(conn: AsyncConnection) -> None:
    """Rebuild the records and request states with the run in their keys (caller, run_id).

    The old rows become run '' of their caller. A request state whose attempt 1 had not arrived has no
    caller yet: it takes the caller of its records. Rollups gain the reasoning tokens and the
    baseline's reasoning share; hours rolled up before this migration have 0 for both.
    """
    postgres = conn.dialect.name == "postgresql"
    for index in ("ix_usage_records_ts", "ix_requests_home_ts"):
        await conn.execute(sa.text(f"DROP INDEX {index}"))
    for table in ("usage_records", "requests"):
        await conn.execute(sa.text(f"ALTER TABLE {table} RENAME TO {table}_v3"))
        if postgres:  # the primary key's index name would collide with the new table's
            await conn.execute(sa.text(f"ALTER INDEX {table}_pkey RENAME TO {table}_v3_pkey"))
    await _create(conn, _v4_tables())
    old = (
        "request_id, caller, attempt, ts, category, tier, score, classifier_source, classifier_version,"
        " model, provider, outcome, error, input_tokens, output_tokens, cached_input_tokens,"
        " reasoning_tokens, cost_nusd, baseline_nusd, classifier_nusd, price_map_version, price_known,"
        " classify_ms, provider_ms, total_ms, cache_hit, final, received_ts, judge_nusd"
    )
    await conn.execute(
        sa.text(f"INSERT INTO usage_records ({old}, run_id) SELECT {old}, '' FROM usage_records_v3")
    )
    states = (
        "first_ts, home_ts, model, tier, category, cache_hit, attempt_count, escalated, total_ms, lat_bucket"
    )
    await conn.execute(
        sa.text(
            f"INSERT INTO requests (request_id, caller, run_id, {states}) SELECT q.request_id,"
            " COALESCE(q.caller, (SELECT MIN(r.caller) FROM usage_records_v3 r WHERE r.request_id = q.request_id), ''),"
            f" '', {', '.join('q.' + c.strip() for c in states.split(','))} FROM requests_v3 q"
        )
    )
    for table in ("usage_records_v3", "requests_v3"):
        await conn.execute(sa.text(f"DROP TABLE {table}"))
    await conn.execute(sa.text("CREATE INDEX ix_usage_records_ts ON usage_records (ts)"))
    await conn.execute(sa.text("CREATE INDEX ix_requests_home_ts ON requests (home_ts)"))
    for column in ("reasoning_tokens", "baseline_reasoning_nusd"):
        await conn.execute(sa.text(f"ALTER TABLE usage_hourly ADD COLUMN {column} BIGINT NOT NULL DEFAULT 0"))


async def v5(conn: AsyncConnection) -> None:
    """The feedback loop: exploration attempts, judge verdicts, the run of a feedback row, and the
    policy version as a rollup dimension (its rows start with this migration)."""
    statements = (
        "ALTER TABLE usage_records ADD COLUMN exploration BOOLEAN NOT NULL DEFAULT false",
        "ALTER TABLE usage_records ADD COLUMN judge_verdict SMALLINT NOT NULL DEFAULT 0",
        "ALTER TABLE requests ADD COLUMN policy_version VARCHAR(64)",
        "ALTER TABLE usage_hourly ADD COLUMN exploration_nusd BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE usage_hourly ADD COLUMN exploration_attempts BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE feedback ADD COLUMN caller VARCHAR(200) NOT NULL DEFAULT ''",
        "ALTER TABLE feedback ADD COLUMN run_id VARCHAR(64) NOT NULL DEFAULT ''",
    )
    for statement in statements:
        await conn.execute(sa.text(statement))


async def v6(conn: AsyncConnection) -> None:
    md = sa.MetaData()
    sa.Table(
        "reservations",
        md,
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
    await _create(conn, md)


async def v7(conn: AsyncConnection) -> None:
    """The simulated flag on records, and its counters in the rollups."""
    statements = (
        "ALTER TABLE usage_records ADD COLUMN simulated BOOLEAN NOT NULL DEFAULT false",
        "ALTER TABLE usage_hourly ADD COLUMN simulated_attempts BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE usage_hourly ADD COLUMN simulated_nusd BIGINT NOT NULL DEFAULT 0",
    )
    for statement in statements:
        await conn.execute(sa.text(statement))


async def v8(conn: AsyncConnection) -> None:
    md = sa.MetaData()
    sa.Table(
        "api_keys",
        md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("roles", sa.String(100), nullable=False),
        sa.Column("callers", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_ts", sa.BigInteger, nullable=False),
        sa.Column("revoked_ts", sa.BigInteger, nullable=False, server_default="0"),
    )
    await _create(conn, md)
