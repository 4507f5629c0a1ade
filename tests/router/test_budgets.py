"""Budgets kept by a real ledger (in process, SQLite): the router shifts tiers near a soft limit and
refuses over a hard one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from ledger_svc.server import create_server as create_ledger
from ledger_svc.settings import LedgerSettings
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.budgets import BudgetGate
from router_svc.server import create_server as create_router
from tests.doubles import RecordingSink
from tests.rich_status import details
from tests.router.conftest import router_settings

# The heuristic scores this in the moderate band: a soft limit's threshold shift sends it to SIMPLE.
MODERATE_PROMPT = "Write a friendly two-paragraph email inviting the team to a Friday lunch."


@pytest.fixture
async def stubs(
    classifier_address: str, simulator_url: str, tmp_path: Path, recording_sink: RecordingSink
) -> AsyncIterator[tuple[router_pb2_grpc.RouterServiceAsyncStub, ledger_pb2_grpc.LedgerServiceAsyncStub]]:
    ledger = await create_ledger(
        LedgerSettings(port=0, database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    )
    ledger_address = f"127.0.0.1:{ledger.port}"
    router = await create_router(
        router_settings(
            classifier_address,
            simulator_url,
            tmp_path,
            ledger_address=ledger_address,
            budgets_enabled=True,
            budget_check_ttl_seconds=0.01,
        ),
        usage_sink=recording_sink,
    )
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as router_channel,
        grpc.aio.insecure_channel(ledger_address) as ledger_channel,
    ):
        yield (
            router_pb2_grpc.RouterServiceStub(router_channel),
            ledger_pb2_grpc.LedgerServiceStub(ledger_channel),
        )
    await router.stop(0)
    await ledger.stop(1)  # let a budget check in flight finish rather than cancel it mid-query


def route(caller: str) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=MODERATE_PROMPT)], caller=caller
    )


async def spend(ledger: ledger_pb2_grpc.LedgerServiceAsyncStub, caller: str, usd: float) -> None:
    record = ledger_pb2.UsageRecord(
        request_id=f"spent-{caller}", attempt=1, caller=caller, model="gpt-5-mini", final=True, price_known=True,
        outcome=common_pb2.ATTEMPT_OUTCOME_OK, usage=common_pb2.Usage(cost_usd=usd, input_tokens=1, output_tokens=1),
    )  # fmt: skip
    record.time.GetCurrentTime()
    await ledger.RecordUsage(ledger_pb2.RecordUsageRequest(records=[record]))


async def set_budget(ledger, caller: str, soft: float, hard: float) -> None:  # type: ignore[no-untyped-def]
    await ledger.SetBudget(
        ledger_pb2.SetBudgetRequest(
            budget=ledger_pb2.Budget(
                caller=caller, period=ledger_pb2.BUDGET_PERIOD_DAILY, soft_limit_usd=soft, hard_limit_usd=hard
            )
        )
    )


async def test_soft_limit_shifts_to_a_cheaper_tier_and_hard_limit_refuses(
    stubs: tuple[router_pb2_grpc.RouterServiceAsyncStub, ledger_pb2_grpc.LedgerServiceAsyncStub],
) -> None:
    router, ledger = stubs
    unlimited = await router.Route(route("team-free"))
    assert unlimited.tier == common_pb2.TIER_MODERATE and "budget_soft_limit" not in unlimited.warnings

    await set_budget(ledger, "team-a", soft=1.0, hard=2.0)
    await spend(ledger, "team-a", 1.5)
    await router.Route(route("team-a"))  # the first check of a caller primes its cached state
    shifted = await router.Route(route("team-a"))
    assert "budget_soft_limit" in shifted.warnings
    assert shifted.tier == common_pb2.TIER_SIMPLE and shifted.decision.score == unlimited.decision.score

    await set_budget(ledger, "team-a", soft=1.0, hard=1.2)
    refused = None
    for _ in range(20):  # the router's cached budget state refreshes within its TTL
        try:
            await router.Route(route("team-a"))
        except grpc.aio.AioRpcError as error:
            refused = details(error)
            break
    assert refused is not None and refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.reason == "BUDGET_EXCEEDED"
    assert refused.metadata["caller"] == "team-a" and refused.metadata["period"] == "daily"
    assert float(refused.metadata["hard_limit_usd"]) == 1.2 and float(refused.metadata["spent_usd"]) >= 1.5
    # Other callers are not affected.
    assert (await router.Route(route("team-free"))).content


async def test_warm_up_takes_the_most_used_models_from_the_ledger(
    classifier_address: str, simulator_url: str, tmp_path: Path, recording_sink: RecordingSink
) -> None:
    ledger = await create_ledger(
        LedgerSettings(port=0, database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ledger.port}") as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        for n in range(3):  # yesterday's traffic went to a model no tier would pick for "ping"
            record = ledger_pb2.UsageRecord(
                request_id=f"past-{n}", attempt=1, caller="app", model="claude-opus-4-5", final=True,
                price_known=True, outcome=common_pb2.ATTEMPT_OUTCOME_OK,
                usage=common_pb2.Usage(cost_usd=0.01, input_tokens=10, output_tokens=10),
            )  # fmt: skip
            record.time.GetCurrentTime()
            await stub.RecordUsage(ledger_pb2.RecordUsageRequest(records=[record]))
    settings = router_settings(
        classifier_address, simulator_url, tmp_path, ledger_address=f"127.0.0.1:{ledger.port}", warm_up=True
    )
    router = await create_router(settings, usage_sink=recording_sink)
    await router.stop(0)
    await ledger.stop(0)
    warmed = {r.model for r in recording_sink.records}
    # The most used model (never the cheapest of its tier) is warmed, beside each tier's cheapest.
    assert "claude-opus-4-5" in warmed and len(warmed) > 1
    assert all(r.caller == "llmroute-warmup" for r in recording_sink.records)


class CountingLedger:
    """CheckBudget answers from a table and counts the calls."""

    def __init__(self, budgets: dict[str, list[ledger_pb2.BudgetStatus]]) -> None:
        self.budgets = budgets
        self.calls = 0

    async def CheckBudget(
        self, request: ledger_pb2.CheckBudgetRequest, timeout: float
    ) -> ledger_pb2.CheckBudgetResponse:
        self.calls += 1
        statuses = self.budgets.get(request.caller, [])
        return ledger_pb2.CheckBudgetResponse(state=ledger_pb2.BUDGET_STATE_OK, budgets=statuses)


async def test_spending_refreshes_a_budgeted_callers_state_soon_and_an_unbudgeted_ones_on_the_ttl() -> None:
    now = [100.0]
    ledger = CountingLedger({"capped": [ledger_pb2.BudgetStatus(state=ledger_pb2.BUDGET_STATE_OK)]})
    gate = BudgetGate(
        ledger,  # type: ignore[arg-type]  # a double that answers CheckBudget only
        ttl_seconds=2.0,
        timeout_seconds=1.0,
        clock=lambda: now[0],
        after_spend_seconds=0.25,
    )
    for caller in ("capped", "free"):
        await gate.check(caller)
    assert ledger.calls == 2

    # Right after spending, nothing is asked: the spend has not reached the ledger yet.
    for caller in ("capped", "free"):
        gate.note_spend(caller)
        await gate.check(caller)
    await asyncio.sleep(0)
    assert ledger.calls == 2

    # Once the spend can have arrived, only the budgeted caller's state is refreshed.
    now[0] += 0.3
    for caller in ("capped", "free"):
        gate.note_spend(caller)  # already due: spending again does not postpone the refresh
        await gate.check(caller)
    await asyncio.sleep(0)
    assert ledger.calls == 3

    # The unbudgeted caller is refreshed on its TTL (a new budget is seen within one TTL).
    now[0] += 2.0
    await gate.check("free")
    await asyncio.sleep(0)
    assert ledger.calls == 5 - 1  # "free" refreshed; "capped" not asked here


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_an_unreachable_ledger_is_said_or_refused_never_silent(
    mode: str, classifier_address: str, simulator_url: str, tmp_path: Path, recording_sink: RecordingSink
) -> None:
    router = await create_router(
        router_settings(
            classifier_address,
            simulator_url,
            tmp_path,
            ledger_address="127.0.0.1:1",
            budgets_enabled=True,
            budget_fail_mode=mode,
        ),
        usage_sink=recording_sink,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            if mode == "open":
                response = await stub.Route(route("team-a"))
                assert response.content and "budget_check_unavailable" in response.warnings
            else:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.Route(route("team-a"))
                found = details(raised.value)
                assert (
                    found.code == grpc.StatusCode.UNAVAILABLE and found.reason == "BUDGET_CHECK_UNAVAILABLE"
                )
                assert recording_sink.records == []  # nothing was paid for
    finally:
        await router.stop(0)
