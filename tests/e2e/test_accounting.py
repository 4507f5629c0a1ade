"""Every provider call is in the ledger exactly once, whatever clients do with request ids.

The services run as separate processes (two routers sharing one ledger); the simulator's own counters
are the ground truth: the ledger's attempts must equal the calls it received, per model and in total,
and the ledger's spend must equal what those calls cost at the price map.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from benchmarks.books import Books, settled, simulator
from devstack.stack import Ports, Stack
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from service_kit.pricing import PriceBook

pytestmark = pytest.mark.e2e

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
NANO = "gpt-5-nano"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("accounting")
    env = {"SIMULATOR_LATENCY_SCALE": "0", "ROUTER_SIMULATOR": "always"}
    with Stack(state_dir=state_dir, ports=Ports.free(), extra_env=env) as stack:
        stack.start()
        # A second router replica on the same ledger, with a spool of its own.
        stack.start_replica("router", "router-2", {"ROUTER_SPOOL_PATH": str(state_dir / "router-2-spool.db")})
        yield stack


def grpcurl_stream(port: int, data: dict[str, Any]) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-d",
            json.dumps(data),
            f"127.0.0.1:{port}",
            "llmroute.router.v1.RouterService/RouteStream",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    decoder, text, events = json.JSONDecoder(), result.stdout.strip(), []
    while text:
        event, end = decoder.raw_decode(text)
        events.append(event)
        text = text[end:].strip()
    return events


def assert_reconciled(stack: Stack) -> Books:
    books = settled(stack, (ledger_pb2.GROUP_BY_MODEL, ledger_pb2.GROUP_BY_CALLER))
    sim, stats = books.sim, books.stats
    assert stats.totals.attempts == sim["totals"]["requests"]
    prices = PriceBook.from_litellm()
    by_model = books.by(ledger_pb2.GROUP_BY_MODEL)
    assert set(by_model) == set(sim["models"])
    for model, counted in sim["models"].items():
        assert by_model[model].attempts == counted["requests"], model
        if counted["cancelled"] == 0:  # a cancelled call is charged an estimate of its prompt
            paid = prices.cost(model, counted["prompt_tokens"], counted["completion_tokens"]).usd
            assert by_model[model].cost_usd == pytest.approx(paid, rel=1e-6, abs=1e-9), model
    return books


def nano(text: str, request_id: str, caller: str) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=text)],
        request_id=request_id,
        caller=caller,
        options=router_pb2.RouteOptions(force_model=NANO),
    )


def test_the_four_calls_of_the_report_are_all_in_the_ledger(stack: Stack) -> None:
    data = {
        "messages": [{"role": "user", "content": "Classify the sentiment: 'great service'"}],
        "requestId": "retry-me",
        "caller": "streamer",
        "options": {"forceModel": NANO},
    }
    first = grpcurl_stream(stack.ports.router, data)
    again = grpcurl_stream(stack.ports.router, data)  # a client retrying its stream
    assert "replayed" not in first[-1]["summary"] and again[-1]["summary"]["replayed"] is True
    assert [e["delta"]["content"] for e in again[:-1]] == [first[-1]["summary"]["content"]]
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.router}") as channel:
        router = router_pb2_grpc.RouterServiceStub(channel)
        a = router.Route(nano("Extract the city: 'ship to Lyon'", "shared-id", "a"), timeout=30)
        b = router.Route(nano("Extract the city: 'ship to Lyon'", "shared-id", "b"), timeout=30)
    assert not a.replayed and not b.replayed and a.run_id != b.run_id
    by_caller = assert_reconciled(stack).by(ledger_pb2.GROUP_BY_CALLER)
    assert (by_caller["streamer"].attempts, by_caller["a"].attempts, by_caller["b"].attempts) == (1, 1, 1)
    assert by_caller["a"].cost_usd == pytest.approx(a.usage.cost_usd, rel=1e-9)
    assert by_caller["b"].cost_usd == pytest.approx(b.usage.cost_usd, rel=1e-9)


def test_a_stream_retried_after_a_failure_runs_again_and_both_runs_count(stack: Stack) -> None:
    simulator(stack, "/_sim/faults", {"model": NANO, "fault": "status", "status": 500, "count": 1}, "POST")
    data = {
        "messages": [{"role": "user", "content": "Is 'cheap pills' spam? yes or no"}],
        "requestId": "fails-once",
        "caller": "flaky",
        "options": {"forceModel": NANO},
    }
    # The only candidate fails before its first delta: the stream ends UNAVAILABLE.
    with pytest.raises(subprocess.CalledProcessError) as raised:
        grpcurl_stream(stack.ports.router, data)
    assert "Code: Unavailable" in raised.value.stderr and "ALL_PROVIDERS_FAILED" in raised.value.stderr
    events = grpcurl_stream(stack.ports.router, data)
    assert events[-1]["summary"]["model"] == NANO and "replayed" not in events[-1]["summary"]
    by_caller = assert_reconciled(stack).by(ledger_pb2.GROUP_BY_CALLER)
    assert (by_caller["flaky"].requests, by_caller["flaky"].attempts) == (2, 2)
    assert by_caller["flaky"].failed_attempt_cost_usd == 0  # a 500 before any output is not billed


def test_a_retry_on_another_router_replica_is_recorded_as_its_own_run(stack: Stack) -> None:
    replica_port = stack.replicas["router-2"][1]
    request = nano("Translate to Spanish: 'thank you'", "cross-replica", "roamer")
    responses = []
    for port in (stack.ports.router, replica_port, stack.ports.router, replica_port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            responses.append(router_pb2_grpc.RouterServiceStub(channel).Route(request, timeout=30))
    # Each replica ran it once and replayed it once: two provider calls, two runs, both recorded.
    assert [r.replayed for r in responses] == [False, False, True, True]
    assert responses[0].run_id != responses[1].run_id
    by_caller = assert_reconciled(stack).by(ledger_pb2.GROUP_BY_CALLER)
    assert (by_caller["roamer"].requests, by_caller["roamer"].attempts) == (2, 2)
    assert by_caller["roamer"].cost_usd == pytest.approx(
        responses[0].usage.cost_usd + responses[1].usage.cost_usd, rel=1e-9
    )
