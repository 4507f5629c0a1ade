"""The LedgerService gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from google.protobuf import timestamp_pb2
from sqlalchemy import exc as sa_exc

from ledger_svc import outcomes
from ledger_svc import records as conv
from ledger_svc import stats as st
from ledger_svc import validation as v
from ledger_svc.settings import LedgerSettings
from ledger_svc.snapshots import Snapshots
from ledger_svc.store import EXPORT_KEY, BudgetRow, LedgerStore
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from service_kit import auth, metadata, tls
from service_kit import server as service_server
from service_kit.errors import PermissionDenied, Unavailable

log = structlog.get_logger()

SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name
ADMIN_TOKEN = "x-admin-token"

# Who may call what, when keys are required (service_kit/auth.py; unlisted: admin only). A `caller`
# key reads only its own callers' figures (auth.scope_caller); records and holds come from routers.
_READ = ("caller", "admin", "service")
RULES = {
    "RecordUsage": ("service",),
    "ReserveBudget": ("service",),
    "CheckBudget": _READ,
    "GetBudgets": _READ,
    "GetStats": _READ,
    "WatchSpend": _READ,
    "RecordFeedback": _READ,
    "GetFeedbackStats": _READ,
    "SetBudget": ("admin",),
    "ExportRecords": ("admin",),
    "ExportOutcomes": ("admin",),
    "CreateKey": ("admin",),
    "ListKeys": ("admin",),
    "RevokeKey": ("admin",),
    "LookupKey": ("service", "admin"),
}
# After a change-triggered WatchSpend snapshot, wait this long so a burst of batches is one snapshot.
_WATCH_COALESCE_SECONDS = 0.05


def _timestamp(us: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def _api_key(row: Any) -> ledger_pb2.ApiKey:
    info = ledger_pb2.ApiKey(
        id=row["id"],
        name=row["name"],
        roles=[r for r in row["roles"].split(",") if r],
        callers=[c for c in row["callers"].split(",") if c],
        created=_timestamp(row["created_ts"]),
    )
    if row["revoked_ts"]:
        info.revoked.CopyFrom(_timestamp(row["revoked_ts"]))
    return info


def key_lookup(store: LedgerStore) -> auth.Lookup:
    """Keys in the ledger's database as principals: an active key whose digest matches."""

    async def lookup(key_id: str, key_digest: str) -> auth.Principal | None:
        row = await store.key(key_id)
        if row is None or row["revoked_ts"] or not hmac.compare_digest(row["sha256"], key_digest):
            return None
        info = _api_key(row)
        return auth.Principal(info.name, frozenset(info.roles), tuple(info.callers), info.id)

    return lookup


def _budget_status(row: BudgetRow) -> ledger_pb2.BudgetStatus:
    return ledger_pb2.BudgetStatus(
        budget=ledger_pb2.Budget(
            caller=row.caller,
            period=row.period,  # type: ignore[arg-type]
            soft_limit_usd=conv.to_usd(row.soft_nusd),
            hard_limit_usd=conv.to_usd(row.hard_nusd),
        ),
        spent_usd=conv.to_usd(row.spent_nusd),
        state=row.state,  # type: ignore[arg-type]
        reserved_usd=conv.to_usd(row.reserved_nusd),
    )


# The database is unreachable or went away mid-call: callers should retry (the reporter does).
_DATABASE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError)


def _unavailable(error: Exception) -> Unavailable:
    log.warning("database_unavailable", error=type(error).__name__)
    return Unavailable("the ledger database is unavailable; retry later", reason="DATABASE_UNAVAILABLE")


