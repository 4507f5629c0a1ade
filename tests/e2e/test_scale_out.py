"""Two routers and two ledgers as separate processes, on one PostgreSQL and one Redis (those of the
development and CI machines), a client spreading calls over both routers with gRPC's round_robin."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from devstack.stack import Ports, Stack
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from tests.ledger.conftest import PG_SQLALCHEMY_URL, PG_URL
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

PROMPT = "Summarize in one line: the quarterly review moved to Thursday."


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import asyncio

    import asyncpg

    state_dir = tmp_path_factory.mktemp("scale")
    schema = f"ledger_scale_{uuid.uuid4().hex[:10]}"
    env = {
        "SIMULATOR_LATENCY_SCALE": "0",
        "ROUTER_SIMULATOR": "always",
        "LEDGER_DATABASE_URL": PG_SQLALCHEMY_URL,
        "LEDGER_DATABASE_SCHEMA": schema,
        "ROUTER_REDIS_URL": "redis://127.0.0.1:6379/0",
        "ROUTER_REDIS_PREFIX": f"scale-{uuid.uuid4().hex[:8]}:",
        "ROUTER_COOLDOWN_AFTER_FAILURES": "2",
        "ROUTER_WARM_UP": "false",
    }
    try:
        with Stack(state_dir=state_dir, ports=Ports.free(), extra_env=env) as stack:
            stack.start()
            ledger_2 = stack.start_replica("ledger", "ledger-2", {})
            stack.start_replica(
                "router",
                "router-2",
                {
                    "ROUTER_SPOOL_PATH": str(state_dir / "router-2-spool.db"),
                    "ROUTER_LEDGER_ADDRESS": f"127.0.0.1:{ledger_2}",
                },
            )
            yield stack
    finally:

        async def drop() -> None:
            conn = await asyncpg.connect(PG_URL)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop())


def simulator(stack: Stack, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports.simulator}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return dict(json.loads(reply.read()))


def round_robin(stack: Stack) -> grpc.Channel:
    second = stack.replicas["router-2"][1]
    return grpc.insecure_channel(
        f"ipv4:127.0.0.1:{stack.ports.router},127.0.0.1:{second}",
        options=[("grpc.lb_policy_name", "round_robin")],
    )


def route(request_id: str = "", **options: object) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=PROMPT)],
        request_id=request_id,
        caller="scale",
        options=router_pb2.RouteOptions(**options),  # type: ignore[arg-type]
    )


def test_an_idempotent_retry_on_the_other_replica_is_replayed(stack: Stack) -> None:
    with round_robin(stack) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        before = simulator(stack, "/_sim/stats")["totals"]["requests"]
        replies = [stub.Route(route(request_id="rr-1"), timeout=30) for _ in range(4)]  # both replicas, twice
    assert [r.replayed for r in replies] == [False, True, True, True]
    assert len({r.run_id for r in replies}) == 1
    assert simulator(stack, "/_sim/stats")["totals"]["requests"] == before + 1


def test_a_cooldown_learned_on_one_replica_is_respected_by_the_other(stack: Stack) -> None:
    cheapest = "groq/openai/gpt-oss-20b"
    simulator(stack, "/_sim/faults", {"model": cheapest, "fault": "status", "status": 503, "retry_after": 0})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{stack.ports.router}") as channel:  # the first replica only
            for _ in range(2):
                router_pb2_grpc.RouterServiceStub(channel).Route(
                    route(force_tier=common_pb2.TIER_SIMPLE), timeout=30
                )
        second = stack.replicas["router-2"][1]
        with grpc.insecure_channel(f"127.0.0.1:{second}") as channel:

            def skipped_on_the_second() -> router_pb2.RouteResponse | None:
                reply = router_pb2_grpc.RouterServiceStub(channel).Route(
                    route(force_tier=common_pb2.TIER_SIMPLE), timeout=30
                )
                skipped = {c.model for c in reply.candidates if c.skipped_reason == "cooldown"}
                return reply if cheapest in skipped else None

            reply = wait_until(
                skipped_on_the_second, "the cooldown learned on the second replica", interval=0.2
            )
        assert all(a.model != cheapest for a in reply.attempts)
    finally:
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{stack.ports.simulator}/_sim/faults", method="DELETE"),
            timeout=10,
        ).close()


def test_the_ledgers_reconcile_exactly_with_the_provider_calls(stack: Stack) -> None:
    with round_robin(stack) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        for i in range(20):
            stub.Route(route(request_id=f"spread-{i}"), timeout=30)

    def reconciled() -> tuple[dict[str, Any], list[ledger_pb2.Totals]] | None:
        sim = simulator(stack, "/_sim/stats")["totals"]
        views = []
        for port in (stack.ports.ledger, stack.replicas["ledger-2"][1]):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                views.append(
                    ledger_pb2_grpc.LedgerServiceStub(channel)
                    .GetStats(ledger_pb2.GetStatsRequest(), timeout=10)
                    .totals
                )
        return (sim, views) if views[0].attempts == views[1].attempts == sim["requests"] else None

    sim, views = wait_until(reconciled, "both ledgers holding every provider call", interval=0.3)
    assert views[0] == views[1]  # one PostgreSQL, the same figures through either ledger
    assert views[0].attempts == sim["requests"]
