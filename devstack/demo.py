"""`make demo`: start the stack, route a mixed workload, print each decision and the ledger's spend."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import yaml

from devstack.stack import ROOT, WITH_GATEWAY, Ports, Stack
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc import WARM_UP_CALLER
from service_kit.policy import NAME_BY_TIER
from service_kit.providers import any_key

WORKLOAD = Path(__file__).with_name("demo_workload.yaml")
SOURCE_NAMES = {
    common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL: "local",
    common_pb2.CLASSIFIER_SOURCE_LLM: "llm",
    common_pb2.CLASSIFIER_SOURCE_CACHE: "cache",
    common_pb2.CLASSIFIER_SOURCE_OVERRIDE: "override",
    common_pb2.CLASSIFIER_SOURCE_DEFAULT: "default",
}


def _stack(state: str, fresh: bool) -> Stack:
    state_dir = ROOT / "var" / state
    if fresh:
        shutil.rmtree(state_dir, ignore_errors=True)
    # The simulator's per-model latencies, scaled down so the demo takes seconds, not minutes.
    extra = {
        "SIMULATOR_LATENCY_SCALE": os.environ.get("SIMULATOR_LATENCY_SCALE", "0.2"),
        # Small models sometimes fail hard prompts silently (empty, refusal): the router must notice.
        "SIMULATOR_WEAK_MODEL_FAILURES": "true",
    }
    ports = Ports()
    if not any_key(os.environ):
        # With no key, the cascade's LLM classifier talks to the simulator too, so the demo shows its
        # overhead charged against the savings, as it would be with a real cheap model.
        extra["CLASSIFIER_LLM_BASE_URL"] = f"http://127.0.0.1:{ports.simulator}/v1"
    return Stack(state_dir=state_dir, ports=ports, extra_env=extra)


def run_demo() -> None:
    workload = yaml.safe_load(WORKLOAD.read_text())
    stack = _stack("demo", fresh=True)
    print(
        f"Starting simulator, ledger, classifier, router and gateway (logs in {stack.state_dir}) ...",
        flush=True,
    )
    with stack:
        stack.start(WITH_GATEWAY)
        _banner(stack)
        with grpc.insecure_channel(f"127.0.0.1:{stack.ports.router}") as channel:
            router = router_pb2_grpc.RouterServiceStub(channel)
            print(f"\nRouting {len(workload)} prompts:\n")
            print(
                f"{'caller':<15} {'tier':<10} {'score':>5} {'by':<6} {'model':<26} {'cost $':>10} {'flagship $':>10}  prompt"
            )
            with ThreadPoolExecutor(max_workers=6) as pool:
                responses = list(pool.map(lambda item: _route(router, item), workload))
            for item, response in zip(workload, responses, strict=True):
                prompt = item["prompt"].replace("\n", " ")
                print(
                    f"{item['caller']:<15} {NAME_BY_TIER.get(response.tier, '?'):<10} "
                    f"{response.decision.score:>5.2f} {SOURCE_NAMES.get(response.decision.source, '?'):<6} "
                    f"{response.model:<26} "
                    f"{response.usage.cost_usd:>10.6f} {response.usage.baseline_cost_usd:>10.6f}  "
                    f"{prompt[:48]}{'…' if len(prompt) > 48 else ''}{_retries(response)}"
                )
        routed_cost = sum(r.usage.cost_usd for r in responses)
        stats = _stats_when_complete(stack, len(responses))
        _summary(stats, routed_cost, responses)
        _through_the_gateway(stack)
    print("\nStopped all services.")


def _route(router: router_pb2_grpc.RouterServiceStub, item: dict[str, str]) -> router_pb2.RouteResponse:
    request = router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=item["prompt"])], caller=item["caller"]
    )
    return router.Route(request, timeout=60)


def _retries(response: router_pb2.RouteResponse) -> str:
    """What happened before the answer: escalations after rejected output, fallbacks after errors."""
    notes = [
        f"{a.model} {a.error.split(':')[0]} → {common_pb2.AttemptOutcome.Name(a.outcome).removeprefix('ATTEMPT_OUTCOME_').lower()}"
        for a in response.attempts
        if a.outcome != common_pb2.ATTEMPT_OUTCOME_OK
    ]
    return f"\n{'':<15} ↳ first tried {'; '.join(notes)} (charged)" if notes else ""


def _stats_when_complete(stack: Stack, expected: int) -> ledger_pb2.GetStatsResponse:
    """The router reports to the ledger off the request path; wait until every request has landed."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.ledger}") as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        deadline = time.monotonic() + 30
        while True:
            stats = ledger.GetStats(ledger_pb2.GetStatsRequest(), timeout=10)
            by_caller = next(b for b in stats.breakdowns if b.group_by == ledger_pb2.GROUP_BY_CALLER)
            landed = sum(g.totals.requests for g in by_caller.groups if g.key != WARM_UP_CALLER)
            if landed >= expected or time.monotonic() > deadline:
                return stats
            time.sleep(0.2)


