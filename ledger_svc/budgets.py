"""Budgets: limits per caller and period, what was spent and what live reservations hold, mixed into
`LedgerStore`.

Spend is read from the hourly rollups; a reservation holds an amount against every hard budget that
applies until the call it was made for settles or it expires.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ledger_svc.db import Engines, insert_for
from ledger_svc.schema import DAY_US, DIM_TOTAL, HOUR_US, budgets, reservations, usage_hourly
from llmroute.ledger.v1 import ledger_pb2
from service_kit.errors import Reason, ResourceExhausted


@dataclass(frozen=True)
class BudgetRow:
    caller: str
    period: int
    soft_nusd: int
    hard_nusd: int
    spent_nusd: int
    reserved_nusd: int = 0

    @property
    def state(self) -> int:
        if self.hard_nusd and self.spent_nusd >= self.hard_nusd:
            return ledger_pb2.BUDGET_STATE_HARD_LIMIT
        if self.soft_nusd and self.spent_nusd >= self.soft_nusd:
            return ledger_pb2.BUDGET_STATE_SOFT_LIMIT
        return ledger_pb2.BUDGET_STATE_OK


class BudgetExceeded(ResourceExhausted):
    """A reservation would pass a hard budget."""

    def __init__(self, budget: BudgetRow, amount_nusd: int) -> None:
        scope = budget.caller or "global"
        period = ledger_pb2.BudgetPeriod.Name(budget.period).removeprefix("BUDGET_PERIOD_").lower()  # type: ignore[arg-type]
        super().__init__(
            f"{scope} {period} budget of ${budget.hard_nusd / 1e9:.2f} cannot hold ${amount_nusd / 1e9:.6f} more "
            f"(spent ${budget.spent_nusd / 1e9:.6f}, held ${budget.reserved_nusd / 1e9:.6f})",
            reason=Reason.BUDGET_EXCEEDED,
            metadata={
                "caller": budget.caller,
                "scope": scope,
                "period": period,
                "hard_limit_usd": budget.hard_nusd / 1e9,
                "spent_usd": f"{budget.spent_nusd / 1e9:.6f}",
                "reserved_usd": f"{budget.reserved_nusd / 1e9:.6f}",
                "requested_usd": f"{amount_nusd / 1e9:.6f}",
            },
        )


def period_bounds(period: int, now: int) -> tuple[int, int]:
    """[start, end) of the current UTC day or month, in µs."""
    moment = datetime.fromtimestamp(now / 1_000_000, UTC)
    if period == ledger_pb2.BUDGET_PERIOD_DAILY:
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return int(start.timestamp()) * 1_000_000, int(start.timestamp()) * 1_000_000 + DAY_US
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return int(start.timestamp()) * 1_000_000, int(end.timestamp()) * 1_000_000


class Budgets:
    """The budget RPCs' side of the store."""

    _engines: Engines
    _now: Callable[[], int]
    _unfinished: set[asyncio.Task[Any]]  # queries that outlive a cancelled RPC; `close` waits for them

    async def set_budget(self, caller: str, period: int, soft_nusd: int, hard_nusd: int) -> None:
        stmt = insert_for(self._engines.dialect, budgets)
        async with self._engines.write.begin() as conn:
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["caller", "period"],
                    set_={
                        "soft_nusd": stmt.excluded.soft_nusd,
                        "hard_nusd": stmt.excluded.hard_nusd,
                        "updated_ts": stmt.excluded.updated_ts,
                    },
                ),
                {
                    "caller": caller,
                    "period": period,
                    "soft_nusd": soft_nusd,
                    "hard_nusd": hard_nusd,
                    "updated_ts": self._now(),
                },
            )

    async def budgets(self, caller: str | None) -> list[BudgetRow]:
        """All budgets (caller None), or the global ones and `caller`'s, with spend in their period.

        The query runs to its end even when the RPC that asked is cancelled (the router's budget
        checks have a short deadline): a query cancelled halfway can leave its pooled connection
        unusable, and the budget pool is small."""
        task = asyncio.create_task(self._budgets(caller))
        self._unfinished.add(task)
        task.add_done_callback(self._unfinished.discard)
        return await asyncio.shield(task)

    async def _budgets(self, caller: str | None) -> list[BudgetRow]:
        now = self._now()
        query = sa.select(budgets).order_by(budgets.c.caller, budgets.c.period)
        if caller is not None:
            query = query.where(budgets.c.caller.in_(["", caller]))
        async with self._engines.budgets.connect() as conn, conn.begin():
            rows = (await conn.execute(query)).all()
            found = []
            for row in rows:
                start, end = period_bounds(row.period, now)
                spent = await self._spent(conn, row.caller, start // HOUR_US, end // HOUR_US)
                held = await self._held(conn, row.caller, now)
                found.append(BudgetRow(row.caller, row.period, row.soft_nusd, row.hard_nusd, spent, held))
        return found

    async def _held(self, conn: Any, caller: str, now: int) -> int:
        """What live reservations hold against a budget of `caller` ('' = global: everyone's)."""
        r = reservations.c
        query = sa.select(sa.func.coalesce(sa.func.sum(r.amount_nusd), 0)).where(r.expires_ts > now)
        if caller:
            query = query.where(r.caller == caller)
        return int(await conn.scalar(query) or 0)

    async def reserve(
        self, caller: str, request_id: str, run_id: str, amount_nusd: int, ttl_us: int
    ) -> tuple[str, list[BudgetRow]]:
        """Hold `amount_nusd` against every hard budget that applies, or raise ResourceExhausted.

        Spent + held + this is checked and the hold written in one write transaction, with the budget
        rows locked on PostgreSQL (SQLite has a single writer): concurrent reservations of one budget
        queue up, on one ledger replica or many, so none can pass it together.
        """
        now = self._now()
        async with self._engines.write.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(budgets)
                    .where(budgets.c.caller.in_(["", caller]))
                    .order_by(budgets.c.caller, budgets.c.period)
                    .with_for_update()
                )
            ).all()
            await conn.execute(reservations.delete().where(reservations.c.expires_ts <= now))
            found = []
            for row in rows:
                start, end = period_bounds(row.period, now)
                spent = await self._spent(conn, row.caller, start // HOUR_US, end // HOUR_US)
                held = await self._held(conn, row.caller, now)
                budget = BudgetRow(row.caller, row.period, row.soft_nusd, row.hard_nusd, spent, held)
                if budget.hard_nusd and spent + held + amount_nusd > budget.hard_nusd:
                    raise BudgetExceeded(budget, amount_nusd)
                found.append(budget)
            reservation = uuid.uuid4().hex
            await conn.execute(
                reservations.insert().values(
                    id=reservation,
                    caller=caller,
                    request_id=request_id,
                    run_id=run_id,
                    amount_nusd=amount_nusd,
                    created_ts=now,
                    expires_ts=now + ttl_us,
                )
            )
        return reservation, [
            BudgetRow(
                b.caller, b.period, b.soft_nusd, b.hard_nusd, b.spent_nusd, b.reserved_nusd + amount_nusd
            )
            for b in found
        ]

    async def _spent(self, conn: Any, caller: str, first_hour: int, end_hour: int) -> int:
        """Provider, classifier and judge spend (nano-dollars) in [first_hour, end_hour), from the rollups.
        A caller's budget does not pay for exploration (the router's choice, capped on its own); the
        global budget, all spend, does."""
        h = usage_hourly.c
        spend = h.cost_nusd + h.classifier_nusd + h.judge_nusd - (h.exploration_nusd if caller else 0)
        value = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(spend), 0)).where(
                h.dim == DIM_TOTAL,
                h.per_caller == (1 if caller else 0),
                h.caller == caller,
                h.hour >= first_hour,
                h.hour < end_hour,
            )
        )
        return int(value or 0)
