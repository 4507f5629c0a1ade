"""The three services and the simulator as separate processes, driven by grpcurl through reflection."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.stack import Ports, Stack
from router_svc import WARM_UP_CALLER
from service_kit.policy import DEFAULT_POLICY_PATH
from service_kit.pricing import PriceBook
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
SECRET_PROMPT_MARKER = "zebra-umbrella-4417"
PROMPTS = [
    ("moderation", f"Is this spam? Reply yes or no. 'Claim your prize now' {SECRET_PROMPT_MARKER}"),
    ("support", "Translate to German: 'Your parcel arrives tomorrow.'"),
    ("analyst", "Prove step by step that the sum of the first n odd numbers is n^2, then generalize."),
    ("coder", "Implement a thread-safe LRU cache in Python with TTL expiry and explain the edge cases."),
]


def grpcurl(
    *args: str, data: dict[str, Any] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [GRPCURL, "-plaintext", "-format-error"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"grpcurl {args} failed: {result.stdout} {result.stderr}")
    return result


@contextlib.contextmanager
def running_stack(state_dir: Path) -> Iterator[Stack]:
    policy = state_dir / "policy.yaml"  # the router's own copy, which a test may rewrite
    policy.write_text(DEFAULT_POLICY_PATH.read_text())
    ports = Ports.free()
    with Stack(
        state_dir=state_dir,
        ports=ports,
        extra_env={
            "SIMULATOR_LATENCY_SCALE": "0",
            # The classifier's cascade has an LLM (on the simulator), as `make demo` runs it: the router
            # classifies in process and asks the classifier service only where that LLM would answer.
            "CLASSIFIER_LLM_BASE_URL": f"http://127.0.0.1:{ports.simulator}/v1",
            "ROUTER_SIMULATOR": "always",  # never a real provider, whatever this machine's environment holds
            "ROUTER_POLICY_PATH": str(policy),
            "CLASSIFIER_LOG_LEVEL": "DEBUG",
            "ROUTER_LOG_LEVEL": "DEBUG",
        },
    ) as stack:
        stack.start()
        yield stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the tests that leave nothing another could see: they read, route under callers
    of their own and look only at those callers' figures."""
    with running_stack(tmp_path_factory.mktemp("stack")) as stack:
        yield stack


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack for one test alone: one that counts everything the ledger holds, or changes the policy."""
    with running_stack(tmp_path) as stack:
        yield stack


def test_reflection_lists_each_service(stack: Stack) -> None:
    for port, service in (
        (stack.ports.router, "llmroute.router.v1.RouterService"),
        (stack.ports.classifier, "llmroute.classifier.v1.ClassifierService"),
        (stack.ports.ledger, "llmroute.ledger.v1.LedgerService"),
    ):
        listed = grpcurl(f"127.0.0.1:{port}", "list").stdout.split()
        assert service in listed and "grpc.health.v1.Health" in listed
        health = json.loads(
            grpcurl(f"127.0.0.1:{port}", "grpc.health.v1.Health/Check", data={"service": service}).stdout
        )
        assert health["status"] == "SERVING"
    described = grpcurl(
        f"127.0.0.1:{stack.ports.router}", "describe", "llmroute.router.v1.RouterService"
    ).stdout
    assert "rpc Route" in described and "rpc RouteStream" in described


def test_route_then_the_ledger_total_equals_the_routed_costs(own_stack: Stack) -> None:
    stack = own_stack  # the totals below are the whole ledger's: nothing but these requests in it
    router = f"127.0.0.1:{stack.ports.router}"
    routed = []
    for index, (caller, prompt) in enumerate(PROMPTS):
        reply = grpcurl(
            router,
            "llmroute.router.v1.RouterService/Route",
            data={
                "messages": [{"role": "user", "content": prompt}],
                "caller": caller,
                "requestId": f"e2e-{index}",
            },
        )
        routed.append(json.loads(reply.stdout))
    assert {r["tier"] for r in routed} >= {"TIER_SIMPLE"} and len({r["tier"] for r in routed}) >= 2
    assert all(r["simulated"] and r["usage"]["cost_usd"] > 0 for r in routed)
    routed_cost = sum(r["usage"]["cost_usd"] for r in routed)
    routed_baseline = sum(r["usage"]["baseline_cost_usd"] for r in routed)

    ledger = f"127.0.0.1:{stack.ports.ledger}"

    def reported() -> tuple[dict[str, Any], dict[str, Any], int] | None:
        stats = json.loads(grpcurl(ledger, "llmroute.ledger.v1.LedgerService/GetStats", data={}).stdout)
        by = {b["group_by"]: {g["key"]: g["totals"] for g in b["groups"]} for b in stats["breakdowns"]}
        routed_requests = sum(
            int(t["requests"]) for caller, t in by["GROUP_BY_CALLER"].items() if caller != WARM_UP_CALLER
        )
        return (stats, by, routed_requests) if routed_requests >= len(PROMPTS) else None

    stats, by, routed_requests = wait_until(reported, "the routed requests in the ledger")
    assert routed_requests == len(PROMPTS)
    # The ledger holds the routed requests plus the router's warm-up calls, each under its caller.
    warm_up = by["GROUP_BY_CALLER"][WARM_UP_CALLER]
    totals = stats["totals"]
    assert int(totals["requests"]) == len(PROMPTS) + int(warm_up["requests"])
    assert totals["cost_usd"] == pytest.approx(routed_cost + warm_up["cost_usd"], rel=1e-9)
    assert totals["baseline_cost_usd"] == pytest.approx(
        routed_baseline + warm_up["baseline_cost_usd"], rel=1e-9
    )
    for caller, _ in PROMPTS:
        expected = sum(
            r["usage"]["cost_usd"] for (c, _), r in zip(PROMPTS, routed, strict=True) if c == caller
        )
        assert by["GROUP_BY_CALLER"][caller]["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_bad_input_gets_invalid_argument_with_field_details(stack: Stack) -> None:
    reply = grpcurl(
        f"127.0.0.1:{stack.ports.router}",
        "llmroute.router.v1.RouterService/Route",
        data={"messages": [{"role": "user", "content": ""}]},
        check=False,
    )
    assert reply.returncode != 0
    error = json.loads(reply.stderr)  # grpcurl -format-error prints the status as JSON on stderr
    assert error["code"] == 3  # INVALID_ARGUMENT
    violations = [v for d in error["details"] if "field_violations" in d for v in d["field_violations"]]
    assert violations == [{"field": "messages[0].content", "description": "must not be empty"}]


def test_the_classifier_describes_its_llm_to_the_router(stack: Stack) -> None:
    described = json.loads(
        grpcurl(
            f"127.0.0.1:{stack.ports.classifier}", "llmroute.classifier.v1.ClassifierService/Describe"
        ).stdout
    )
    assert described["strategy"] == "cascade" and described["llm_model"]
    assert 0 < described["cascade_min_confidence"] <= 1
    _wait_for_log(stack, "router", '"event": "classifier_described"')


def test_request_id_travels_and_prompts_stay_out_of_logs(stack: Stack) -> None:
    # Unlike anything the local model was trained on, so it is unsure and the classifier's LLM decides.
    unfamiliar = f"Qwxz vrrp tlkk mnbv zzzq ploff gnarf {SECRET_PROMPT_MARKER}"
    reply = grpcurl(
        f"127.0.0.1:{stack.ports.router}",
        "llmroute.router.v1.RouterService/Route",
        data={"messages": [{"role": "user", "content": unfamiliar}], "requestId": "trace-me-77"},
    )
    assert json.loads(reply.stdout)["classification"]["source"] == "CLASSIFIER_SOURCE_LLM"
    _wait_for_log(stack, "classifier", '"request_id": "trace-me-77"')
    for name in ("router", "classifier", "ledger", "simulator"):
        assert SECRET_PROMPT_MARKER not in stack.log_path(name).read_text(), name


def test_sighup_reloads_the_policy_and_a_bad_one_keeps_the_old(own_stack: Stack) -> None:
    stack = own_stack  # its policy file is this test's own copy, changed below
    policy = stack.state_dir / "policy.yaml"
    router = stack.processes["router"]
    route = {"messages": [{"role": "user", "content": "Is this spam? 'free money'"}]}
    policy.write_text("tiers: [not, a, policy]\n")
    router.send_signal(signal.SIGHUP)
    _wait_for_log(stack, "router", '"event": "policy_rejected"')
    assert json.loads(
        grpcurl(
            f"127.0.0.1:{stack.ports.router}", "llmroute.router.v1.RouterService/Route", data=route
        ).stdout
    )["content"]

    changed = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    changed["baseline_model"] = "gpt-4.1"
    policy.write_text(yaml.safe_dump(changed))
    router.send_signal(signal.SIGHUP)
    _wait_for_log(stack, "router", '"baseline_model": "gpt-4.1"')
    reply = json.loads(
        grpcurl(
            f"127.0.0.1:{stack.ports.router}", "llmroute.router.v1.RouterService/Route", data=route
        ).stdout
    )
    tokens = reply["usage"]
    visible = int(tokens["output_tokens"]) - int(tokens.get("reasoning_tokens", 0))
    expected = PriceBook.from_litellm().cost("gpt-4.1", int(tokens["input_tokens"]), visible).usd
    assert reply["usage"]["baseline_cost_usd"] == pytest.approx(expected, rel=1e-9)


def _wait_for_log(stack: Stack, service: str, needle: str) -> None:
    wait_until(lambda: needle in stack.log_path(service).read_text(), f"{needle} logged by {service}")


def _simulator_in_flight(stack: Stack) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.simulator}/_sim/stats", timeout=10) as reply:
        return int(json.loads(reply.read())["in_flight"])


def test_sigterm_drains_an_in_flight_route_and_stops_every_service_cleanly(tmp_path: Path) -> None:
    env = {"SIMULATOR_LATENCY_SCALE": "0", "ROUTER_SIMULATOR": "always", "ROUTER_GRACE_SECONDS": "10"}
    with Stack(state_dir=tmp_path, ports=Ports.free(), extra_env=env) as stack:
        stack.start()
        # A slow answer is in flight when SIGTERM arrives: it must complete, then everything exits 0.
        slow = subprocess.Popen(
            [GRPCURL, "-plaintext", "-d", json.dumps({"messages": [{"role": "user", "content": "hi [[sim:fault=delay:2000]]"}]}),
             f"127.0.0.1:{stack.ports.router}", "llmroute.router.v1.RouterService/Route"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_until(lambda: _simulator_in_flight(stack) > 0, "the slow answer in flight at the provider")
        codes = stack.stop()
        out, err = slow.communicate(timeout=30)
    assert codes == {"router": 0, "classifier": 0, "ledger": 0, "simulator": 0}
    assert slow.returncode == 0, err
    assert json.loads(out)["content"]


def test_the_llmroute_command_routes_reads_stats_and_sets_budgets(stack: Stack) -> None:
    cli = [str(Path(sys.executable).parent / "llmroute"), "--router", f"127.0.0.1:{stack.ports.router}",
           "--ledger", f"127.0.0.1:{stack.ports.ledger}"]  # fmt: skip
    routed = subprocess.run([*cli, "route", "Translate to Dutch: good night", "--caller", "cli-test"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert routed.returncode == 0, routed.stderr
    assert routed.stdout.startswith("[simulated") and "TIER_" in routed.stderr and "$" in routed.stderr

    budget = subprocess.run([*cli, "budget", "set", "--caller", "cli-test", "--soft", "1", "--hard", "2"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert budget.returncode == 0, budget.stderr
    assert json.loads(budget.stdout)["budget"]["hard_limit_usd"] == 2
    bad = subprocess.run([*cli, "budget", "set", "--caller", "cli-test", "--soft", "-1"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode != 0 and "INVALID_ARGUMENT" in bad.stderr

    def reported() -> dict[str, Any] | None:
        stats = subprocess.run(
            [*cli, "stats", "--caller", "cli-test"], capture_output=True, text=True, timeout=60
        )
        assert stats.returncode == 0, stats.stderr
        totals: dict[str, Any] = json.loads(stats.stdout)["totals"]
        return totals if int(totals.get("requests", 0)) >= 1 else None

    totals = wait_until(reported, "the CLI's request in the ledger")
    assert int(totals["requests"]) == 1 and totals["cost_usd"] > 0


def test_llmroute_stats_watch_streams_live_spend(stack: Stack) -> None:
    cli = [str(Path(sys.executable).parent / "llmroute"), "--ledger", f"127.0.0.1:{stack.ports.ledger}"]
    watch = subprocess.Popen(
        [*cli, "stats", "--watch", "--interval", "0.2"], stdout=subprocess.PIPE, text=True
    )
    try:
        first, second = watch.stdout.readline(), watch.stdout.readline()  # type: ignore[union-attr]
    finally:
        watch.terminate()
        watch.wait(10)
    for line in (first, second):
        assert "requests, spend $" in line and "net savings $" in line