def _database_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(handler)
    async def wrapped(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except _DATABASE_DOWN as error:
            raise _unavailable(error) from error

    return wrapped


def _database_errors_stream(handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(handler)
    async def wrapped(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in handler(self, request, context):
                yield response
        except _DATABASE_DOWN as error:
            raise _unavailable(error) from error

    return wrapped


class _Keys:
    """The key management RPCs, mixed into the servicer."""

    _store: LedgerStore

    @_database_errors
    async def CreateKey(
        self, request: ledger_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.CreateKeyResponse:
        violations = v.caller_violations("name", request.name)
        if not request.name:
            violations.append(("name", "required: the principal the key acts as"))
        roles = list(request.roles) or ["caller"]
        if set(roles) - set(auth.ROLES):
            violations.append(("roles", f"each one of {', '.join(auth.ROLES)}"))
        if len(request.callers) > 50:
            violations.append(("callers", "at most 50 patterns"))
        for i, pattern in enumerate(request.callers):
            violations += v.caller_violations(f"callers[{i}]", pattern)
            if "," in pattern:
                violations.append((f"callers[{i}]", "must not contain a comma"))
        v.raise_if(violations)
        key_id, key = auth.new_key()
        created = await self._store.create_key(
            key_id, request.name, roles, list(request.callers), auth.digest(key)
        )
        log.info("key_created", key_id=key_id, principal=request.name, roles=",".join(roles))
        info = ledger_pb2.ApiKey(
            id=key_id, name=request.name, roles=roles, callers=request.callers, created=_timestamp(created)
        )
        return ledger_pb2.CreateKeyResponse(key=key, info=info)

    @_database_errors
    async def ListKeys(
        self, request: ledger_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.ListKeysResponse:
        return ledger_pb2.ListKeysResponse(keys=[_api_key(row) for row in await self._store.keys()])

    @_database_errors
    async def RevokeKey(
        self, request: ledger_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.RevokeKeyResponse:
        v.raise_if(v.key_violations(request))
        revoked = await self._store.revoke_key(request.id)
        log.info("key_revoked", key_id=request.id, revoked=revoked)
        return ledger_pb2.RevokeKeyResponse(revoked=revoked)

    @_database_errors
    async def LookupKey(
        self, request: ledger_pb2.LookupKeyRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.LookupKeyResponse:
        v.raise_if(v.key_violations(request))
        principal = await key_lookup(self._store)(request.id, request.sha256)
        if principal is None:
            return ledger_pb2.LookupKeyResponse(found=False)
        return ledger_pb2.LookupKeyResponse(
            found=True,
            key=ledger_pb2.ApiKey(
                id=principal.key_id,
                name=principal.name,
                roles=sorted(principal.roles),
                callers=principal.callers,
            ),
        )


class LedgerServicer(_Keys, ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, store: LedgerStore, settings: LedgerSettings) -> None:
        self._store = store
        self._settings = settings
        self._snapshots = Snapshots(store)

    @_database_errors
    async def RecordUsage(
        self, request: ledger_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.RecordUsageResponse:
        violations = v.record_usage_violations(request, self._settings.max_batch_records)
        v.raise_if(violations, metadata={"max_batch_records": self._settings.max_batch_records})
        max_future = v.now_us() + int(self._settings.max_future_skew_seconds * 1_000_000)
        for index, record in enumerate(request.records):
            violations += v.record_violations(index, record, max_future)
        v.raise_if(violations)
        started = time.perf_counter()
        result = await self._store.record_usage(request.records, request.sender, request.sender_spool_depth)
        log.debug(
            "usage_recorded",
            inserted=result.inserted,
            duplicates=result.duplicates,
            sender=request.sender,
            sender_spool_depth=request.sender_spool_depth,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return ledger_pb2.RecordUsageResponse(inserted=result.inserted, duplicates=result.duplicates)

    @_database_errors
    async def GetStats(
        self, request: ledger_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.GetStatsResponse:
        window, violations = v.resolve_window(request.window, v.now_us())
        violations += v.group_by_violations(request.group_by)
        caller = auth.scope_caller(request.caller)
        violations += v.caller_violations("caller", caller)
        v.raise_if(violations)
        assert window is not None
        dims = list(request.group_by) or list(v.DEFAULT_GROUP_BY)
        result = await self._store.stats(window, dims, caller or None)
        return ledger_pb2.GetStatsResponse(
            totals=st.totals_pb(result.totals),
            breakdowns=[st.breakdown_pb(dim, groups) for dim, groups in result.breakdowns],
            window=ledger_pb2.TimeWindow(
                since=_timestamp(result.window.since_us), until=_timestamp(result.window.until_us)
            ),
            spool_depth=result.spool_depth,
        )

    @_database_errors_stream
    async def WatchSpend(
        self, request: ledger_pb2.WatchSpendRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ledger_pb2.WatchSpendResponse]:
        v.raise_if(v.watch_violations(request))
        interval = request.interval_seconds or v.DEFAULT_WATCH_INTERVAL
        caller = auth.scope_caller(request.caller) or None
        while True:
            now = v.now_us()
            if request.last_minutes:
                window = v.Window(now - request.last_minutes * 60_000_000, now)
            else:
                day = datetime.fromtimestamp(now / 1_000_000, UTC).replace(
                    hour=0, minute=0, second=0, microsecond=0
                )
                window = v.Window(int(day.timestamp()) * 1_000_000, now)
            totals = await self._snapshots.totals(window, caller, request.last_minutes)
            yield ledger_pb2.WatchSpendResponse(time=_timestamp(now), totals=st.totals_pb(totals))
            if await self._store.changes.wait(interval):
                await asyncio.sleep(min(_WATCH_COALESCE_SECONDS, interval))

    @_database_errors_stream
    async def ExportRecords(
        self, request: ledger_pb2.ExportRecordsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ledger_pb2.ExportRecordsResponse]:
        window, violations = v.resolve_window(request.window, v.now_us())
        violations += v.export_violations(request)
        after, token_violations = v.page_token(request.page_token)
        v.raise_if(violations + token_violations)
        assert window is not None
        as_csv = request.format == ledger_pb2.EXPORT_FORMAT_CSV
        line = conv.csv_line if as_csv else conv.json_line
        limit = self._settings.export_chunk_bytes
        # A page that goes on from a token continues the same file: no second header.
        buffer: list[str] = [conv.csv_header()] if as_csv and after is None else []
        size = sum(len(part) for part in buffer)
        exported, next_token = 0, ""
        async with contextlib.aclosing(self._store.export(window, after=after)) as rows:
            async for row in rows:
                text = line(row)
                buffer.append(text)
                size += len(text)
                exported += 1
                if exported == self._settings.export_max_records:
                    next_token = v.encode_page_token(tuple(row[c] for c in EXPORT_KEY))
                    break
                if size >= limit:
                    yield ledger_pb2.ExportRecordsResponse(chunk="".join(buffer).encode())
                    buffer, size = [], 0
        if buffer or next_token:
            yield ledger_pb2.ExportRecordsResponse(chunk="".join(buffer).encode(), next_page_token=next_token)
        log.info(
            "records_exported", records=exported, format="csv" if as_csv else "jsonl", more=bool(next_token)
        )

    def _require_admin(self, context: grpc.aio.ServicerContext) -> None:
        expected = self._settings.admin_token
        if expected is None:
            return
        given = metadata.get(context.invocation_metadata(), ADMIN_TOKEN)
        if not given:
            raise PermissionDenied(
                f"SetBudget is an admin operation: send metadata {ADMIN_TOKEN}", reason="ADMIN_TOKEN_MISSING"
            )
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise PermissionDenied(
                f"the {ADMIN_TOKEN} metadata is not the admin token", reason="ADMIN_TOKEN_INVALID"
            )

    @_database_errors
    async def SetBudget(
        self, request: ledger_pb2.SetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.SetBudgetResponse:
        self._require_admin(context)
        v.raise_if(v.budget_violations(request.budget))
        b = request.budget
        soft, hard = conv.to_nusd(b.soft_limit_usd), conv.to_nusd(b.hard_limit_usd)
        await self._store.set_budget(b.caller, b.period, soft, hard)
        log.info(
            "budget_set",
            caller=b.caller,
            period=ledger_pb2.BudgetPeriod.Name(b.period),
            soft_nusd=soft,
            hard_nusd=hard,
        )
        return ledger_pb2.SetBudgetResponse(
            budget=ledger_pb2.Budget(
                caller=b.caller,
                period=b.period,
                soft_limit_usd=conv.to_usd(soft),
                hard_limit_usd=conv.to_usd(hard),
            )
        )

    @_database_errors
    async def GetBudgets(
        self, request: ledger_pb2.GetBudgetsRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.GetBudgetsResponse:
        caller = auth.scope_caller(request.caller)
        v.raise_if(v.caller_violations("caller", caller))
        rows = await self._store.budgets(caller or None)
        return ledger_pb2.GetBudgetsResponse(budgets=[_budget_status(row) for row in rows])

    @_database_errors
    async def CheckBudget(
        self, request: ledger_pb2.CheckBudgetRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.CheckBudgetResponse:
        caller = auth.scope_caller(request.caller)
        v.raise_if(v.caller_violations("caller", caller))
        # A caller with no budget of its own (or not seen yet) is still bound by the global ones.
        rows = await self._store.budgets(caller)
        state = max((row.state for row in rows), default=ledger_pb2.BUDGET_STATE_OK)
        return ledger_pb2.CheckBudgetResponse(
            state=state,  # type: ignore[arg-type]
            budgets=[_budget_status(row) for row in rows],
        )

    @_database_errors
    async def ReserveBudget(
        self, request: ledger_pb2.ReserveBudgetRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.ReserveBudgetResponse:
        v.raise_if(v.reservation_violations(request))
        ttl = request.ttl_seconds or 300.0
        reservation, rows = await self._store.reserve(
            request.caller,
            request.request_id,
            request.run_id,
            conv.to_nusd(request.amount_usd),
            int(ttl * 1e6),
        )
        return ledger_pb2.ReserveBudgetResponse(
            reservation_id=reservation, budgets=[_budget_status(row) for row in rows]
        )

    @_database_errors
    async def RecordFeedback(
        self, request: ledger_pb2.RecordFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.RecordFeedbackResponse:
        principal = auth.current()
        requested = request.caller or metadata.get(context.invocation_metadata(), metadata.CALLER)
        caller = auth.scope_caller(requested) or (principal.name if principal else "")
        v.raise_if(v.feedback_violations(request, caller))
        run_id = await self._store.record_feedback(
            caller, request.request_id, request.run_id, request.verdict, request.needed_tier, request.note
        )
        log.info("feedback_recorded", verdict=ledger_pb2.FeedbackVerdict.Name(request.verdict), run_id=run_id)
        return ledger_pb2.RecordFeedbackResponse(stored=True, run_id=run_id)

    @_database_errors
    async def GetFeedbackStats(
        self, request: ledger_pb2.GetFeedbackStatsRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.GetFeedbackStatsResponse:
        window, violations = v.resolve_window(request.window, v.now_us())
        violations += v.group_by_violations(request.group_by, ledger_pb2.FeedbackGroupBy)
        caller = auth.scope_caller(request.caller)
        violations += v.caller_violations("caller", caller)
        v.raise_if(violations)
        assert window is not None
        report = outcomes.Report(list(request.group_by) or list(v.DEFAULT_FEEDBACK_GROUP_BY))
        async for batch in self._store.outcome_runs(window, caller or None):
            report.add(batch)
        return ledger_pb2.GetFeedbackStatsResponse(
            totals=report.totals_pb(),
            breakdowns=report.breakdowns_pb(),
            window=ledger_pb2.TimeWindow(
                since=_timestamp(window.since_us), until=_timestamp(window.until_us)
            ),
        )

    @_database_errors_stream
    async def ExportOutcomes(
        self, request: ledger_pb2.ExportOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ledger_pb2.ExportOutcomesResponse]:
        window, violations = v.resolve_window(request.window, v.now_us())
        violations += v.caller_violations("caller", request.caller)
        v.raise_if(violations)
        assert window is not None
        exported = 0
        async for batch in self._store.outcome_runs(
            window, request.caller or None, request.with_evidence_only
        ):
            exported += len(batch)
            yield ledger_pb2.ExportOutcomesResponse(outcomes=[run.to_pb() for run in batch])
        log.info("outcomes_exported", runs=exported)


async def create_server(
    settings: LedgerSettings, store: LedgerStore | None = None
) -> service_server.RunningServer:
    """Start the server; health turns SERVING once the database is migrated and reachable.

    `store` lets tests pass one opened with a fake clock; the server closes it when it stops.
    """
    if store is None:
        store = await LedgerStore.open(settings)
    try:
        gate = auth.gate_for(
            "ledger",
            settings,
            RULES,
            auth.KeyCache(key_lookup(store), ttl=settings.key_cache_seconds, miss_ttl=1.0),
        )
    except BaseException:
        await store.close()
        raise
    server = service_server.new_server(gate=gate)
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(LedgerServicer(store, settings), server)
    try:
        running = await service_server.start(
            server,
            settings.address,
            [SERVICE_NAME],
            tls.server_credentials(
                settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
            ),
        )
    except BaseException:
        await store.close()
        raise
    running.closers.append(store.close)
    if settings.retention_interval_seconds and (
        settings.retention_raw_days or settings.retention_rollup_days
    ):
        retention = asyncio.create_task(store.run_retention(settings.retention_interval_seconds))

        async def stop_retention() -> None:
            retention.cancel()
            await asyncio.gather(retention, return_exceptions=True)

        running.closers.append(stop_retention)
    log.info("ledger_ready", dialect=store.dialect, port=running.port)
    await running.set_serving()
    return running


def main() -> None:
    service_server.run_service("ledger", LedgerSettings(), create_server)


if __name__ == "__main__":
    main()
