"""Faults while the soak runs: each test injects one fault into the services (as processes) while the
soak's mixed traffic flows, and asserts what that fault must and must not do.

Every test also asserts (tests/e2e/faultload.py `check`): every call got a status allowed for its kind,
with an `ErrorInfo` reason for every refusal the router makes; no service died or was restarted that
the test did not kill (and no service's log shows a traceback); the ledger reconciles exactly with the
simulator's own counters (total and per model, every run's attempts 1..n, no key twice, the spool
empty). docs/reliability.md "Faults under load" lists them with how to run them.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from benchmarks.books import Books, ledger_stats, simulator
from devstack.stack import Ports, free_port
from llmroute.common.v1 import common_pb2
from tests.e2e.faultload import (
    PROVIDERS_FAILED,
    STREAM_BROKEN,
    CappedStack,
    FaultLoad,
    PrivatePostgres,
    SpoolDisk,
    assert_alive,
    healthy,
    kill,
    log_has,
    pids_of,
    reconcile,
    restart,
    start_checked,
    unclear,
)
from tests.rich_status import details

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PROVIDER_TIMEOUT_S = 5.0
ENV = {
    # About 30-300 ms to the first token: the soak's profiles, scaled down so a test's window is short.
    "SIMULATOR_LATENCY_SCALE": "0.1",
    "ROUTER_CLASSIFIER_MODE": "remote",  # every request through the classifier service
    "CLASSIFIER_STRATEGY": "local",  # no LLM classifier: every provider call is a routed attempt
    "ROUTER_SIMULATOR": "always",
    "ROUTER_WARM_UP": "false",
    "ROUTER_PROVIDER_TIMEOUT_SECONDS": str(PROVIDER_TIMEOUT_S),
    "ROUTER_COOLDOWN_SECONDS": "2",  # a breaker opened by one test is closed by the next
    "ROUTER_LOG_LEVEL": "WARNING",
    "LEDGER_LOG_LEVEL": "WARNING",
    "CLASSIFIER_LOG_LEVEL": "WARNING",
    "SIMULATOR_LOG_LEVEL": "WARNING",
}
# The router's health component for usage recording (router_svc/background.py).
RECORDING = "llmroute.usage_recording"
# Calls the client itself cut short: a short deadline, or a cancel after some deltas.
INTERRUPTED_KINDS = ("cancel", "midstream", "stream_deadline")
ANSWERING_KINDS = ("route", "retry", "stream", "budget")


@dataclass
class Env:
    stack: CappedStack
    disk: SpoolDisk
    postgres: PrivatePostgres


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The services as processes, the ledger on a PostgreSQL server of this module's own (so it can be
    restarted), the router's spool on a small file system of its own (so it can be filled)."""
    state = tmp_path_factory.mktemp("faults")
    disk = SpoolDisk(state / "spool")
    postgres = PrivatePostgres(free_port())
    try:
        postgres.init()
        postgres.start()
        disk.mount()
        if not disk.mounted:  # said, not skipped: the disk-full test caps the router's file writes instead
            warnings.warn(
                f"no tmpfs for the spool ({disk.why_not_mounted}): using RLIMIT_FSIZE", stacklevel=1
            )
        stack = CappedStack(
            state_dir=state,
            ports=Ports.free(),
            extra_env={
                **ENV,
                "LEDGER_DATABASE_URL": postgres.url,
                "ROUTER_SPOOL_PATH": str(disk.directory / "router-spool.db"),
            },
            pipe_router=not disk.mounted,
        )
        with stack:
            start_checked(stack)
            yield Env(stack, disk, postgres)
    finally:
        disk.free()
        disk.unmount()
        postgres.destroy()


