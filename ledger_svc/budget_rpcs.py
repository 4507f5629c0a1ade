"""Budgets over gRPC (SetBudget, GetBudgets, CheckBudget, ReserveBudget), mixed into `LedgerServicer`;
the store's side is `ledger_svc.budgets`."""

from __future__ import annotations

import hmac
from typing import Any

import grpc
import structlog

from ledger_svc import records as conv
from ledger_svc import validation as v
from ledger_svc.budgets import BudgetRow
from ledger_svc.rpc_errors import database_errors
from ledger_svc.settings import LedgerSettings
from ledger_svc.store import LedgerStore
from llmroute.ledger.v1 import ledger_pb2
from service_kit import auth, metadata
from service_kit.errors import PermissionDenied, Reason

log = structlog.get_logger()

ADMIN_TOKEN = "x-admin-token"


def budget_status(row: BudgetRow) -> ledger_pb2.BudgetStatus:
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


class BudgetRPCs:
    """The budget RPCs, mixed into the servicer."""

    _store: LedgerStore
    _settings: LedgerSettings

    def _require_admin(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        expected = self._settings.admin_token
        if expected is None:
            return
        given = metadata.get(context.invocation_metadata(), ADMIN_TOKEN)
        if not given:
            raise PermissionDenied(
                f"SetBudget is an admin operation: send metadata {ADMIN_TOKEN}",
                reason=Reason.ADMIN_TOKEN_MISSING,
            )
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise PermissionDenied(
                f"the {ADMIN_TOKEN} metadata is not the admin token", reason=Reason.ADMIN_TOKEN_INVALID
            )

    @database_errors
    async def SetBudget(
        self,
        request: ledger_pb2.SetBudgetRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.SetBudgetRequest, ledger_pb2.SetBudgetResponse],
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

    @database_errors
    async def GetBudgets(
        self,
        request: ledger_pb2.GetBudgetsRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.GetBudgetsRequest, ledger_pb2.GetBudgetsResponse],
    ) -> ledger_pb2.GetBudgetsResponse:
        caller = auth.scope_caller(request.caller)
        v.raise_if(v.caller_violations("caller", caller))
        rows = await self._store.budgets(caller or None)
        return ledger_pb2.GetBudgetsResponse(budgets=[budget_status(row) for row in rows])

    @database_errors
    async def CheckBudget(
        self,
        request: ledger_pb2.CheckBudgetRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.CheckBudgetRequest, ledger_pb2.CheckBudgetResponse],
    ) -> ledger_pb2.CheckBudgetResponse:
        caller = auth.scope_caller(request.caller)
        v.raise_if(v.caller_violations("caller", caller))
        # A caller with no budget of its own (or not seen yet) is still bound by the global ones.
        rows = await self._store.budgets(caller)
        state = max((row.state for row in rows), default=ledger_pb2.BUDGET_STATE_OK)
        return ledger_pb2.CheckBudgetResponse(
            state=state,  # type: ignore[arg-type]
            budgets=[budget_status(row) for row in rows],
        )

    @database_errors
    async def ReserveBudget(
        self,
        request: ledger_pb2.ReserveBudgetRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.ReserveBudgetRequest, ledger_pb2.ReserveBudgetResponse],
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
            reservation_id=reservation, budgets=[budget_status(row) for row in rows]
        )
