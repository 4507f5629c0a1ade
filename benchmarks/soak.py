"""Soak: the whole system under sustained mixed traffic with provider faults, then the books checked.

`make soak DURATION=60 RATE=20` (seconds, requests per second; it stops by itself), or a number of
requests with a cap on those in flight: `make soak RATE=60 ARGS="--requests 100000 --max-in-flight 16
--latency-scale 0.2"` (the memory target: each service's memory after 100k requests against after
10k, in as little time as the machine allows). The services run
as separate processes (devstack), the simulator answers with realistic latency (its model profiles:
a few hundred milliseconds to the first token) and about 1% of provider calls fail (500, 429 with
retry-after, malformed bodies, cut streams). The traffic, open loop at RATE: Route, RouteStream,
idempotent retries of the same request_id, cancellations (a deadline shorter than the call), a caller
with a hard budget it exceeds, GetStats, and one WatchSpend stream throughout.

Reported (and written as JSON with `--json PATH`): throughput; p50/p99/p99.9 of the router's added
overhead (the client's latency minus the provider time the response reports); errors by status; each
service's resident memory and open file descriptors at the start and the end; and the reconciliation:
the ledger's records against the calls the simulator received, in total and per model
(benchmarks/books.py: exact but for attempts a client's deadline cut before the call reached the
simulator, which are recorded and counted as `phantoms`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from benchmarks.books import check, simulator
from devstack.stack import Ports, Stack
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc

PROMPTS = (
    "Is this message spam? 'You won a free cruise, click here'",
    "Translate to French: the meeting moved to Thursday.",
    "Summarize in one line: quarterly revenue grew 12% while costs fell 3%.",
    "Write a Python function that merges two sorted lists, with tests.",
    "Explain the difference between TCP and UDP to a new engineer.",
    "Prove that the square root of 2 is irrational, step by step.",
    "Extract the date and the amount: 'Invoice 4411, due 2026-03-01, total $1,240.50'.",
    "Classify the sentiment: 'the support team was slow but helpful'.",
)
# About 1% of provider calls fail, in the ways providers fail.
FAULTS = [
    {"model": "*", "fault": "status", "status": 500, "probability": 0.004},
    {"model": "*", "fault": "status", "status": 429, "retry_after": 0.2, "probability": 0.003},
    {"model": "*", "fault": "malformed", "probability": 0.002},
    {"model": "*", "fault": "cut_stream", "after_chunks": 2, "probability": 0.001},
]
MIX = (
    ("route", 0.55),
    ("stream", 0.15),
    ("retry", 0.10),
    ("cancel", 0.05),
    ("budget", 0.10),
    ("stats", 0.05),
)
BUDGET_CALLER = "soak-budgeted"


@dataclass
class Results:
    duration_s: float = 0.0
    rate: float = 0.0
    sent: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    # Over every answer; and over answers that took one provider attempt (no fault, no fallback, so
    # no retry wait or backoff in them): what the router itself adds to a call.
    overhead_ms: dict[str, float] = field(default_factory=dict)
    overhead_one_attempt_ms: dict[str, float] = field(default_factory=dict)
    provider_ms_p50: float = 0.0
    offered_rps: float = 0.0
    answered_rps: float = 0.0
    drained_s: float = 0.0
    services: dict[str, dict[str, int]] = field(default_factory=dict)
    ledger_attempts: int = 0
    simulator_calls: int = 0
    # What does not reconcile (benchmarks/books.py), and attempts recorded for calls a client's
    # deadline cut before they reached the simulator (recorded, as the router cannot tell them apart).
    problems: list[str] = field(default_factory=list)
    phantoms: int = 0
    reconciled: bool = False
    watch_snapshots: int = 0
    # Every 10 s: requests sent so far and each service's resident memory (KiB), to see growth.
    memory: list[dict[str, int]] = field(default_factory=list)
    # The first sample taken once a tenth of the requests were sent (requests sent then, and each
    # service's resident memory in KiB): memory after 10k requests in a run of 100k.
    memory_tenth: dict[str, int] = field(default_factory=dict)
    # Per service: resident memory at the end over what it was once a tenth of the requests were sent
    # (a run of 100k requests: memory after 100k over memory after 10k; the target is at most 1.10).
    memory_growth: dict[str, float] = field(default_factory=dict)


def _proc(pid: int) -> dict[str, int]:
    """Resident memory (KiB) and open file descriptors of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _tenth(samples: list[dict[str, int]], sent: int) -> dict[str, int]:
    """The first memory sample taken once a tenth of the requests were sent."""
    return next((sample for sample in samples if sample["sent"] >= sent / 10), {})


def _growth(
    samples: list[dict[str, int]], services: tuple[str, ...], sent: int, after: dict[str, dict[str, int]]
) -> dict[str, float]:
    tenth = _tenth(samples, sent)
    if not tenth:
        return {}
    return {name: round(after[name]["rss_kib"] / tenth[name], 3) for name in services if tenth[name]}


