"""A property: whatever sequence of calls clients make, the ledger's attempts are the provider calls.

Hypothesis draws sequences of Route and RouteStream calls with colliding and repeated request ids,
two callers, two prompts, injected provider faults (5xx, 429, malformed bodies, delays), clients that
cancel or give up mid-call, and duplicate RecordUsage deliveries. The router reports through its real
spooled reporter to a real ledger (SQLite); the simulator's counters are the ground truth. For every
sequence:
- the ledger's new attempts equal the provider calls the simulator received;
- with no client giving up in the sequence, the ledger's new spend equals what the simulator's
  completed calls cost at the price map; with clients that cancel or pass their deadline, no call is
  missing from the ledger, and the only extra records are interrupted calls whose request was on its
  way (the router cannot know whether the provider read it: it charges an estimate of the prompt);
- re-delivered records are duplicates: nothing changes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from classifier_svc.server import create_server as create_classifier
from classifier_svc.settings import ClassifierSettings
from ledger_client import LedgerReporter
from ledger_svc.server import create_server as create_ledger
from ledger_svc.settings import LedgerSettings
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.server import create_server as create_router
from service_kit.pricing import PriceBook
from simulator.server import start_simulator
from simulator.settings import SimulatorSettings
from tests.router.conftest import router_settings
from tests.waiting import eventually

T = TypeVar("T")
PROMPTS = (
    "Is this message spam? Answer yes or no: 'You won a free cruise, click here'",
    "Write two sentences about the history of the bicycle for a museum leaflet.",
)
FAULTS = ("", "status:500", "status:429,retry_after=0", "malformed", "delay:150")


class KeepingReporter(LedgerReporter):
    """The router's real spooled reporter, keeping a copy of what it was given (to deliver again)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.copies: list[ledger_pb2.UsageRecord] = []

    def submit(self, records: Sequence[ledger_pb2.UsageRecord]) -> None:
        self.copies.extend(records)
        super().submit(records)