def _summary(
    stats: ledger_pb2.GetStatsResponse, routed_cost: float, responses: list[router_pb2.RouteResponse]
) -> None:
    t = stats.totals
    share = (t.gross_savings_usd / t.baseline_cost_usd * 100) if t.baseline_cost_usd else 0.0
    print("\nSpend (from the ledger's GetStats):")
    print(f"  requests            {t.requests}   attempts {t.attempts}")
    print(f"  tokens              {t.input_tokens} in / {t.output_tokens} out")
    if t.simulated_attempts:
        print(
            f"  simulated           {t.simulated_attempts} of {t.attempts} attempts answered by the bundled"
            " simulator, priced at the models' real prices (no provider was paid)"
        )
    print(
        f"  spend               ${t.cost_usd:.6f}   (the Route responses above: ${routed_cost:.6f}; the rest is the"
    )
    print(f"                      router's warm-up calls at start, caller {WARM_UP_CALLER})")
    print(f"  flagship baseline   ${t.baseline_cost_usd:.6f}   (every answer on the policy's baseline model)")
    reasoning_share = (
        t.baseline_reasoning_cost_usd / t.baseline_cost_usd * 100 if t.baseline_cost_usd else 0.0
    )
    print(
        f"    of which reasoning ${t.baseline_reasoning_cost_usd:.6f}   ({reasoning_share:.1f}%; the routed models reasoned"
        f" {t.reasoning_tokens} of their {t.output_tokens} output tokens,"
    )
    print("                      counted for the baseline only if the policy sets baseline_reasoning_effort)")
    print(f"  gross savings       ${t.gross_savings_usd:.6f}   ({share:.1f}% of the baseline)")
    print(
        f"  classifier cost     ${t.classifier_cost_usd:.6f}   (the LLM classifier, asked when the local model was unsure)"
    )
    print(f"  net savings         ${t.net_savings_usd:.6f}")
    print(
        f"  escalation rate     {t.escalation_rate:.1%}   (rejected cheap answers, re-routed one tier up and charged)"
    )
    for breakdown in stats.breakdowns:
        name = ledger_pb2.GroupBy.Name(breakdown.group_by).removeprefix("GROUP_BY_").lower()
        print(f"\n  by {name}:")
        for group in breakdown.groups:
            g = group.totals
            print(
                f"    {group.key:<28} {g.requests:>3} requests  ${g.cost_usd:.6f}  (baseline ${g.baseline_cost_usd:.6f})"
            )
    if all(r.simulated for r in responses):
        print(
            "\nNo provider API key is set, so every call went to the bundled simulator under the real model"
        )
        print(
            "names: prices, costs and savings are the real ones from LiteLLM's price map; answers are simulated."
        )


def _banner(stack: Stack) -> None:
    p = stack.ports
    print(f"  router      127.0.0.1:{p.router}   (llmroute.router.v1.RouterService)")
    print(f"  classifier  127.0.0.1:{p.classifier}   (llmroute.classifier.v1.ClassifierService)")
    print(f"  ledger      127.0.0.1:{p.ledger}   (llmroute.ledger.v1.LedgerService)")
    print(f"  simulator   http://127.0.0.1:{p.simulator}/v1   (OpenAI-compatible)")
    print(
        f"  gateway     http://127.0.0.1:{p.gateway}/v1   (OpenAI-compatible: any OpenAI SDK, model llmroute/auto)"
    )


def _through_the_gateway(stack: Stack) -> None:
    """One request as an application written for OpenAI sends it: only base_url and api_key differ."""
    import openai

    base_url = f"http://127.0.0.1:{stack.ports.gateway}/v1"
    with openai.OpenAI(base_url=base_url, api_key="not-checked-yet") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="llmroute/auto",
            messages=[{"role": "user", "content": "Is this spam? 'You won a cruise, click here'"}],
            user="demo-openai-sdk",
        )
    completion = raw.parse()
    print(f"\nThe same through the gateway, with the openai SDK (base_url={base_url}):")
    print(
        f"  model {completion.model}, tier {raw.headers['x-llmroute-tier']}, "
        f"cost ${float(raw.headers['x-llmroute-cost-usd']):.6f} "
        f"(baseline ${float(raw.headers['x-llmroute-baseline-cost-usd']):.6f})"
    )


def run_foreground() -> None:
    stack = _stack("run", fresh=False)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with stack:
        stack.start(WITH_GATEWAY)
        _banner(stack)
        print(
            f"\nServing; logs in {stack.state_dir}. Try: grpcurl -plaintext 127.0.0.1:{stack.ports.router} list"
            f"\nor any OpenAI SDK with base_url http://127.0.0.1:{stack.ports.gateway}/v1 and model llmroute/auto"
        )
        print("Ctrl-C stops everything.", flush=True)
        try:
            while not stopping.wait(0.5):
                for name, process in stack.processes.items():
                    if process.poll() is not None:
                        print(f"{name} exited with {process.returncode}; stopping.")
                        return
        except KeyboardInterrupt:
            pass
        print("\nStopping ...")