@pytest.fixture(autouse=True)
def no_fault_rules(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "env" in request.fixturenames:
        stack = request.getfixturevalue("env").stack
        if stack.processes.get("simulator") and stack.processes["simulator"].poll() is None:
            simulator(stack, "/_sim/faults", method="DELETE")


def check(
    load: FaultLoad,
    stack: CappedStack,
    pids: Mapping[str, int],
    *,
    allowed: Mapping[str, set[tuple[str, str]]] | None = None,
    killed: tuple[str, ...] = (),
) -> Books:
    """What every fault test asserts; returns the reconciled books for the fault's own assertions."""
    print(load.name, load.summary())  # shown with -s, and with a failure
    assert not load.problems, load.problems[:5]
    assert load.calls and load.count(code="OK") > 0
    assert not unclear(load, allowed), unclear(load, allowed)
    assert_alive(stack, pids, killed)
    books = reconcile(stack, load.interrupted_ids())
    print(load.name, "phantom attempts:", books.phantoms)
    return books


def rule_applied(stack: CappedStack) -> int:
    return sum(rule["applied"] for rule in simulator(stack, "/_sim/faults")["rules"])


def interrupted(load: FaultLoad) -> int:
    return sum(1 for c in load.calls if c.kind in INTERRUPTED_KINDS and c.code != "OK")


def run(load: FaultLoad, fault: Any, **options: Any) -> None:
    asyncio.run(load.run_with(fault, **options))


def answered_share(load: FaultLoad) -> float:
    calls = [c for c in load.calls if c.kind in ANSWERING_KINDS and c.reason != "BUDGET_EXCEEDED"]
    return sum(c.code == "OK" for c in calls) / max(1, len(calls))


# ---- provider faults ---------------------------------------------------------------------------------


def _new(books: Books, before: set[tuple[str, str, str, int]]) -> list[dict[str, Any]]:
    """The records a test's window added."""
    return [
        r for r in books.records if (r["caller"], r["request_id"], r["run_id"], r["attempt"]) not in before
    ]


def _keys(books: Books) -> set[tuple[str, str, str, int]]:
    return {(r["caller"], r["request_id"], r["run_id"], r["attempt"]) for r in books.records}


class ProviderFault:
    """One provider fault under load: a simulator rule added once answers flow, left in place until
    it has faulted `at_least` provider calls, then removed. `new`: the ledger records of the window."""

    def __init__(
        self, env: Env, rule: dict[str, Any], name: str, at_least: int = 12, **load_options: Any
    ) -> None:
        self.stack = stack = env.stack
        pids = pids_of(stack)
        before = _keys(reconcile(stack))  # the books were square before
        self.load = FaultLoad(stack, duration=6, name=name, **load_options)
        self.applied = 0

        def applied() -> int:
            self.applied = rule_applied(stack)
            return self.applied

        async def fault(load: FaultLoad) -> None:
            await asyncio.to_thread(simulator, stack, "/_sim/faults", rule)
            await load.until(
                lambda: asyncio.to_thread(lambda: applied() >= at_least), f"{at_least} faulted calls", 30
            )
            await asyncio.to_thread(simulator, stack, "/_sim/faults", None, "DELETE")

        run(self.load, fault)
        self.books = check(self.load, stack, pids, allowed={"router": PROVIDERS_FAILED | STREAM_BROKEN})
        self.new = _new(self.books, before)

    def signed(self, signature: Any) -> list[dict[str, Any]]:
        return [r for r in self.new if signature(r)]

    def assert_each_fault_recorded_once(self, signature: Any) -> list[dict[str, Any]]:
        """Every faulted provider call is one failed attempt in the ledger: as many as the simulator
        faulted, less any the client abandoned before the fault came back."""
        signed = self.signed(signature)
        assert self.applied - interrupted(self.load) <= len(signed) <= self.applied, (
            len(signed),
            self.applied,
        )
        return signed


def test_provider_429_with_retry_after(env: Env) -> None:
    """Rate limits (429, `retry-after: 1`) on a quarter of provider calls: each is one unbilled
    failed attempt; the router retries or falls back, so the clients get answers, not 429s."""
    fault = ProviderFault(
        env, {"model": "*", "fault": "status", "status": 429, "retry_after": 1, "probability": 0.25}, "429"
    )
    limited = fault.assert_each_fault_recorded_once(
        lambda r: r["outcome"] == "ATTEMPT_OUTCOME_PROVIDER_ERROR" and r["error"] == "RateLimitError (429)"
    )
    assert all(r["cost_usd"] == 0 and r["input_tokens"] == 0 for r in limited)
    # The router honours retry-after (unit-tested in tests/router/test_provider_calls.py): a model is
    # called again only once the 1 s it was told has passed, by the same request or any other. Shown:
    # how often a request's retry went to the same model (after waiting) rather than the next one.
    attempts = {(r["run_id"], r["attempt"]): r for r in fault.new}
    again = sum(
        1 for r in limited if attempts.get((r["run_id"], r["attempt"] + 1), {}).get("model") == r["model"]
    )
    print("429", {"rate limited": len(limited), "same model tried again after its wait": again})
    assert answered_share(fault.load) >= 0.9
    assert not any(c.code == "RESOURCE_EXHAUSTED" and c.kind != "budget" for c in fault.load.calls)


def test_provider_500(env: Env) -> None:
    """HTTP 500 on a quarter of provider calls: each is one unbilled failed attempt; answers still come."""
    fault = ProviderFault(env, {"model": "*", "fault": "status", "status": 500, "probability": 0.25}, "500")
    errors = fault.assert_each_fault_recorded_once(
        lambda r: (
            r["outcome"] == "ATTEMPT_OUTCOME_PROVIDER_ERROR" and r["error"] == "InternalServerError (500)"
        )
    )
    assert all(r["cost_usd"] == 0 for r in errors)
    assert answered_share(fault.load) >= 0.9


def test_provider_timeouts(env: Env) -> None:
    """Provider calls that hang (15% of them): the router gives up on each at its provider
    timeout, closes the connection (the simulator sees it cancelled), records a TIMEOUT attempt charged
    for its prompt, and answers from the retry or the next candidate."""
    sim_before = simulator(env.stack, "/_sim/stats")["totals"]["cancelled"]
    fault = ProviderFault(
        env,
        {"model": "*", "fault": "timeout", "hang_seconds": 60, "probability": 0.15},
        "timeout",
        at_least=8,
    )
    timed_out = fault.assert_each_fault_recorded_once(
        lambda r: (
            r["outcome"] == "ATTEMPT_OUTCOME_TIMEOUT" and r["provider_ms"] >= 0.9 * PROVIDER_TIMEOUT_S * 1000
        )
    )
    assert all(r["provider_ms"] < 3 * PROVIDER_TIMEOUT_S * 1000 for r in timed_out)
    assert all(r["input_tokens"] > 0 and r["cost_usd"] > 0 for r in timed_out)  # the prompt was sent
    cancelled = fault.books.sim["totals"]["cancelled"] - sim_before
    assert cancelled >= len(timed_out)  # no hung connection left open: each was closed by the router
    assert answered_share(fault.load) >= 0.9


def test_provider_malformed_bodies(env: Env) -> None:
    """HTTP 200 with a body that is not JSON (or a non-JSON stream event), on a quarter of calls:
    each is one unbilled failed attempt; answers still come."""
    fault = ProviderFault(env, {"model": "*", "fault": "malformed", "probability": 0.25}, "malformed")
    broken = fault.assert_each_fault_recorded_once(
        lambda r: (
            r["outcome"] == "ATTEMPT_OUTCOME_PROVIDER_ERROR"
            and r["error"] in ("InternalServerError (500)", "MidStreamFallbackError (500)")
        )
    )
    assert all(r["cost_usd"] == 0 for r in broken)
    assert answered_share(fault.load) >= 0.9


def test_provider_streams_cut_in_the_middle(env: Env) -> None:
    """A fifth of provider responses cut after two content chunks (streams) or half the body: a
    stream cut after its first delta cannot be retried, so its client gets UNAVAILABLE
    `PROVIDER_STREAM_BROKEN` after the deltas it had, and the attempt is charged for what was
    generated; a cut non-streaming body is retried like any transient error."""
    fault = ProviderFault(
        env,
        {"model": "*", "fault": "cut_stream", "after_chunks": 2, "probability": 0.2},
        "cut",
        streams=0.4,
        midstream=0.0,
    )
    cut = fault.assert_each_fault_recorded_once(
        lambda r: (
            r["outcome"] == "ATTEMPT_OUTCOME_PROVIDER_ERROR"
            and r["error"] in ("InternalServerError (500)", "MidStreamFallbackError (500)")
        )
    )
    broken = [c for c in fault.load.calls if (c.code, c.reason) == ("UNAVAILABLE", "PROVIDER_STREAM_BROKEN")]
    assert broken, "no stream was cut after its first delta"
    for call in broken:
        assert call.deltas >= 1, call
        last = fault.books.of(call.request_id)[-1]
        assert last["outcome"] == "ATTEMPT_OUTCOME_PROVIDER_ERROR", last
        assert last["output_tokens"] > 0 and last["cost_usd"] > 0, last  # the partial answer is billed
    assert len(cut) > len(broken)  # the others (non-streaming, or cut before a delta) were retried


def test_provider_slow_streams(env: Env) -> None:
    """Every stream trickles (one token each 25 ms, several seconds an answer): the router does not
    cut a stream that is making progress, keeps answering other calls meanwhile, and a client whose
    deadline passes mid-stream gets DEADLINE_EXCEEDED with the partial attempt recorded."""
    stack = env.stack
    pids = pids_of(stack)
    before = _keys(reconcile(stack))
    load = FaultLoad(
        stack,
        duration=10,
        name="slow",
        streams=0.3,
        midstream=0.0,
        stream_deadline=0.3,
        stream_deadline_s=1.5,
        stream_directive="[[sim:fault=slow_stream:25]]",
    )

    async def fault(load: FaultLoad) -> None:
        # The slow streams are in every stream's prompt from the start; the fault is their duration.
        await load.until(lambda: load.count(code="OK", kinds=["stream"]) >= 4, "4 slow streams finished", 60)

    run(load, fault, warm=1)
    books = check(load, stack, pids, allowed={"router": PROVIDERS_FAILED})
    streams = [c for c in load.calls if c.kind == "stream" and c.code == "OK"]
    # Progress, not a stall: slow streams ran past the provider timeout (between chunks 25 ms, in all
    # far longer) and were not cut.
    assert any(c.ended - c.started > PROVIDER_TIMEOUT_S for c in streams)
    assert all(c.deltas > 1 for c in streams)

    # Other calls were answered while slow streams were open.
    def during_a_stream(call: Any) -> bool:
        return any(s.started < call.started and call.ended < s.ended for s in streams)

    assert sum(1 for c in load.calls if c.kind == "route" and c.code == "OK" and during_a_stream(c)) >= 5
    cut = [c for c in load.calls if c.kind == "stream_deadline" and c.code == "DEADLINE_EXCEEDED"]
    assert cut, "no stream outlived its client's deadline"
    new = _new(books, before)
    for call in cut:
        records = [r for r in new if r["request_id"] == call.request_id]
        if not records:  # the deadline passed before the provider was called (classification)
            assert call.deltas == 0, call
            continue
        last = records[-1]
        assert last["outcome"] in ("ATTEMPT_OUTCOME_CANCELLED", "ATTEMPT_OUTCOME_TIMEOUT"), last
        assert last["input_tokens"] > 0 and last["cost_usd"] > 0, last
        if call.deltas:
            assert last["output_tokens"] > 0, last  # the part it generated is charged


def test_clients_cancelling_mid_stream(env: Env) -> None:
    """Clients cancel streams after two deltas: the router cancels the provider call (the simulator
    sees each of them abandoned while it was still streaming) and records the attempt as CANCELLED,
    charged for the prompt and the partial answer."""
    stack = env.stack
    pids = pids_of(stack)
    before = _keys(reconcile(stack))
    cancelled_before = simulator(stack, "/_sim/stats")["totals"]["cancelled"]
    load = FaultLoad(
        stack,
        duration=8,
        name="midstream",
        streams=0.4,
        midstream=0.7,
        cancel_after=2,
        # Slow enough that every cancelled stream still had tokens to send when its client went away.
        midstream_directive="[[sim:fault=slow_stream:250]]",
    )

    async def fault(load: FaultLoad) -> None:
        await load.until(lambda: load.count(code="CANCELLED", kinds=["midstream"]) >= 15, "15 cancels", 60)

    run(load, fault, warm=1)
    books = check(load, stack, pids)
    cancels = [c for c in load.calls if c.kind == "midstream" and c.code == "CANCELLED"]
    new = _new(books, before)
    for call in cancels:
        records = [r for r in new if r["request_id"] == call.request_id]
        assert len(records) == 1, (call, records)
        [record] = records
        assert record["outcome"] == "ATTEMPT_OUTCOME_CANCELLED", record
        assert record["input_tokens"] > 0 and record["output_tokens"] > 0 and record["cost_usd"] > 0, record
    abandoned = books.sim["totals"]["cancelled"] - cancelled_before
    interrupted_records = sum(
        1 for r in new if r["outcome"] in ("ATTEMPT_OUTCOME_CANCELLED", "ATTEMPT_OUTCOME_TIMEOUT")
    )
    # Each cancelled stream's provider call was cancelled; and nothing the simulator saw abandoned is
    # missing a cancelled or timed-out record.
    assert len(cancels) <= abandoned <= interrupted_records, (len(cancels), abandoned, interrupted_records)


# ---- services killed ---------------------------------------------------------------------------------


def test_classifier_killed_and_restarted(env: Env) -> None:
    """SIGKILL of the classifier service: requests are still answered (on the policy's default tier,
    with a `classifier_unavailable` warning), none refused for it; once it is back, requests are
    classified by it again."""
    stack = env.stack
    pids = pids_of(stack)
    reconcile(stack)
    load = FaultLoad(stack, duration=8, name="classifier")
    marks: dict[str, float] = {}

    def degraded(call: Any) -> bool:
        return any(w.startswith("classifier_unavailable") for w in call.warnings)

    async def fault(load: FaultLoad) -> None:
        await asyncio.to_thread(kill, stack, "classifier")
        marks["killed"] = load.now()
        await load.until(lambda: sum(degraded(c) for c in load.calls) >= 10, "10 answers without it", 60)
        await asyncio.to_thread(restart, stack, "classifier")
        marks["back"] = load.now()
        await load.until(
            lambda: (
                sum(
                    1
                    for c in load.calls
                    if c.started > marks["back"]
                    and c.code == "OK"
                    and c.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
                )
                >= 5
            ),
            "answers classified by the restarted classifier",
            30,
        )
        marks["recovered"] = load.now()

    run(load, fault)
    check(load, stack, pids, killed=("classifier",))
    outage = [c for c in load.calls if degraded(c)]
    assert all(c.source == common_pb2.CLASSIFIER_SOURCE_DEFAULT for c in outage)
    assert all(marks["killed"] <= c.ended for c in outage)
    # The router reconnected soon after the classifier was back (its channel's reconnect backoff).
    assert marks["recovered"] - marks["back"] < 20, marks


def test_ledger_killed_and_restarted(env: Env) -> None:
    """SIGKILL of the ledger (SQLite) under load: requests are still answered, their usage spooled by
    the router; GetStats is UNAVAILABLE while it is down; once it is back the spool drains and every
    attempt is in the ledger exactly once (batches cut by the kill are re-sent and deduplicated)."""
    stack = env.stack
    pids = pids_of(stack)
    reconcile(stack)
    load = FaultLoad(stack, duration=8, name="ledger")
    marks: dict[str, float] = {}

    async def fault(load: FaultLoad) -> None:
        await asyncio.to_thread(kill, stack, "ledger")
        marks["killed"] = load.now()
        await load.until(
            lambda: load.count(code="OK", kinds=["route"], since=marks["killed"]) >= 15,
            "15 answers while the ledger is down",
            60,
        )
        await asyncio.to_thread(restart, stack, "ledger")
        marks["back"] = load.now()

    run(load, fault)
    check(load, stack, pids, allowed={"stats": {("UNAVAILABLE", "")}}, killed=("ledger",))
    # The router kept answering while the ledger was gone; a GetStats made then was UNAVAILABLE.
    during = [c for c in load.calls if marks["killed"] < c.started and c.ended < marks["back"]]
    assert sum(c.code == "OK" for c in during if c.kind == "route") >= 15
    assert all(c.code == "UNAVAILABLE" for c in during if c.kind == "stats")


def test_router_spool_disk_full(env: Env) -> None:
    """The file system of the router's spool fills up under load: the router says so (health
    NOT_SERVING, the component `llmroute.usage_recording` NOT_SERVING, `ledger_spool_write_failed`
    and `usage_recording_unavailable` in its log), refuses new paid work with UNAVAILABLE
    `USAGE_NOT_RECORDABLE` and a message naming the spool, and keeps the records of work already paid
    for in memory and delivers them: nothing is silently dropped (the ledger reconciles exactly). Space
    freed, it serves again. No crash."""
    stack, disk = env.stack, env.disk
    pids = pids_of(stack)
    reconcile(stack)
    load = FaultLoad(stack, duration=8, name="diskfull")
    marks: dict[str, Any] = {}

    def serving(service: str = "") -> bool:
        return healthy(stack.ports.router, service)

    async def fault(load: FaultLoad) -> None:
        spool = disk.directory / "router-spool.db"
        await asyncio.to_thread(disk.fill, stack.processes["router"].pid, spool)
        marks["full"] = load.now()
        await load.until(lambda: asyncio.to_thread(lambda: not serving()), "NOT_SERVING", 30)
        marks["not_serving"] = load.now()
        marks["component_down"] = not await asyncio.to_thread(serving, RECORDING)
        await load.until(
            lambda: load.count(code="UNAVAILABLE", kinds=ANSWERING_KINDS, since=marks["not_serving"]) >= 5,
            "5 refusals",
            30,
        )
        marks["message"] = await asyncio.to_thread(refusal_message, stack)
        await asyncio.to_thread(disk.free)
        marks["freed"] = load.now()
        await load.until(lambda: asyncio.to_thread(serving), "SERVING again", 30)
        marks["serving"] = load.now()
        marks["component_up"] = await asyncio.to_thread(serving, RECORDING)
        await load.until(
            lambda: load.count(code="OK", kinds=["route"], since=marks["serving"]) >= 5, "answers again", 30
        )

    try:
        run(load, fault)
    finally:
        disk.free()
    check(load, stack, pids, allowed={"router": {("UNAVAILABLE", "USAGE_NOT_RECORDABLE")}})
    print("diskfull", disk.method, {k: v for k, v in marks.items() if k != "message"})
    refused = [c for c in load.calls if c.reason == "USAGE_NOT_RECORDABLE"]
    assert refused and all(marks["full"] <= c.ended and c.started <= marks["serving"] for c in refused)
    assert "spool" in marks["message"], marks["message"]
    assert marks["component_down"] and marks["component_up"], marks
    # A paid answer's records met the full disk first: held in memory (and said so), then delivered.
    assert log_has(stack, "router", "ledger_spool_write_failed")
    assert log_has(stack, "router", "usage_recording_unavailable")


def refusal_message(stack: CappedStack) -> str:
    """What a client is told while the spool cannot take records."""
    import grpc

    from llmroute.router.v1 import router_pb2, router_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.router}") as channel:
        try:
            router_pb2_grpc.RouterServiceStub(channel).Route(
                router_pb2.RouteRequest(
                    messages=[common_pb2.ChatMessage(role="user", content="Is this spam? 'free cruise'")],
                    caller="faults",
                ),
                timeout=30,
            )
        except grpc.RpcError as error:
            found = details(error)
            assert (found.code, found.reason) == (grpc.StatusCode.UNAVAILABLE, "USAGE_NOT_RECORDABLE")
            return str(found.message)
    return "answered"


