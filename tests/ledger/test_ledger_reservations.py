"""Budget reservations in the ledger: atomic across replicas, released by the spend, lapsing when
their holder is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from ledger_svc.settings import LedgerSettings
from llmroute.ledger.v1 import ledger_pb2 as L
from tests.ledger.conftest import Backend, Clock, start_ledger, stop_ledger
from tests.ledger.ledger_helpers import record
from tests.rich_status import details


async def test_reservations_are_atomic_across_ledger_replicas_and_released_by_the_spend(
    pg_backend: Backend, midday: Clock
) -> None:
    settings = pg_backend.settings()
    clock = midday  # the daily budget's period holds the spend just before, at midnight too
    replicas = [await start_ledger(settings, clock), await start_ledger(settings, clock)]
    try:
        a, b = (r.stub for r in replicas)
        await a.SetBudget(
            L.SetBudgetRequest(
                budget=L.Budget(caller="team", period=L.BUDGET_PERIOD_DAILY, hard_limit_usd=1.0)
            )
        )
        await a.RecordUsage(
            L.RecordUsageRequest(
                records=[record("spent", 1, at=clock() - 1000, caller="team", cost=0.7, final=True)]
            )
        )

        async def hold(i: int) -> bool:
            stub = (a, b)[i % 2]
            try:
                await stub.ReserveBudget(
                    L.ReserveBudgetRequest(caller="team", request_id=f"r{i}", run_id="x", amount_usd=0.05)
                )
            except grpc.aio.AioRpcError as error:
                found = details(error)
                assert found.code == grpc.StatusCode.RESOURCE_EXHAUSTED and found.reason == "BUDGET_EXCEEDED"
                assert found.metadata["scope"] == "team" and float(found.metadata["hard_limit_usd"]) == 1.0
                return False
            return True

        granted = sum(await asyncio.gather(*(hold(i) for i in range(40))))
        assert granted == 6  # 0.7 spent + 6 x 0.05 = 1.0: exactly as many as fit, across both replicas
        [status] = (await b.GetBudgets(L.GetBudgetsRequest(caller="team"))).budgets
        assert status.reserved_usd == pytest.approx(0.3) and status.spent_usd == pytest.approx(0.7)
        # A run's records release its hold in the same transaction as they add its spend.
        released = [i for i in range(40) if i % 2 == 0][:1]
        await a.RecordUsage(
            L.RecordUsageRequest(
                records=[
                    record(f"r{i}", 1, at=clock() - 500, caller="team", run_id="x", cost=0.01, final=True)
                    for i in released
                ]
            )
        )
        [status] = (await b.GetBudgets(L.GetBudgetsRequest(caller="team"))).budgets
        assert status.spent_usd == pytest.approx(0.71)
        assert status.reserved_usd in (
            pytest.approx(0.3),
            pytest.approx(0.25),
        )  # r0 may not have been granted
    finally:
        for replica in replicas:
            await stop_ledger(replica)


async def test_an_expired_hold_no_longer_counts(tmp_path: Path, midday: Clock) -> None:
    clock = midday
    ledger = await start_ledger(
        LedgerSettings(port=0, database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"), clock
    )
    try:
        stub = ledger.stub
        await stub.SetBudget(
            L.SetBudgetRequest(budget=L.Budget(caller="", period=L.BUDGET_PERIOD_DAILY, hard_limit_usd=0.1))
        )
        await stub.ReserveBudget(
            L.ReserveBudgetRequest(caller="a", request_id="q", amount_usd=0.1, ttl_seconds=0.2)
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # the global budget is held in full
            await stub.ReserveBudget(L.ReserveBudgetRequest(caller="b", request_id="q2", amount_usd=0.01))
        found = details(raised.value)
        assert (found.code, found.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
        clock.advance(0.3)  # the holder crashed: its hold lapses
        await stub.ReserveBudget(L.ReserveBudgetRequest(caller="b", request_id="q2", amount_usd=0.01))
    finally:
        await stop_ledger(ledger)
