"""Hostile input from outside: the services as separate processes, driven by the real `grpcurl`, and
malformed policy files at start and on live reload.

- JSON of the wrong types (strings for numbers, objects for strings, NaN, huge numbers, unknown enum
  names and numbers, unknown fields, text that is not JSON) for Route, Classify and RecordUsage, drawn
  by hypothesis: either grpcurl refuses it before sending (nothing reaches a service), or the service
  answers a clear status (`-format-error`: never INTERNAL, UNKNOWN or a hang); nothing refused is paid
  for; every service stays SERVING and a normal Route succeeds after each.
- A malformed policy at start: the router and the classifier exit non-zero, saying which file and why.
- A malformed policy on live reload (the file watcher and SIGHUP): rejected, the old one kept, the
  service keeps routing, and a good policy written afterwards is still picked up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2
from hypothesis import event, given
from hypothesis import strategies as st

from classifier_svc.server import create_server as create_classifier
from classifier_svc.settings import ClassifierSettings
from devstack.stack import ROOT, Ports, Stack
from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from service_kit import health_rpc
from service_kit.policy import DEFAULT_POLICY_PATH, PolicyError
from tests.fuzz.conftest import fuzz

pytestmark = pytest.mark.e2e

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
NORMAL = "Is this message spam? 'You won a free cruise, click here'"
# grpc.StatusCode values as grpcurl prints them (google.rpc.Code numbers).
NEVER = {2: "UNKNOWN", 4: "DEADLINE_EXCEEDED", 13: "INTERNAL"}
BAD_STARTS: dict[str, tuple[Path, subprocess.Popen[str]]] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("process-fuzz")
    for name in ("router", "classifier"):
        (state_dir / f"{name}-policy.yaml").write_text(DEFAULT_POLICY_PATH.read_text())
    # The router started with a malformed policy, beside the stack's own start (a process's imports
    # take seconds): test_a_malformed_policy_stops_the_router_at_start reads how it ended.
    bad = state_dir / "billion-laughs-policy.yaml"
    bad.write_bytes(MALFORMED["billion_laughs"])
    env = {
        **os.environ,
        "ROUTER_POLICY_PATH": str(bad),
        "ROUTER_PORT": "0",
        "ROUTER_SPOOL_PATH": str(state_dir / "bad-spool.db"),
        "ROUTER_CLASSIFIER_MODE": "remote",
    }
    BAD_STARTS["router"] = (
        bad,
        subprocess.Popen(
            [sys.executable, "-m", "router_svc"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
    )
    with Stack(
        state_dir=state_dir,
        ports=Ports.free(),
        extra_env={
            "SIMULATOR_LATENCY_SCALE": "0",
            "SIMULATOR_LOG_LEVEL": "WARNING",
            "ROUTER_SIMULATOR": "always",
            "ROUTER_WARM_UP": "false",
            "ROUTER_GRACE_SECONDS": "0",  # nothing in flight at the end: stop at once
            "CLASSIFIER_GRACE_SECONDS": "0",
            "LEDGER_GRACE_SECONDS": "0",
            "ROUTER_CLASSIFIER_MODE": "remote",  # no learned model to load: a faster start
            "CLASSIFIER_STRATEGY": "heuristic",
            "ROUTER_POLICY_PATH": str(state_dir / "router-policy.yaml"),
            "CLASSIFIER_POLICY_PATH": str(state_dir / "classifier-policy.yaml"),
        },
    ) as stack:
        stack.start()
        yield stack
        for channel in _CHANNELS.values():
            channel.close()
        _CHANNELS.clear()


def grpcurl(address: str, method: str, data: str) -> subprocess.CompletedProcess[str]:
    """grpcurl with the request text on stdin (any text, JSON or not), errors as JSON on stderr."""
    return subprocess.run(
        [GRPCURL, "-plaintext", "-format-error", "-max-time", "30", "-d", "@", address, method],
        input=data,
        capture_output=True,
        text=True,
        timeout=60,
    )


def provider_calls(stack: Stack) -> int:
    reply = httpx.get(f"http://127.0.0.1:{stack.ports.simulator}/_sim/stats", timeout=10)
    return int(reply.json()["totals"]["requests"])


_CHANNELS: dict[int, grpc.Channel] = {}


def _channel(port: int) -> grpc.Channel:
    if port not in _CHANNELS:
        _CHANNELS[port] = grpc.insecure_channel(f"127.0.0.1:{port}")
    return _CHANNELS[port]


def still_serving(stack: Stack) -> None:
    """Every service SERVING, and a normal Route answered."""
    for port in (stack.ports.router, stack.ports.classifier, stack.ports.ledger):
        reply = health_rpc.check(_channel(port))(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, port
    answer = router_pb2_grpc.RouterServiceStub(_channel(stack.ports.router)).Route(
        router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content=NORMAL)]), timeout=30
    )
    assert answer.content


# ---- wrong JSON types through grpcurl ------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", "0x10", "", " ", "\x00", "ü" * 50]),
    st.text(max_size=20),
)
json_values = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def fields(names: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with some of `names` (each a right or a wrong type) and maybe an unknown field."""
    return st.fixed_dictionaries(
        {},
        optional={
            **{name: st.one_of(right, json_values) for name, right in names.items()},
            "notAField": json_values,
        },
    )