# ---- PostgreSQL restarted under the ledger -----------------------------------------------------------


def test_postgres_restarted_under_the_ledger(env: Env) -> None:
    """The ledger's PostgreSQL (a server of the test's own) stopped and started again under load:
    the ledger answers UNAVAILABLE `DATABASE_UNAVAILABLE` meanwhile (never INTERNAL), does not crash,
    serves again once the database is back; the router spools and then delivers everything once."""
    stack, postgres = env.stack, env.postgres
    pids = pids_of(stack)
    reconcile(stack)
    load = FaultLoad(stack, duration=8, name="postgres")
    marks: dict[str, float] = {}

    async def fault(load: FaultLoad) -> None:
        await asyncio.to_thread(postgres.stop)
        marks["stopped"] = load.now()
        await load.until(
            lambda: load.count(code="OK", kinds=["route"], since=marks["stopped"]) >= 15,
            "15 answers while PostgreSQL is down",
            60,
        )
        await asyncio.to_thread(postgres.start)
        marks["started"] = load.now()
        await load.until(lambda: asyncio.to_thread(_stats_answer, stack), "GetStats answers again", 30)
        marks["recovered"] = load.now()

    run(load, fault)
    check(load, stack, pids, allowed={"stats": {("UNAVAILABLE", "DATABASE_UNAVAILABLE")}})
    assert marks["recovered"] - marks["started"] < 20, marks


def _stats_answer(stack: CappedStack) -> bool:
    import grpc

    try:
        ledger_stats(stack)
    except grpc.RpcError:
        return False
    return True