def _quantiles(values: list[float]) -> dict[str, float]:
    return {q: round(_percentile(values, v), 2) for q, v in (("p50", 0.50), ("p99", 0.99), ("p99.9", 0.999))}


def _provider_ms(response: router_pb2.RouteResponse) -> float:
    return sum(a.latency_ms for a in response.attempts)


class Soak:
    def __init__(
        self,
        stack: Stack,
        rate: float,
        duration: float,
        seed: int,
        pids: dict[str, int],
        sample_every: float = 10.0,
        requests: int | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        self.stack = stack
        self.sample_every = sample_every
        # A number of requests to send (instead of sending for `duration`), and a cap on requests in
        # flight (the sender waits at the cap: the rate becomes an upper bound, and a machine slower
        # than the rate is not overloaded without bound).
        self.requests = requests
        self.max_in_flight = max_in_flight
        self.pids = pids
        self.memory: list[dict[str, int]] = []
        self.sent = 0
        self.rate = rate
        self.duration = duration
        self.random = random.Random(seed)
        self.statuses: collections.Counter[str] = collections.Counter()
        self.overheads: list[float] = []
        self.clean_overheads: list[float] = []
        self.provider: list[float] = []
        self.answered = 0
        self.watch_snapshots = 0
        self.cut_short_ids: set[str] = set()  # request ids sent with a deadline shorter than the call

    def request(self, caller: str, request_id: str = "") -> router_pb2.RouteRequest:
        text = f"{self.random.choice(PROMPTS)} (#{self.random.randrange(10**9)})"
        return router_pb2.RouteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=text)],
            caller=caller,
            request_id=request_id,
        )

    async def one(self, router: Any, ledger: Any, kind: str, n: int) -> None:
        started = time.perf_counter()
        try:
            if kind == "stats":
                await ledger.GetStats(ledger_pb2.GetStatsRequest(), timeout=10)
                self.statuses["OK"] += 1
                return
            if kind == "stream":
                summary = None
                async for event in router.RouteStream(
                    router_pb2.RouteStreamRequest(**_stream_fields(self.request("soak"))), timeout=60
                ):
                    if event.HasField("summary"):
                        summary = event.summary
                if summary is not None:
                    self._overhead(started, summary)
            elif kind == "cancel":
                self.cut_short_ids.add(request_id := f"soak-cancel-{n}")
                await router.Route(self.request("soak", request_id), timeout=self.random.uniform(0.05, 0.4))
            elif kind == "retry":
                request = self.request("soak", request_id=f"soak-retry-{n}")
                first = await router.Route(request, timeout=60)
                self._overhead(started, first)
                again = await router.Route(request, timeout=60)
                assert again.replayed and again.run_id == first.run_id, "a retry was not replayed"
            else:
                caller = BUDGET_CALLER if kind == "budget" else "soak"
                self._overhead(started, await router.Route(self.request(caller), timeout=60))
            self.statuses["OK"] += 1
        except grpc.aio.AioRpcError as error:
            self.statuses[error.code().name] += 1

    def _overhead(self, started: float, response: router_pb2.RouteResponse) -> None:
        total_ms = (time.perf_counter() - started) * 1000
        provider = _provider_ms(response)
        self.answered += 1
        self.provider.append(provider)
        self.overheads.append(max(total_ms - provider, 0.0))
        if len(response.attempts) == 1:
            self.clean_overheads.append(max(total_ms - provider, 0.0))

    async def watch(self, ledger: Any, stop: asyncio.Event) -> None:
        stream = ledger.WatchSpend(ledger_pb2.WatchSpendRequest(interval_seconds=1.0))
        try:
            while not stop.is_set():
                await stream.read()
                self.watch_snapshots += 1
        except grpc.aio.AioRpcError:
            pass
        finally:
            stream.cancel()

    async def run(self) -> tuple[int, float, float]:
        """Send for `duration` seconds (or `requests` requests); returns how many requests were sent,
        for how long, and how long the ones still in flight then took to finish."""
        p = self.stack.ports
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{p.router}") as router_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{p.ledger}") as ledger_channel,
        ):
            router = router_pb2_grpc.RouterServiceStub(router_channel)
            ledger = ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
            await ledger.SetBudget(
                ledger_pb2.SetBudgetRequest(
                    budget=ledger_pb2.Budget(
                        caller=BUDGET_CALLER, period=ledger_pb2.BUDGET_PERIOD_DAILY, hard_limit_usd=0.002
                    )
                )
            )
            stop = asyncio.Event()
            watcher = asyncio.create_task(self.watch(ledger, stop))
            sampler = asyncio.create_task(self.sample(stop, self.sample_every))
            kinds, weights = zip(*MIX, strict=True)
            tasks: set[asyncio.Task[None]] = set()
            slots = asyncio.Semaphore(self.max_in_flight) if self.max_in_flight else None
            started, sent = time.monotonic(), 0
            while not self._done(time.monotonic() - started, sent):
                due = int((time.monotonic() - started) * self.rate) + 1
                if self.requests is not None:
                    due = min(due, self.requests)
                while sent < due:
                    if slots is not None:
                        await slots.acquire()
                    kind = self.random.choices(kinds, weights)[0]
                    task = asyncio.create_task(self.one(router, ledger, kind, sent))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    if slots is not None:
                        task.add_done_callback(lambda _: slots.release())
                    sent += 1
                    self.sent = sent
                await asyncio.sleep(max(0.0, (due / self.rate) - (time.monotonic() - started)))
            ended = time.monotonic()
            await asyncio.gather(*tasks)
            drained = time.monotonic() - ended
            stop.set()
            await asyncio.wait_for(watcher, 5)
            await sampler
            return sent, ended - started, drained

    def _done(self, elapsed: float, sent: int) -> bool:
        return sent >= self.requests if self.requests is not None else elapsed >= self.duration

    async def sample(self, stop: asyncio.Event, every: float = 10.0) -> None:
        while not stop.is_set():
            sample = {"sent": self.sent, **{name: _proc(pid)["rss_kib"] for name, pid in self.pids.items()}}
            self.memory.append(sample)
            if len(self.memory) % 6 == 1:  # every sixth on stderr (a minute by default): progress
                print(f"soak: {json.dumps(sample)} {dict(self.statuses)}", file=sys.stderr, flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)