_message = fields(
    {"role": st.sampled_from(["user", "system"]), "content": st.just(NORMAL), "name": st.text(max_size=5)}
)
_options = fields(
    {
        "maxOutputTokens": st.sampled_from([16, "16", 0, -1, 2**31, "99999999999"]),
        "temperature": st.sampled_from([0.5, "NaN", "Infinity", -1, "0.2"]),
        "forceTier": st.sampled_from(["TIER_SIMPLE", "TIER_GOD", 99, -1, 1]),
        "forceModel": st.sampled_from(["gpt-5-mini", "x" * 300, "../../etc/passwd"]),
        "maxCostUsd": st.sampled_from([1, "NaN", -5, 1e308]),
        "jsonOutput": st.sampled_from([True, "true", 1]),
        "jsonSchema": st.sampled_from(['{"type": "object"}', {"type": "object"}, '{"$ref": "#"}']),
        "bufferedStream": st.booleans(),
    }
)
_record = fields(
    {
        "requestId": st.just("gc-1"),
        "attempt": st.sampled_from([1, "1", 0, 2**31, "one"]),
        "time": st.sampled_from(
            ["2026-11-30T10:00:00Z", "yesterday", "10000-01-01T00:00:00Z", 5, "1970-01-01T00:00:00Z"]
        ),
        "caller": st.text(max_size=10),
        "tier": st.sampled_from(["TIER_SIMPLE", "TIER_NOPE", 77]),
        "usage": fields(
            {
                "inputTokens": st.sampled_from([10, "10", -1, "9223372036854775808"]),
                "costUsd": st.sampled_from([0.01, "NaN", "Infinity", 1e9]),
            }
        ),
    }
)
TARGETS: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "llmroute.router.v1.RouterService/Route": (
        "router",
        fields(
            {
                "messages": st.lists(_message, max_size=2),
                "requestId": st.text(max_size=8),
                "caller": st.text(max_size=8),
                "options": _options,
            }
        ),
    ),
    "llmroute.classifier.v1.ClassifierService/Classify": (
        "classifier",
        fields({"messages": st.lists(_message, max_size=2), "skipCache": st.booleans()}),
    ),
    "llmroute.ledger.v1.LedgerService/RecordUsage": (
        "ledger",
        fields(
            {
                "records": st.lists(_record, max_size=2),
                "sender": st.text(max_size=8),
                "senderSpoolDepth": st.sampled_from([0, "5", -1, 2**64]),
            }
        ),
    ),
}
NOT_JSON = ["", "{", "[]", "null", "42", '"text"', "\x00\x01\x02", '{"messages": [}', "{" * 5000 + "}" * 5000]


def _check(stack: Stack, method: str, data: str) -> None:
    service = TARGETS[method][0]
    before = provider_calls(stack)
    reply = grpcurl(f"127.0.0.1:{getattr(stack.ports, service)}", method, data)
    paid = provider_calls(stack) - before
    if reply.returncode == 0:
        event(f"{service}: OK")
        assert isinstance(json.loads(reply.stdout), dict)
        return
    error = reply.stderr.strip()
    if error.startswith("{"):  # the service answered with a status
        status = json.loads(error)
        code = status.get("code", 0)
        event(f"{service}: status {code}")
        assert code not in NEVER, f"{NEVER.get(code)}: {status.get('message', '')[:300]}"
        assert any("reason" in detail for detail in status.get("details", [])), status
        if code == 3:  # INVALID_ARGUMENT
            assert any("field_violations" in d for d in status["details"]), status
            assert paid == 0, f"{paid} provider calls for a refused request"
    else:  # grpcurl refused the text before sending: nothing reached the service
        event(f"{service}: refused by grpcurl")
        assert error, "grpcurl failed without saying why"
        assert paid == 0


@fuzz(15)
@given(data=st.data())
def test_wrong_json_types_through_grpcurl_get_a_clear_answer(stack: Stack, data: Any) -> None:
    method = data.draw(st.sampled_from(sorted(TARGETS)))
    body = data.draw(st.one_of(TARGETS[method][1].map(json.dumps), st.sampled_from(NOT_JSON)))
    _check(stack, method, body)
    still_serving(stack)


