"""Faults under load: the soak's traffic (benchmarks/soak.py) with one fault injected while it runs,
and the checks every fault test makes afterwards.

`FaultLoad` is the soak's open-loop generator (`Soak.run`: its mix of Route, RouteStream, idempotent
retries, short deadlines, a budgeted caller, GetStats, and a WatchSpend stream) with each call's
outcome kept: its status code and `ErrorInfo` reason, the stream deltas it received, the warnings and
classification of its answer. `run_with(fault)` starts the traffic, runs `fault` once answers are
flowing, and keeps the traffic going a few seconds past the fault's end.

`check()` is what every test asserts: every call got a status allowed for its kind (a clear one: an
`ErrorInfo` reason for every refusal the router makes), no service died that the test did not kill,
and the ledger reconciles exactly with the simulator's own counters (per model; every run's attempts
numbered 1..n with no gap; no key twice; the router's spool drained).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import grpc
from grpc_health.v1 import health_pb2

from benchmarks.books import Books, check
from benchmarks.soak import BUDGET_CALLER, Soak
from devstack.stack import MODULES, ROOT, Stack
from llmroute.ledger.v1 import ledger_pb2
from llmroute.router.v1 import router_pb2
from service_kit import health_rpc
from tests.rich_status import details

# What a router call of each kind may end with when nothing is wrong: (code, ErrorInfo reason); "*"
# is any reason. Client-side deadlines and cancellations carry no reason (the client made them).
BASE_ALLOWED: dict[str, set[tuple[str, str]]] = {
    "route": {("OK", "")},
    "retry": {("OK", "")},
    "stream": {("OK", "")},
    "budget": {("OK", ""), ("RESOURCE_EXHAUSTED", "BUDGET_EXCEEDED")},
    "cancel": {("OK", ""), ("DEADLINE_EXCEEDED", "*")},
    "midstream": {("OK", ""), ("CANCELLED", "")},
    "stream_deadline": {("OK", ""), ("DEADLINE_EXCEEDED", "*")},
    "stats": {("OK", "")},
}
ROUTER_KINDS = ("route", "retry", "stream", "budget", "cancel", "midstream", "stream_deadline")
# A provider failure the router could not route around: every candidate failed, or a stream broke
# after its first delta (it cannot be retried then).
PROVIDERS_FAILED = {("UNAVAILABLE", "ALL_PROVIDERS_FAILED"), ("UNAVAILABLE", "NO_CANDIDATE_AVAILABLE")}
STREAM_BROKEN = {("UNAVAILABLE", "PROVIDER_STREAM_BROKEN")}
# Markers of a crash or a dead task in a service's log.
CRASH_MARKERS = (
    "Traceback (most recent call last)",
    "Task exception was never retrieved",
    '"level": "critical"',
)


@dataclass
class Call:
    """One request of the load and how it ended."""

    kind: str
    n: int
    started: float  # seconds since the load started
    ended: float = 0.0
    code: str = ""
    reason: str = ""
    request_id: str = ""
    deltas: int = 0
    warnings: tuple[str, ...] = ()
    source: int = 0  # the answer's classification source
    attempts: int = 0
    output_tokens: int = 0


class FaultLoad(Soak):
    """The soak's traffic, with every call's outcome kept.

    Args beyond the soak's: `streams`: share of Route calls sent as RouteStream instead (on top of
    the soak's 15%); `midstream`: share of streams the client cancels after `cancel_after` deltas;
    `stream_deadline`: share of streams sent with a `stream_deadline_s` deadline; `stream_directive`:
    text appended to every stream's prompt (a simulator fault directive, `[[sim:fault=...]]`).
    """

    def __init__(
        self,
        stack: Stack,
        *,
        rate: float = 10.0,
        duration: float = 10.0,
        seed: int = 7,
        streams: float = 0.0,
        midstream: float = 0.2,
        cancel_after: int = 3,
        stream_deadline: float = 0.0,
        stream_deadline_s: float = 2.0,
        stream_directive: str = "",
        midstream_directive: str = "",
        name: str = "faults",
    ) -> None:
        super().__init__(stack, rate, duration, seed, pids={})
        self.streams = streams
        self.midstream = midstream
        self.cancel_after = cancel_after
        self.stream_deadline = stream_deadline
        self.stream_deadline_s = stream_deadline_s
        self.stream_directive = stream_directive
        self.midstream_directive = midstream_directive
        self.name = name
        self.calls: list[Call] = []
        self.problems: list[str] = []
        self.fault_started = self.fault_ended = 0.0
        self.t0 = time.monotonic()

    # Request ids of every call a client cut short, over all loads in this process.
    cut_short: ClassVar[set[str]] = set()

    # ---- the traffic ------------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _kind(self, kind: str) -> str:
        if kind == "route" and self.random.random() < self.streams:
            kind = "stream"
        if kind == "stream":
            draw = self.random.random()
            if draw < self.midstream:
                return "midstream"
            if draw < self.midstream + self.stream_deadline:
                return "stream_deadline"
        return kind

    async def one(self, router: Any, ledger: Any, kind: str, n: int) -> None:
        call = Call(kind=self._kind(kind), n=n, started=self.now())
        started = time.perf_counter()
        try:
            await self._call(call, router, ledger, started)
            call.code = call.code or "OK"
        except grpc.aio.AioRpcError as error:
            call.code, call.reason = error.code().name, details(error).reason
        except Exception as error:  # the load generator's own failure: reported, never hidden
            call.code = f"client:{type(error).__name__}"
            self.problems.append(f"call {n} ({call.kind}): {type(error).__name__}: {error}")
        finally:
            call.ended = self.now()
            self.calls.append(call)
            self.statuses[call.code] += 1

    async def _call(self, call: Call, router: Any, ledger: Any, started: float) -> None:
        kind, n = call.kind, call.n
        if kind == "stats":
            await ledger.GetStats(ledger_pb2.GetStatsRequest(), timeout=10)
        elif kind in ("stream", "midstream", "stream_deadline"):
            call.request_id = f"{self.name}-{kind}-{n}"
            request = self.request("faults", request_id=call.request_id)
            directive = self.midstream_directive if kind == "midstream" else ""
            if directive or self.stream_directive:
                text = f"{request.messages[0].content} {directive or self.stream_directive}"
                request.messages[0].content = text
            timeout = self.stream_deadline_s if kind == "stream_deadline" else 60
            stream = router.RouteStream(
                router_pb2.RouteStreamRequest(
                    messages=request.messages, caller=request.caller, request_id=request.request_id
                ),
                timeout=timeout,
            )
            async for event in stream:
                if event.HasField("delta"):
                    call.deltas += 1
                    if kind == "midstream" and call.deltas >= self.cancel_after:
                        stream.cancel()
                        call.code = "CANCELLED"
                        return
                elif event.HasField("summary"):
                    self._answered(call, event.summary, started)
        elif kind == "cancel":
            call.request_id = f"{self.name}-cancel-{n}"
            request = self.request("faults", request_id=call.request_id)
            await router.Route(request, timeout=self.random.uniform(0.05, 0.4))
        elif kind == "retry":
            call.request_id = f"{self.name}-retry-{n}"
            request = self.request("faults", request_id=call.request_id)
            first = await router.Route(request, timeout=60)
            self._answered(call, first, started)
            again = await router.Route(request, timeout=60)
            if not (again.replayed and again.run_id == first.run_id):
                self.problems.append(f"retry {call.request_id} was not replayed")
        else:
            caller = BUDGET_CALLER if kind == "budget" else "faults"
            self._answered(call, await router.Route(self.request(caller), timeout=60), started)

    def _answered(self, call: Call, response: router_pb2.RouteResponse, started: float) -> None:
        call.warnings = tuple(response.warnings)
        call.source = response.decision.source
        call.attempts = len(response.attempts)
        call.output_tokens = response.usage.output_tokens
        self._overhead(started, response)

    # ---- running it with a fault ------------------------------------------------------------------

    async def run_with(
        self, fault: Callable[[FaultLoad], Awaitable[None]], *, warm: int = 10, tail: float = 3.0
    ) -> None:
        """Send the traffic; once `warm` calls were answered OK, run `fault(self)`; keep sending until
        `duration` seconds have passed and at least `tail` seconds after the fault returned; then wait
        for every call to end."""
        self.t0 = time.monotonic()
        # Soak.run sends while its elapsed time is under `duration`, read on every tick: no end while
        # the fault runs, then `tail` more seconds (or what is left of `duration`).
        planned, self.duration = self.duration, float("inf")
        sending = asyncio.create_task(self.run())
        try:
            await self.until(lambda: self.count(code="OK") >= warm, "traffic flowing", timeout=60)
            self.fault_started = self.now()
            await fault(self)
            self.fault_ended = self.now()
            self.duration = max(planned, self.fault_ended + tail)
        except BaseException:
            self.duration = 0
            with contextlib.suppress(Exception):
                await sending
            raise
        ran = await sending  # (sent, seconds sending, seconds draining)
        self.sent, self.drained = ran[0], ran[-1]

    def summary(self) -> dict[str, Any]:
        """What the window was: its length, the calls sent, their statuses."""
        statuses: Counter[str] = Counter(f"{c.code}{'/' + c.reason if c.reason else ''}" for c in self.calls)
        return {
            "seconds": round(self.now(), 1),
            "sent": len(self.calls),
            "statuses": dict(statuses.most_common()),
        }

    def interrupted_ids(self) -> set[str]:
        """The request ids of calls the client itself cut short (a deadline, a cancel), in this load
        and every earlier one in this process (the ledger of a shared stack holds them all)."""
        mine = {
            c.request_id for c in self.calls if c.request_id and c.code in ("DEADLINE_EXCEEDED", "CANCELLED")
        }
        FaultLoad.cut_short |= mine
        return set(FaultLoad.cut_short)

    def count(self, *, code: str | None = None, kinds: Iterable[str] = (), since: float = 0.0) -> int:
        wanted = set(kinds)
        return sum(
            1
            for call in list(self.calls)
            if (code is None or call.code == code)
            and (not wanted or call.kind in wanted)
            and call.started >= since
        )

    @staticmethod
    async def until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        """Poll `condition` (a function, or a coroutine function) until it returns a true value."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s")
            await asyncio.sleep(0.05)


