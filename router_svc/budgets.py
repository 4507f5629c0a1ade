"""Budget enforcement on the router: the ledger keeps budgets and spend; the router asks it, cached.

A caller's budget state is fetched with CheckBudget and kept for `ttl` seconds; a stale state is used
while a refresh runs in the background, so the check is off the request's critical path except for a
caller's very first request. When the ledger cannot answer, the router follows
`ROUTER_BUDGET_FAIL_MODE`: `open` (the default) routes on the last state it knew (none: no limit)
and says so on the response (`budget_check_unavailable`), since refusing all traffic because
accounting is down would turn a ledger outage into a product outage; `closed` refuses a caller whose
state it has never been able to read (UNAVAILABLE, `BUDGET_CHECK_UNAVAILABLE`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import structlog

from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute_client.errors import from_rpc_error
from service_kit.errors import Reason, ResourceExhausted, Unavailable

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    state: int
    statuses: tuple[ledger_pb2.BudgetStatus, ...] = ()
    # False when the last CheckBudget failed: the state is the last one known (or none at all).
    current: bool = True


UNKNOWN = BudgetVerdict(ledger_pb2.BUDGET_STATE_UNSPECIFIED, current=False)
_MAX_CALLERS = 100_000


class BudgetGate:
    def __init__(
        self,
        stub: ledger_pb2_grpc.LedgerServiceAsyncStub,
        ttl_seconds: float,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        after_spend_seconds: float = 0.25,
        hold_timeout_seconds: float = 3.0,
    ) -> None:
        self._stub = stub
        self._ttl = ttl_seconds
        self._after_spend = min(after_spend_seconds, ttl_seconds)
        self._timeout = timeout_seconds
        self._hold_timeout = hold_timeout_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, BudgetVerdict]] = {}
        self._refreshing: dict[str, asyncio.Task[BudgetVerdict]] = {}

    async def check(self, caller: str) -> BudgetVerdict:
        """The caller's budget state; raises ResourceExhausted over a hard limit."""
        cached = self._cache.get(caller)
        if cached is None:
            verdict = await self._refresh(caller)
        else:
            expires, verdict = cached
            if expires <= self._clock() and caller not in self._refreshing:
                task = asyncio.create_task(self._refresh(caller))
                self._refreshing[caller] = task
                task.add_done_callback(lambda _: self._refreshing.pop(caller, None))
        over = next((s for s in verdict.statuses if s.state == ledger_pb2.BUDGET_STATE_HARD_LIMIT), None)
        if verdict.state == ledger_pb2.BUDGET_STATE_HARD_LIMIT and over is not None:
            period = ledger_pb2.BudgetPeriod.Name(over.budget.period).removeprefix("BUDGET_PERIOD_").lower()
            scope = over.budget.caller or "global"
            raise ResourceExhausted(
                f"{scope} {period} budget of ${over.budget.hard_limit_usd:.2f} is spent (${over.spent_usd:.4f})",
                reason=Reason.BUDGET_EXCEEDED,
                metadata={
                    "caller": over.budget.caller,
                    "scope": scope,
                    "period": period,
                    "hard_limit_usd": over.budget.hard_limit_usd,
                    "spent_usd": f"{over.spent_usd:.6f}",
                },
            )
        return verdict

    async def hold(
        self, caller: str, request_id: str, run_id: str, amount_usd: float, fail_closed: bool
    ) -> None:
        """Before a provider call, reserve its estimated cost against the caller's hard budgets (and
        the global ones) in the ledger, atomically across replicas: concurrent calls cannot all pass
        a budget that has room for one. The ledger releases the hold when the run's records arrive.
        A caller no hard budget applies to is not asked about (its state is cached from `check`).
        Refused: ResourceExhausted (BUDGET_EXCEEDED, the budget in the details)."""
        cached = self._cache.get(caller)
        if cached is None or not any(s.budget.hard_limit_usd > 0 for s in cached[1].statuses):
            return
        request = ledger_pb2.ReserveBudgetRequest(
            caller=caller, request_id=request_id, run_id=run_id, amount_usd=amount_usd
        )
        try:
            await self._stub.ReserveBudget(request, timeout=self._hold_timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise ResourceExhausted(
                    error.details() or "budget exceeded",
                    reason=Reason.BUDGET_EXCEEDED,
                    metadata=from_rpc_error(error).metadata,
                ) from None
            log.warning("budget_hold_unavailable", code=error.code().name)
            if fail_closed:
                raise Unavailable(
                    "the caller's budget cannot be held now (the ledger is unreachable) and this router "
                    "fails closed",
                    reason=Reason.BUDGET_CHECK_UNAVAILABLE,
                ) from None
        self.note_spend(caller)

    async def close(self) -> None:
        """Cancel the background refreshes still in flight (when the router stops)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def note_spend(self, caller: str) -> None:
        """After spending, a caller under a budget may have crossed a limit: its state is refreshed
        `after_spend_seconds` later, once the reporter has delivered the spend to the ledger (it
        sends every 0.2 s), instead of one CheckBudget per request. A caller no budget applies to
        keeps its TTL: spending cannot change its state (a new budget is seen within one TTL)."""
        cached = self._cache.get(caller)
        if cached is None or not cached[1].statuses:
            return
        soon = self._clock() + self._after_spend
        if cached[0] > soon:
            self._cache[caller] = (soon, cached[1])

    async def _refresh(self, caller: str) -> BudgetVerdict:
        try:
            reply = await self._stub.CheckBudget(
                ledger_pb2.CheckBudgetRequest(caller=caller), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            log.warning("budget_check_unavailable", code=error.code().name)
            known = self._cache.get(caller, (0.0, UNKNOWN))[1]
            verdict = BudgetVerdict(known.state, known.statuses, current=False)
            self._cache[caller] = (self._clock() + min(self._ttl, 1.0), verdict)  # retried soon
            return verdict
        verdict = BudgetVerdict(reply.state, tuple(reply.budgets))
        if len(self._cache) >= _MAX_CALLERS and caller not in self._cache:
            del self._cache[next(iter(self._cache))]  # bounded: the oldest caller's state goes
        self._cache[caller] = (self._clock() + self._ttl, verdict)
        return verdict
