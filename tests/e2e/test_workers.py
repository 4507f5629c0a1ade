"""ROUTER_WORKERS: several router processes on one port, started and stopped as one service."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from devstack.stack import Ports, Stack
from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2, router_pb2_grpc

pytestmark = pytest.mark.e2e


def _workers_that_answered(log: Path) -> set[int]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    # Requests that came through the server (they carry a caller), not a worker's own warm-up calls.
    return {line["worker"] for line in lines if line.get("event") == "route_completed" and line.get("caller")}


def test_router_workers_share_the_port_and_stop_together(tmp_path: Path) -> None:
    env = {"SIMULATOR_LATENCY_SCALE": "0", "ROUTER_SIMULATOR": "always", "ROUTER_WORKERS": "2"}
    with Stack(state_dir=tmp_path, ports=Ports.free(), extra_env=env) as stack:
        stack.start()
        address = f"127.0.0.1:{stack.ports.router}"
        deadline = time.monotonic() + 60
        answered: set[int] = set()
        while answered != {0, 1}:
            assert time.monotonic() < deadline, f"only workers {answered} answered"
            # A new connection each time: the kernel spreads connections, not requests, over the workers.
            with grpc.insecure_channel(address) as channel:
                reply = router_pb2_grpc.RouterServiceStub(channel).Route(
                    router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content="Say hi")]),
                    timeout=30,
                )
            assert reply.content
            answered = _workers_that_answered(stack.log_path("router"))
        # Each worker spools its own records (one writer per spool file).
        assert {p.name for p in tmp_path.glob("router-spool-w*.db")} == {
            "router-spool-w0.db",
            "router-spool-w1.db",
        }
        codes = stack.stop()
        log_tail = [line[:120] for line in stack.log_path("router").read_text().splitlines()[-8:]]
    assert codes["router"] == 0, log_tail


def _worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]


def test_a_crashed_worker_stops_the_others_and_the_service_exits_with_an_error(tmp_path: Path) -> None:
    env = {"SIMULATOR_LATENCY_SCALE": "0", "ROUTER_SIMULATOR": "always", "ROUTER_WORKERS": "2"}
    with Stack(state_dir=tmp_path, ports=Ports.free(), extra_env=env) as stack:
        stack.start()
        router = stack.processes["router"]
        workers = _worker_pids(router.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        # The orchestrator (compose, Kubernetes) sees the service fail and restarts it whole.
        assert router.wait(timeout=30) != 0
        assert not Path(f"/proc/{workers[1]}").exists()  # the other worker was stopped and reaped
