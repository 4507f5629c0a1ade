"""ledger_svc configuration, from LEDGER_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from service_kit.settings import ServiceSettings


class LedgerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_")

    port: int = Field(default=50053, ge=0, le=65535)
    # SQLAlchemy async URL: sqlite+aiosqlite:///relative/path.db (relative to the working directory; its
    # parent directory is created) or postgresql+asyncpg://user@host:5432/db for several replicas.
    database_url: str = "sqlite+aiosqlite:///var/ledger.db"
    # PostgreSQL only: keep the ledger's tables in this schema (created if missing) instead of `public`.
    database_schema: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # Connections for reads (GetStats, exports, watchers); SQLite always writes through one connection.
    database_pool_size: int = Field(default=5, ge=1, le=100)
    # SQLite: FULL fsyncs the WAL on every commit (an acknowledged batch survives a power loss);
    # NORMAL survives a process crash only.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # SQLite: page cache per connection, in MiB. The ledger holds 1 + database_pool_size + 2 (budgets)
    # connections, and each cache fills as the database grows: 8 connections of 8 MiB bound it at
    # 64 MiB (at 64 MiB each, a 100k-request soak grew the ledger from 91 to 690 MiB resident).
    sqlite_cache_mib: int = Field(default=8, ge=1, le=4096)
    # SQLite: all connections' memory together, in MiB (SQLite's soft heap limit): past it, each
    # connection reuses its own least recently used cache pages instead of taking more. The read
    # connections each cache the same hot pages (the current hour's records that GetStats reads),
    # so without it the ledger grows by 1 + pool size + 2 copies of them. 0: no limit.
    sqlite_memory_mib: int = Field(default=16, ge=0, le=65536)
    # Records per RecordUsage call; larger batches are refused with INVALID_ARGUMENT.
    max_batch_records: int = Field(default=5000, ge=1, le=100_000)
    # Records timed further in the future than this are refused (clock skew allowance), in seconds.
    max_future_skew_seconds: float = Field(default=3600.0, ge=0)
    # Raw records older than this are pruned (their hourly rollups stay); 0 keeps them forever, in days.
    retention_raw_days: float = Field(default=30.0, ge=0)
    # Hourly rollups older than this are deleted; 0 keeps them forever, in days.
    retention_rollup_days: float = Field(default=0.0, ge=0)
    # How often the retention job runs, in seconds; 0 disables the job.
    retention_interval_seconds: float = Field(default=3600.0, ge=0)
    # When set, SetBudget requires metadata `x-admin-token` with this value.
    admin_token: SecretStr | None = None
    # Bytes per ExportRecords chunk.
    export_chunk_bytes: int = Field(default=64 * 1024, ge=1024, le=4 * 1024 * 1024)
    # Records per ExportRecords call; a longer window is exported in pages (next_page_token).
    export_max_records: int = Field(default=100_000, ge=1)

    @field_validator("admin_token")
    @classmethod
    def _empty_is_unset(cls, token: SecretStr | None) -> SecretStr | None:
        return token if token is not None and token.get_secret_value() else None

    @model_validator(mode="after")
    def _rollups_outlive_raw(self) -> LedgerSettings:
        # Stats read full hours from the rollups only: dropping rollups of hours whose raw records are
        # still kept would make those hours vanish from GetStats.
        if self.retention_rollup_days and (
            not self.retention_raw_days or self.retention_rollup_days < self.retention_raw_days
        ):
            raise ValueError("retention_rollup_days must be 0 (forever) or at least retention_raw_days")
        return self