@pytest.mark.parametrize(
    ("body", "refused_by"),
    [
        ({"messages": [{"role": "user", "content": NORMAL}], "options": {"temperature": "NaN"}}, "router"),
        ({"messages": [{"role": "user", "content": NORMAL}], "options": {"forceTier": 99}}, "router"),
        (
            {"messages": [{"role": "user", "content": NORMAL}], "options": {"maxCostUsd": "-Infinity"}},
            "router",
        ),
        (
            {"messages": [{"role": "user", "content": NORMAL}], "options": {"jsonSchema": '{"$schema": 5}'}},
            "router",
        ),
        (
            {"messages": [{"role": "user", "content": NORMAL}], "options": {"maxOutputTokens": 2**40}},
            "grpcurl",
        ),
        ({"messages": "not a list"}, "grpcurl"),
        ({"messages": [{"role": 5, "content": ["x"]}]}, "grpcurl"),
    ],
)
def test_wrong_types_are_refused_unpaid_by_the_router_or_by_grpcurl(
    stack: Stack, body: dict[str, Any], refused_by: str
) -> None:
    before = provider_calls(stack)
    reply = grpcurl(
        f"127.0.0.1:{stack.ports.router}", "llmroute.router.v1.RouterService/Route", json.dumps(body)
    )
    assert reply.returncode != 0 and provider_calls(stack) == before
    if refused_by == "router":
        status = json.loads(reply.stderr)
        assert status["code"] == 3, status  # INVALID_ARGUMENT
        assert any("field_violations" in detail for detail in status["details"]), status
    else:
        assert "error getting request data" in reply.stderr, reply.stderr


# ---- malformed policy files ---------------------------------------------------------------------

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
MALFORMED: dict[str, bytes] = {
    "not_yaml": b"tiers: [unclosed\n",
    "not_a_mapping": b"- just\n- a list\n",
    "not_utf8": b"\xff\xfe\x00policy",
    "nested_deep": b"a: " + b"[" * 3_000 + b"]" * 3_000 + b"\n",
    "billion_laughs": LAUGHS.encode(),
    "thresholds_out_of_order": yaml.safe_dump(
        {
            **yaml.safe_load(DEFAULT_POLICY_PATH.read_text()),
            "thresholds": {"moderate": 0.9, "complex": 0.5, "reasoning": 0.1},
        }
    ).encode(),
    "negative_estimate": yaml.safe_dump(
        {**yaml.safe_load(DEFAULT_POLICY_PATH.read_text()), "output_token_estimates": {"code": -800}}
    ).encode(),
}


def test_a_malformed_policy_stops_the_router_at_start_with_a_clear_message(stack: Stack) -> None:
    """The router process refuses to start, its last line naming the policy file and what is wrong.
    (A billion-laughs file used to keep it from ever starting: pydantic rendered the expanded aliases.)"""
    path, process = BAD_STARTS["router"]
    output, _ = process.communicate(timeout=90)
    assert process.returncode not in (0, None), "the router started with a malformed policy"
    last = output.strip().splitlines()[-1]
    assert last.startswith("service_kit.policy.PolicyError:") and str(path) in last, last


@pytest.mark.parametrize("kind", sorted(MALFORMED))
async def test_a_malformed_policy_stops_the_classifier_at_start(tmp_path: Path, kind: str) -> None:
    """The same for the classifier, in process: create_server raises PolicyError naming the file (a file
    that was not UTF-8 used to raise a bare UnicodeDecodeError, one nested deep a RecursionError)."""
    path = tmp_path / "policy.yaml"
    path.write_bytes(MALFORMED[kind])
    with pytest.raises(PolicyError, match=str(path)):
        await create_classifier(ClassifierSettings(port=0, strategy="heuristic", policy_path=path))


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_policy_on_sighup_keeps_the_old_one(stack: Stack, kind: str) -> None:
    for service in ("router", "classifier"):
        log = stack.log_path(service)
        rejected = _count(log, "policy_rejected")
        (stack.state_dir / f"{service}-policy.yaml").write_bytes(MALFORMED[kind])
        stack.processes[service].send_signal(signal.SIGHUP)
        _wait(lambda log=log, n=rejected: _count(log, "policy_rejected") > n, f"{service}: {kind}")
    still_serving(stack)


def test_after_a_malformed_policy_the_file_watcher_still_reloads(stack: Stack) -> None:
    """The watcher polls the file: a file it could not even decode used to end the watcher (the next,
    valid, policy was never loaded). Now the bad one is rejected and the good one after it taken."""
    services = ("router", "classifier")
    logs = {service: stack.log_path(service) for service in services}
    rejected = {service: _count(log, "policy_rejected") for service, log in logs.items()}
    reloaded = {service: _count(log, "policy_reloaded") for service, log in logs.items()}
    for service in services:
        (stack.state_dir / f"{service}-policy.yaml").write_bytes(MALFORMED["not_utf8"])
    for service, log in logs.items():
        _wait(lambda log=log, n=rejected[service]: _count(log, "policy_rejected") > n, service)
    good = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    good["baseline_model"] = "gpt-4.1"
    for service in services:
        (stack.state_dir / f"{service}-policy.yaml").write_text(yaml.safe_dump(good))
    for service, log in logs.items():
        _wait(lambda log=log, n=reloaded[service]: _count(log, "policy_reloaded") > n, service)
        taken = [line for line in log.read_text().splitlines() if '"event": "policy_reloaded"' in line]
        assert '"baseline_model": "gpt-4.1"' in taken[-1], taken[-1]
    still_serving(stack)


def _count(log: Path, event: str) -> int:
    return log.read_text().count(f'"event": "{event}"')


def _wait(condition: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
