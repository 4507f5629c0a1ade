"""The LedgerService gRPC server: usage, stats, watching, exports and feedback here; keys and budgets in
`key_rpcs` and `budget_rpcs`, mixed into `LedgerServicer`; `create_server` and `main`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import structlog

from ledger_svc import outcomes
from ledger_svc import records as conv
from ledger_svc import stats as st
from ledger_svc import validation as v
from ledger_svc.budget_rpcs import BudgetRPCs
from ledger_svc.key_rpcs import KeyRPCs, key_lookup
from ledger_svc.records import timestamp_pb
from ledger_svc.rpc_errors import database_errors, database_errors_stream
from ledger_svc.settings import LedgerSettings
from ledger_svc.snapshots import Snapshots
from ledger_svc.store import EXPORT_KEY, LedgerStore
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from service_kit import auth, metadata, tls
from service_kit import server as service_server

log = structlog.get_logger()


SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name

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


class LedgerServicer(KeyRPCs, BudgetRPCs, ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, store: LedgerStore, settings: LedgerSettings) -> None:
        self._store = store
        self._settings = settings
        self._snapshots = Snapshots(store)

    @database_errors
    async def RecordUsage(
        self,
        request: ledger_pb2.RecordUsageRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.RecordUsageRequest, ledger_pb2.RecordUsageResponse],
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

    @database_errors
    async def GetStats(
        self,
        request: ledger_pb2.GetStatsRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.GetStatsRequest, ledger_pb2.GetStatsResponse],
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
                since=timestamp_pb(result.window.since_us), until=timestamp_pb(result.window.until_us)
            ),
            spool_depth=result.spool_depth,
        )

    @database_errors_stream
    async def WatchSpend(
        self,
        request: ledger_pb2.WatchSpendRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.WatchSpendRequest, ledger_pb2.WatchSpendResponse],
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
            yield ledger_pb2.WatchSpendResponse(time=timestamp_pb(now), totals=st.totals_pb(totals))
            if await self._store.changes.wait(interval):
                await asyncio.sleep(min(_WATCH_COALESCE_SECONDS, interval))

    @database_errors_stream
    async def ExportRecords(
        self,
        request: ledger_pb2.ExportRecordsRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.ExportRecordsRequest, ledger_pb2.ExportRecordsResponse],
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

    @database_errors
    async def RecordFeedback(
        self,
        request: ledger_pb2.RecordFeedbackRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.RecordFeedbackRequest, ledger_pb2.RecordFeedbackResponse
        ],
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

    @database_errors
    async def GetFeedbackStats(
        self,
        request: ledger_pb2.GetFeedbackStatsRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.GetFeedbackStatsRequest, ledger_pb2.GetFeedbackStatsResponse
        ],
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
                since=timestamp_pb(window.since_us), until=timestamp_pb(window.until_us)
            ),
        )

    @database_errors_stream
    async def ExportOutcomes(
        self,
        request: ledger_pb2.ExportOutcomesRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.ExportOutcomesRequest, ledger_pb2.ExportOutcomesResponse
        ],
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