def _stream_fields(request: router_pb2.RouteRequest) -> dict[str, Any]:
    return {"messages": request.messages, "caller": request.caller, "request_id": request.request_id}


def soak(
    duration: float,
    rate: float,
    seed: int = 7,
    latency_scale: float = 1.0,
    sample_every: float = 10.0,
    requests: int | None = None,
    max_in_flight: int | None = None,
) -> Results:
    """The soak: for `duration` seconds, or until `requests` requests were sent (then `duration` is
    unused), at most `rate` a second and `max_in_flight` at a time."""
    with tempfile.TemporaryDirectory(prefix="llmroute-soak-") as state:
        stack = Stack(
            state_dir=Path(state),
            ports=Ports.free(),
            extra_env={
                "SIMULATOR_LATENCY_SCALE": str(latency_scale),
                "ROUTER_CLASSIFIER_MODE": "remote",  # every request through the classifier service
                "CLASSIFIER_STRATEGY": "local",  # no LLM classifier: its calls are not attempts
                "ROUTER_SIMULATOR": "always",
                "ROUTER_WARM_UP": "false",
                "ROUTER_LOG_LEVEL": "WARNING",
                "LEDGER_LOG_LEVEL": "WARNING",
                "CLASSIFIER_LOG_LEVEL": "WARNING",
            },
        )
        services = ("simulator", "ledger", "classifier", "router")
        with stack:
            stack.start(services)
            simulator(stack, "/_sim/faults", FAULTS)
            pids = {name: stack.processes[name].pid for name in services}
            before = {name: _proc(pid) for name, pid in pids.items()}
            runner = Soak(stack, rate, duration, seed, pids, sample_every, requests, max_in_flight)
            sent, sending, drained = asyncio.run(runner.run())
            after = {name: _proc(pid) for name, pid in pids.items()}
            books = check(stack, runner.cut_short_ids)
        return Results(
            duration_s=round(sending, 1),
            rate=rate,
            sent=sent,
            by_status=dict(runner.statuses),
            overhead_ms=_quantiles(runner.overheads),
            overhead_one_attempt_ms=_quantiles(runner.clean_overheads),
            provider_ms_p50=round(_percentile(runner.provider, 0.5), 1),
            offered_rps=round(sent / sending, 1),
            answered_rps=round(runner.answered / (sending + drained), 1),
            drained_s=round(drained, 1),
            services={
                name: {
                    "rss_kib_start": before[name]["rss_kib"],
                    "rss_kib_end": after[name]["rss_kib"],
                    "fds_start": before[name]["fds"],
                    "fds_end": after[name]["fds"],
                }
                for name in services
            },
            ledger_attempts=books.stats.totals.attempts,
            simulator_calls=books.sim["totals"]["requests"],
            problems=books.problems,
            phantoms=books.phantoms,
            reconciled=not books.problems,
            watch_snapshots=runner.watch_snapshots,
            memory=runner.memory,
            memory_tenth=_tenth(runner.memory, sent),
            memory_growth=_growth(runner.memory, services, sent, after),
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument(
        "--requests", type=int, help="send this many requests (at RATE; instead of a duration)"
    )
    parser.add_argument(
        "--max-in-flight", type=int, help="at most this many requests at a time (RATE then an upper bound)"
    )
    parser.add_argument("--latency-scale", type=float, default=1.0, help="the simulator's latency scale")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = soak(
        args.duration,
        args.rate,
        latency_scale=args.latency_scale,
        sample_every=args.sample_every,
        requests=args.requests,
        max_in_flight=args.max_in_flight,
    )
    text = json.dumps(asdict(results), indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if not results.reconciled:
        sys.exit("soak: the ledger does not reconcile with the simulator")


if __name__ == "__main__":
    main()