class Loop:
    """One event loop for the module's servers, driven from synchronous hypothesis examples; between
    examples it stands still (the servers idle), and each example runs it until its checks are done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine: Awaitable[T], timeout: float = 60) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, timeout))

    def close(self) -> None:
        self.loop.close()


@dataclass
class World:
    loop: Loop
    router: router_pb2_grpc.RouterServiceAsyncStub
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub
    reporter: KeepingReporter
    simulator: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("property")
    loop = Loop()
    closers: list[Any] = []

    async def start() -> World:
        sim_runner, sim_port = await start_simulator(
            SimulatorSettings(host="127.0.0.1", port=0, latency_scale=0.05)
        )
        closers.append(sim_runner.cleanup)
        simulator = f"http://127.0.0.1:{sim_port}"
        classifier = await create_classifier(
            ClassifierSettings(port=0, strategy="heuristic", cache_enabled=False)
        )
        closers.append(lambda: classifier.stop(0))
        ledger = await create_ledger(
            LedgerSettings(port=0, database_url=f"sqlite+aiosqlite:///{tmp / 'ledger.db'}")
        )
        closers.append(lambda: ledger.stop(0))
        reporter = KeepingReporter(
            f"127.0.0.1:{ledger.port}", tmp / "spool.db", flush_interval=0.01, backoff_initial=0.05
        )
        settings = router_settings(
            f"127.0.0.1:{classifier.port}",
            f"{simulator}/v1",
            tmp,
            ledger_address=f"127.0.0.1:{ledger.port}",
            budgets_enabled=False,
            cooldown_after_failures=1000,  # faults are drawn per call; no model should sit out a sequence
        )
        router = await create_router(settings, usage_sink=reporter)
        closers.append(lambda: router.stop(0))
        router_channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
        ledger_channel = grpc.aio.insecure_channel(f"127.0.0.1:{ledger.port}")
        closers.extend([router_channel.close, ledger_channel.close])
        return World(
            loop,
            router_pb2_grpc.RouterServiceStub(router_channel),
            ledger_pb2_grpc.LedgerServiceStub(ledger_channel),
            reporter,
            simulator,
        )

    try:
        yield loop.run(start())
    finally:

        async def stop() -> None:
            for close in reversed(closers):
                await close()

        loop.run(stop())
        loop.close()


@dataclass(frozen=True)
class Call:
    stream: bool
    caller: str
    key: int | None  # index into the example's request ids; None: the router generates one
    prompt: int
    fault: str
    ending: str  # "finish", "cancel" (the client cancels after a moment), "deadline" (a short one)


calls = st.builds(
    Call,
    stream=st.booleans(),
    caller=st.sampled_from(["a", "b"]),
    key=st.one_of(st.none(), st.integers(0, 2)),
    prompt=st.integers(0, 1),
    fault=st.sampled_from(FAULTS),
    ending=st.sampled_from(["finish", "finish", "finish", "cancel", "deadline"]),
)
_examples = itertools.count()
_INTERRUPTED = (common_pb2.ATTEMPT_OUTCOME_CANCELLED, common_pb2.ATTEMPT_OUTCOME_TIMEOUT)


async def _one(world: World, call: Call, example: int) -> None:
    text = PROMPTS[call.prompt] + (f" [[sim:fault={call.fault}]]" if call.fault else "")
    fields: dict[str, Any] = {
        "messages": [common_pb2.ChatMessage(role="user", content=text)],
        "caller": call.caller,
        "request_id": "" if call.key is None else f"x{example}-k{call.key}",
    }
    timeout = 0.08 if call.ending == "deadline" else 30
    if call.stream:
        rpc: Any = world.router.RouteStream(router_pb2.RouteStreamRequest(**fields), timeout=timeout)
    else:
        rpc = world.router.Route(router_pb2.RouteRequest(**fields), timeout=timeout)
    if call.ending == "cancel":
        await asyncio.sleep(0.03)
        rpc.cancel()
    try:
        if call.stream:
            async for _ in rpc:
                pass
        else:
            await rpc
    except (grpc.aio.AioRpcError, asyncio.CancelledError):
        pass  # refused, failed, cancelled or past its deadline: what matters is what was spent


async def _snapshot(world: World) -> tuple[dict[str, Any], ledger_pb2.Totals]:
    """Simulator and ledger once everything in flight has ended and been reported: no provider call in
    flight, every provider call recorded by the router (a cancelled run records its attempt as it
    unwinds; a call in doubt is recorded without reaching the provider), and nothing new since the
    last look. (A client that gives up early may never reach a handler, so calls made are no count.)"""
    last: tuple[int, int] | None = None
    async with httpx.AsyncClient() as client:

        async def settled() -> dict[str, Any] | None:
            nonlocal last
            sim: dict[str, Any] = (await client.get(f"{world.simulator}/_sim/stats")).json()
            records = len({(r.caller, r.request_id, r.run_id, r.attempt) for r in world.reporter.copies})
            seen = (records, int(sim["totals"]["requests"]))
            quiet = sim["in_flight"] == 0 and records >= seen[1] and seen == last
            last = seen
            return sim if quiet else None

        sim = await eventually(settled, "every provider call ended and recorded")
    assert await world.reporter.flush(20)
    stats = await world.ledger.GetStats(ledger_pb2.GetStatsRequest(), timeout=10)
    return sim, stats.totals


def _cost_of_calls(before: dict[str, Any], after: dict[str, Any]) -> float:
    prices, total = PriceBook.from_litellm(), 0.0
    for model, counted in after["models"].items():
        old = before["models"].get(model, {"prompt_tokens": 0, "completion_tokens": 0})
        prompt = counted["prompt_tokens"] - old["prompt_tokens"]
        completion = counted["completion_tokens"] - old["completion_tokens"]
        total += prices.cost(model, prompt, completion).usd
    return total


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # CI runs the same sequences every time; a failure is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=st.lists(calls, min_size=1, max_size=6), redeliver=st.booleans())
def test_ledger_attempts_are_the_provider_calls_for_any_sequence(
    world: World, sequence: list[Call], redeliver: bool
) -> None:
    example = next(_examples)

    async def play() -> None:
        sim_before, before = await _snapshot(world)
        kept = len(world.reporter.copies)
        # Calls with the same key overlap in time, as retries of a slow call do.
        await asyncio.gather(*(_one(world, call, example) for call in sequence))
        sim_after, after = await _snapshot(world)
        provider_calls = sim_after["totals"]["requests"] - sim_before["totals"]["requests"]
        new_records = world.reporter.copies[kept:]
        attempts = after.attempts - before.attempts
        assert attempts == len(new_records)  # every record the router made was counted, once
        interrupted = sum(r.outcome in _INTERRUPTED for r in new_records)
        if not any(call.ending != "finish" or call.fault.startswith("delay") for call in sequence):
            # No client gave up: the ledger's attempts and spend are exactly the provider's.
            assert attempts == provider_calls
            spent = after.cost_usd - before.cost_usd
            assert spent == pytest.approx(
                _cost_of_calls(sim_before, sim_after), abs=1e-9 * (1 + provider_calls)
            )
        else:
            # Every provider call is in the ledger. A call cut off while its request was on the way
            # (after LiteLLM handed it to the HTTP client, before the provider read it) is in doubt:
            # the router cannot tell, so it is recorded and charged an estimate of its prompt.
            assert provider_calls <= attempts <= provider_calls + interrupted
        if redeliver and new_records:
            again = await world.ledger.RecordUsage(
                ledger_pb2.RecordUsageRequest(records=new_records), timeout=10
            )
            assert (again.inserted, again.duplicates) == (0, len(new_records))
            world.reporter.submit(new_records)  # and once more through the spool, as a replay would
            _, replayed = await _snapshot(world)
            assert (replayed.attempts, replayed.cost_usd) == (after.attempts, after.cost_usd)

    world.loop.run(play(), timeout=120)


def test_the_property_checks_something(world: World, tmp_path: Path) -> None:
    """The property above must be able to fail: a router that dropped a record would be caught."""

    async def play() -> None:
        sim_before, before = await _snapshot(world)
        reply = await world.router.Route(
            router_pb2.RouteRequest(
                messages=[common_pb2.ChatMessage(role="user", content=PROMPTS[0])], caller="a"
            ),
            timeout=30,
        )
        sim_after, after = await _snapshot(world)
        calls_made = sim_after["totals"]["requests"] - sim_before["totals"]["requests"]
        assert calls_made == len(reply.attempts) == after.attempts - before.attempts
        assert after.cost_usd - before.cost_usd == pytest.approx(
            _cost_of_calls(sim_before, sim_after), abs=1e-9
        )

    world.loop.run(play())