# ---- the checks ------------------------------------------------------------------------------------


def unclear(
    load: FaultLoad, extra: Mapping[str, set[tuple[str, str]]] | None = None
) -> dict[tuple[str, str, str], int]:
    """The calls whose (kind, code, reason) is not allowed, counted. `extra` adds allowances per kind
    (the key "router" for every router kind)."""
    extra = dict(extra or {})
    every_router = extra.pop("router", set())
    bad: Counter[tuple[str, str, str]] = Counter()
    for call in load.calls:
        allowed = BASE_ALLOWED[call.kind] | extra.get(call.kind, set())
        if call.kind in ROUTER_KINDS:
            allowed |= every_router
        if (call.code, call.reason) not in allowed and (call.code, "*") not in allowed:
            bad[(call.kind, call.code, call.reason)] += 1
    return dict(bad)


def reconcile(stack: Stack, interrupted_ids: Iterable[str] | None = None) -> Books:
    """The books hold (benchmarks/books.py: nothing lost, nothing doubled, phantoms only where a client
    cut a request short before the provider received it), or the test fails saying what does not."""
    books = check(stack, FaultLoad.cut_short if interrupted_ids is None else interrupted_ids)
    assert not books.problems, books.problems
    return books


def healthy(port: int, service: str = "") -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_rpc.check(channel)(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def assert_alive(stack: Stack, pids: Mapping[str, int], killed: Iterable[str] = ()) -> None:
    """No crash: every service runs and is SERVING; those the test did not kill are the processes
    that were there before it (never restarted), and their logs show no traceback or dead task."""
    killed = set(killed)
    for name, process in stack.processes.items():
        assert process.poll() is None, f"{name} exited with {process.returncode}; see {stack.log_path(name)}"
        if name not in killed:
            assert process.pid == pids[name], f"{name} was restarted"
            log = stack.log_path(name).read_text(errors="replace")
            for marker in CRASH_MARKERS:
                assert marker not in log, f"{name}'s log has {marker!r}; see {stack.log_path(name)}"
    ports = stack.ports
    for name, port in (("router", ports.router), ("classifier", ports.classifier), ("ledger", ports.ledger)):
        if name in stack.processes:
            assert healthy(port), f"{name} is not SERVING"


def pids_of(stack: Stack) -> dict[str, int]:
    return {name: process.pid for name, process in stack.processes.items()}


def kill(stack: Stack, name: str) -> None:
    """SIGKILL one service, by the pid we started it with."""
    process = stack.processes[name]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


def restart(stack: Stack, name: str, timeout: float = 90) -> None:
    """Start a killed service again, with the same environment and port; returns once it is ready."""
    stack.start_one(name, stack.environments()[name])
    stack.wait_ready((name,), timeout)
    assert_own_ports(stack, (name,))


def _listening_inode(port: int) -> str | None:
    """The inode of the socket listening on 127.0.0.1:`port` (or any address), if one is."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[1].endswith(wanted) and fields[3] == "0A":  # LISTEN
                    return fields[9]
    return None


def _owns(pid: int, inode: str) -> bool:
    target = f"socket:[{inode}]"
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return True
    return False


class PortTaken(RuntimeError):
    """Another process (another test run on this machine) listens on a port a service was given."""


def assert_own_ports(stack: Stack, names: Iterable[str] | None = None, timeout: float = 30) -> None:
    """Each service listens on its own port itself. Ports come free from the kernel and services take
    seconds to start; on a machine shared with other test runs, another process can take a port in
    between, and then a health check would be answered by it."""
    deadline = time.monotonic() + timeout
    for name in names or list(stack.processes):
        process = stack.processes[name]
        port = getattr(stack.ports, name)
        while True:
            inode = _listening_inode(port)
            if inode is not None and _owns(process.pid, inode):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise PortTaken(f"{name} does not listen on its port {port}; see {stack.log_path(name)}")
            time.sleep(0.1)


def start_checked(stack: Stack) -> None:
    """Start the services, each on a port it listens on itself; if another process took one of the
    ports before its service bound it, start again once on fresh ports."""
    for tries_left in (1, 0):
        try:
            stack.start()
            assert_own_ports(stack)
            return
        except (PortTaken, RuntimeError, TimeoutError):
            stack.stop()
            if not tries_left:
                raise
            stack.ports = type(stack.ports).free()


def log_has(stack: Stack, name: str, event: str) -> bool:
    return f'"event": "{event}"' in stack.log_path(name).read_text(errors="replace")


# ---- the router's spool on a small disk ------------------------------------------------------------


class SpoolDisk:
    """Where the router's spool lives, and how to fill it.

    Normally a tmpfs of `size` mounted for the test (we run as root); `fill()` truncates the spool's
    WAL and writes a file until the file system is full, `free()` deletes it. Where mounting is not permitted, the fallback caps the
    router's file writes instead (RLIMIT_FSIZE at 0 with SIGXFSZ ignored, set on the running process
    with prlimit): every write to the spool fails the way a full disk fails it, with an error. The
    router's output then goes through a pipe, which the cap does not stop (see `CappedStack`)."""

    def __init__(self, directory: Path, size: str = "16m") -> None:
        self.directory = directory
        self.size = size
        self.mounted = False
        self.capped_pid: int | None = None
        self.filler = directory / "filler"
        self.why_not_mounted = ""

    def mount(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.environ.get("LLMROUTE_FAULTS_NO_TMPFS") == "1":
            self.why_not_mounted = "LLMROUTE_FAULTS_NO_TMPFS=1"
            return
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        self.mounted = result.returncode == 0
        self.why_not_mounted = "" if self.mounted else (result.stderr.strip() or f"exit {result.returncode}")

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.directory)], check=False, capture_output=True)
            self.mounted = False

    @property
    def method(self) -> str:
        return "tmpfs" if self.mounted else "RLIMIT_FSIZE"

    def fill(self, router_pid: int, spool: Path) -> None:
        if self.mounted:
            # SQLite reuses its WAL file from the start after each checkpoint: a full file system stops
            # the spool only once the WAL must grow. Truncate it first (as a checkpoint may), so the
            # spool's next writes need new space, then take all the space there is.
            with contextlib.closing(sqlite3.connect(spool, timeout=30)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            descriptor = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for size in (1 << 20, 4096):  # megabytes, then the last pages
                    with contextlib.suppress(OSError):  # ENOSPC: full
                        while True:
                            os.write(descriptor, b"\0" * size)
            finally:
                os.close(descriptor)
            return
        import resource

        self.capped_pid = router_pid
        resource.prlimit(router_pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

    def free(self) -> None:
        if self.mounted:
            self.filler.unlink(missing_ok=True)
            return
        if self.capped_pid is not None:
            import resource

            with contextlib.suppress(ProcessLookupError):
                resource.prlimit(
                    self.capped_pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
                )
            self.capped_pid = None

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.directory).free


@dataclass
class CappedStack(Stack):
    """A Stack whose router writes its output through a pipe (copied to its log file by a thread), so
    a cap on the router's file sizes (SpoolDisk's fallback) stops its spool and not its logging; the
    router ignores SIGXFSZ (a write over the cap fails with EFBIG instead of killing it)."""

    pipe_router: bool = False

    def start_one(
        self, name: str, service_env: Mapping[str, str], overrides: Mapping[str, str] | None = None
    ) -> None:
        if name != "router" or not self.pipe_router:
            super().start_one(name, service_env, overrides)
            return
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            **service_env,
            **self.extra_env,
            **(overrides or {}),
        }
        log_path = self.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [sys.executable, "-m", MODULES[name]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
        )
        self.processes[name] = process

        def copy() -> None:
            assert process.stdout is not None
            with log_path.open("ab") as out:
                for line in process.stdout:
                    out.write(line)
                    out.flush()

        threading.Thread(target=copy, name="router-log", daemon=True).start()


# ---- a PostgreSQL server of the test's own ---------------------------------------------------------


def postgres_bin() -> Path:
    """The newest PostgreSQL server binaries of the Debian install."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise FileNotFoundError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return found[-1].parent


class PrivatePostgres:
    """A PostgreSQL server of this test alone (initdb in a temporary directory, on a free port,
    trust authentication), so it can be stopped and started under the ledger without touching the
    machine's shared server. Run as the `postgres` user when we are root (the server refuses root)."""

    def __init__(self, port: int) -> None:
        import pwd
        import tempfile

        self.port = port
        self.bin = postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="llmroute-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            owner = pwd.getpwnam(self.user)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr[-2000:]}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
