"""Budgets that hold under concurrency: each attempt's estimated cost is reserved in the ledger before
the provider is called, so concurrent requests, on any router replica, cannot all pass a budget with
room for a few."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import grpc

from ledger_client import LedgerReporter
from ledger_svc.settings import LedgerSettings
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2 as L
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.server import create_server
from tests.ledger.conftest import start_ledger, stop_ledger
from tests.rich_status import details
from tests.router.conftest import router_settings
from tests.waiting import eventually

PROMPT = "Summarize in one line: the quarterly review moved to Thursday."


async def test_concurrent_requests_over_two_routers_overspend_by_at_most_one_estimate(
    tmp_path: Path, classifier_address: str, simulator_url: str
) -> None:
    ledger = await start_ledger(
        LedgerSettings(port=0, database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    )
    address = f"127.0.0.1:{ledger.running.port}"
    routers, reporters = [], []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            reporter = LedgerReporter(address, tmp_path / name / "spool.db", flush_interval=0.01)
            settings = router_settings(
                classifier_address,
                simulator_url,
                tmp_path / name,
                ledger_address=address,
                budgets_enabled=True,
                budget_check_ttl_seconds=0.2,  # a new budget is seen within one TTL
            )
            routers.append(await create_server(settings, usage_sink=reporter))
            reporters.append(reporter)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{r.port}") for r in routers]
        stubs = [router_pb2_grpc.RouterServiceStub(c) for c in channels]
        request = router_pb2.RouteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=PROMPT)],
            caller="team",
            options=router_pb2.RouteOptions(max_output_tokens=60, force_tier=common_pb2.TIER_COMPLEX),
        )
        probe = await stubs[0].Route(request)  # what one request costs, and what it reserves
        [estimate] = [c.estimated_cost_usd for c in probe.candidates if c.model == probe.model]
        assert probe.usage.cost_usd <= estimate  # with max_output_tokens the estimate bounds the cost
        assert await reporters[0].flush(10)
        spent = (await ledger.stub.GetStats(L.GetStatsRequest(caller="team"))).totals.cost_usd
        hard = spent + 10.5 * estimate  # room for ten more, not eleven
        await ledger.stub.SetBudget(
            L.SetBudgetRequest(
                budget=L.Budget(caller="team", period=L.BUDGET_PERIOD_DAILY, hard_limit_usd=hard)
            )
        )
        # Each router learns of the new budget within its TTL, on a request of the caller (its cache is
        # per caller): a router holds a request's cost in the ledger once it knows the budget.
        held: set[str] = set()
        reserve = ledger.store.reserve

        async def recording_reserve(caller: str, request_id: str, *args: Any, **kwargs: Any) -> Any:
            held.add(request_id)
            return await reserve(caller, request_id, *args, **kwargs)

        ledger.store.reserve = recording_reserve  # type: ignore[method-assign]
        probes = itertools.count()
        for stub in stubs:

            async def knows_the_budget(stub: router_pb2_grpc.RouterServiceAsyncStub = stub) -> bool:
                probe = f"probe-{next(probes)}"
                await stub.Route(
                    router_pb2.RouteRequest(
                        messages=request.messages,
                        caller="team",
                        request_id=probe,
                        options=router_pb2.RouteOptions(
                            max_output_tokens=1, force_tier=common_pb2.TIER_SIMPLE
                        ),
                    )
                )
                return probe in held

            await eventually(knows_the_budget, "the router holding the new budget", interval=0.05)

        async def one(i: int) -> str:
            try:
                await stubs[i % 2].Route(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                found = details(error)
                assert found.code == grpc.StatusCode.RESOURCE_EXHAUSTED and found.reason == "BUDGET_EXCEEDED"
                assert found.metadata["scope"] == "team"
                return "refused"
            return "answered"

        outcomes = await asyncio.gather(*(one(i) for i in range(64)))
        for reporter in reporters:
            assert await reporter.flush(20)
        total = (await ledger.stub.GetStats(L.GetStatsRequest(caller="team"))).totals.cost_usd
        assert total <= hard + estimate  # never over by more than one request's estimate
        # Room for ten and a half estimates: about ten answered (a few more when answers cost less
        # than their estimate and their holds were released early), every other one refused.
        answered = outcomes.count("answered")
        assert 10 <= answered <= int(10.5 * estimate / probe.usage.cost_usd) + 1, (answered, outcomes)
        for channel in channels:
            await channel.close()
    finally:
        for router in routers:
            await router.stop(0)
        await stop_ledger(ledger)
