"""Runs the three services, the simulator and the gateway as separate processes, the way the containers
run them.

Used by `make run`, `make demo` and the end-to-end tests. Each process gets the environment the
docker-compose file gives its container; readiness is the standard gRPC health check (the
simulator's /health, the gateway's /readyz), and shutdown is SIGTERM, as a container runtime sends it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from service_kit import health_rpc

ROOT = Path(__file__).resolve().parent.parent
# Service name → the module each container runs (`python -m <module>`).
MODULES = {
    "simulator": "simulator",
    "ledger": "ledger_svc",
    "classifier": "classifier_svc",
    "router": "router_svc",
    "gateway": "gateway",
}
# What `start()` runs unless told otherwise; `make run` and `make demo` add the gateway.
SERVICES = ("simulator", "ledger", "classifier", "router")
WITH_GATEWAY = (*SERVICES, "gateway")


@dataclass
class Ports:
    router: int = 50051
    classifier: int = 50052
    ledger: int = 50053
    simulator: int = 8089
    gateway: int = 8080

    @classmethod
    def free(cls) -> Ports:
        # All bound at once, so the kernel cannot hand out the same free port twice.
        with contextlib.ExitStack() as held:
            sockets = [held.enter_context(socket.socket()) for _ in dataclasses.fields(cls)]
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            return cls(*(int(sock.getsockname()[1]) for sock in sockets))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """The processes of one llmroute deployment on this machine."""

    state_dir: Path
    ports: Ports = field(default_factory=Ports)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Extra processes of a service (a second router...): name → (service, port).
    replicas: dict[str, tuple[str, int]] = field(default_factory=dict)

    def environments(self) -> dict[str, dict[str, str]]:
        """Per-service environment, as docker-compose.yml declares it (tests check the two agree)."""
        p = self.ports
        return {
            "simulator": {"SIMULATOR_HOST": "127.0.0.1", "SIMULATOR_PORT": str(p.simulator)},
            "ledger": {
                "LEDGER_HOST": "127.0.0.1",
                "LEDGER_PORT": str(p.ledger),
                "LEDGER_DATABASE_URL": f"sqlite+aiosqlite:///{self.state_dir / 'ledger.db'}",
            },
            "classifier": {"CLASSIFIER_HOST": "127.0.0.1", "CLASSIFIER_PORT": str(p.classifier)},
            "router": {
                "ROUTER_HOST": "127.0.0.1",
                "ROUTER_PORT": str(p.router),
                "ROUTER_CLASSIFIER_ADDRESS": f"127.0.0.1:{p.classifier}",
                "ROUTER_LEDGER_ADDRESS": f"127.0.0.1:{p.ledger}",
                "ROUTER_SIMULATOR_URL": f"http://127.0.0.1:{p.simulator}/v1",
                "ROUTER_SPOOL_PATH": str(self.state_dir / "router-spool.db"),
            },
            "gateway": {
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(p.gateway),
                "GATEWAY_ROUTER_ADDRESS": f"127.0.0.1:{p.router}",
                "GATEWAY_LEDGER_ADDRESS": f"127.0.0.1:{p.ledger}",
            },
        }

    def start(self, services: tuple[str, ...] = SERVICES, timeout: float = 90) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        envs = self.environments()
        for name in services:
            self.start_one(name, envs[name])
        self.wait_ready(services, timeout)

    def start_replica(self, service: str, name: str, env: Mapping[str, str], timeout: float = 90) -> int:
        """One more process of `service` on a port of its own, its environment plus `env` (which
        must give it its own state, a spool path for a router); returns the port."""
        port = free_port()
        prefix = {"router": "ROUTER", "ledger": "LEDGER", "classifier": "CLASSIFIER"}[service]
        self.replicas[name] = (service, port)
        self.start_one(name, self.environments()[service], {f"{prefix}_PORT": str(port), **env})
        self.wait_ready((name,), timeout)
        return port

    def start_one(
        self, name: str, service_env: Mapping[str, str], overrides: Mapping[str, str] | None = None
    ) -> None:
        env = {
            **os.environ,
            **service_env,
            **self.extra_env,
            **(overrides or {}),
        }
        module = MODULES[self.replicas[name][0] if name in self.replicas else name]
        log_dir = self.log_dir or self.state_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"{name}.log").open("ab") as out:
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop the services in order.
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, services: tuple[str, ...], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for name in services:
            while not self._ready(name):
                process = self.processes[name]
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}; see {self.log_path(name)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not ready after {timeout}s; see {self.log_path(name)}")
                time.sleep(0.1)

    def log_path(self, name: str) -> Path:
        return (self.log_dir or self.state_dir) / f"{name}.log"

    def _ready(self, name: str) -> bool:
        if name in ("simulator", "gateway"):
            path = "/health" if name == "simulator" else "/readyz"
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{getattr(self.ports, name)}{path}", timeout=1
                ) as reply:
                    return bool(reply.status == 200)
            except (OSError, http.client.HTTPException):
                return False
        port = self.replicas[name][1] if name in self.replicas else getattr(self.ports, name)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = health_rpc.check(channel)(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self, timeout: float = 20) -> dict[str, int | None]:
        """SIGTERM in reverse start order (router first, so it can flush to the ledger); exit codes."""
        codes: dict[str, int | None] = {}
        for name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            codes[name] = process.returncode
        self.processes.clear()
        return codes

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
