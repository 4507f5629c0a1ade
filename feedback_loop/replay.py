"""`make replay`: outcome data streamed through the running loop, as if it were production.

The real router (local learned classification, the shipped policy at first), the real ledger (SQLite)
and the bundled simulator run in this process. Prompts of held-out outcome data are routed one after
another with `Route`. What happens to each answer comes from the data, as production's signals would:
- the **automatic signal**: every answer is graded (a judge, or validators), and an answer the data
  says is not good enough is caught with probability `detect`;
- **caller feedback** for a share of requests (`feedback`): GOOD, or BAD with the tier that was needed;
- **exploration** for a share (`explore`): the router answers again one tier down in the background and
  the judge compares; here the judge's verdict is the data's.
The judge is a test double over the data (`DataJudge`, the real Judge's interface); everything else
is the production code path. Every `every` requests the loop runs `llmroute tune`'s fit on all the
outcomes so far; a proposal that is not refused is written to the policy file and the router reloads
it (SIGHUP). Three policies replay the same stream: the shipped static thresholds, the loop, and
thresholds fitted with full knowledge of every request's outcome (the oracle).

The world: held-out multimodel prompts (12 task families; the tiers' answers are four open models',
ladder below) and held-out GSM8K and MMLU prompts (simple and moderate answer like Mixtral-8x7B, complex
and reasoning like GPT-4). A tier's answer is good enough when its score is within 0.1 of the top
tier's on that prompt (for right/wrong metrics: right, or the top tier wrong too). Quality is the share
of requests routed to a tier good enough for them (always using the top tier scores 1); cost is what the router's calls cost at LiteLLM's prices
for the policy's models (the simulator answers, with real token counts), exploration included.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np

from classifier_training import data
from feedback_loop import tuning
from feedback_loop.outcomes import reference_costs, to_runs
from ledger_client import LedgerReporter
from ledger_svc.server import create_server as create_ledger
from ledger_svc.settings import LedgerSettings
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.judge import Grade
from router_svc.server import create_server as create_router
from router_svc.settings import RouterSettings
from service_kit import policy_file
from service_kit.policy import DEFAULT_POLICY_PATH, Thresholds, load_policy
from service_kit.pricing import PriceBook
from simulator.server import start_simulator
from simulator.settings import SimulatorSettings

# The multimodel ladder: one open model's answers per tier, cheapest first.
LADDER = (
    "llama-3.1-8b-instruct",
    "gemma-2-9b-it",
    "llama-3.1-nemotron-51b-instruct",
    "llama-3.3-nemotron-super-49b-v1",
)
GOOD_ENOUGH_GAP = 0.1
CALLER = "replay"


@dataclass(frozen=True)
class Item:
    prompt: str
    good: tuple[bool, bool, bool, bool]  # whether each tier's answer is good enough
    source: str

    @property
    def needed(self) -> int:
        return 1 + self.good.index(True) if any(self.good) else 4


def _good(scores: Sequence[float]) -> tuple[bool, bool, bool, bool]:
    """Whether each tier's answer is good enough: within 0.1 of the top tier's (so the top tier always
    is, and quality is measured against always using it, as "% of strong quality" is)."""
    top = scores[-1]
    a, b, c, d = (s >= top - GOOD_ENOUGH_GAP for s in scores)
    return a, b, c, d


def load_world(requests: int, seed: int = 0) -> list[Item]:
    """The held-out multimodel prompts, then held-out GSM8K and MMLU ones, shuffled, `requests` of them."""
    _, multimodel_test = data.split_multimodel(data.load_multimodel(), data.load_outcomes())
    held = {o.prompt for o in multimodel_test}
    items = []
    with (data.data_dir() / data.MULTIMODEL_FILE).open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["prompt"] in held:
                items.append(
                    Item(row["prompt"], _good([float(row[f"score__{m}"]) for m in LADDER]), row["task_name"])
                )
    _, routellm_test = data.split_outcomes(data.load_outcomes())
    for o in routellm_test:
        cheap, strong = float(o.cheap_ok), float(o.strong_ok)
        items.append(Item(o.prompt, _good([cheap, cheap, strong, strong]), o.dataset))
    rng = random.Random(seed)
    rng.shuffle(items)
    return items[:requests]


class DataJudge:
    """The Judge's interface, answered from the data: what a perfect grader would say, except that it
    misses a failure with probability 1 - `detect`."""

    model = "replay-judge"

    def __init__(self, world: Sequence[Item], detect: float, seed: int) -> None:
        self._by_prompt = {item.prompt: item for item in world}
        self._detect = detect
        self._rng = random.Random(seed)

    def grades(self, tier: int) -> bool:
        return True

    async def grade(
        self, chat: list[dict[str, str]], answer: str, prices: PriceBook, *, tier: int = 0
    ) -> Grade:
        good = self._by_prompt[chat[-1]["content"]].good[tier - 1]
        return Grade(good or self._rng.random() >= self._detect)

    async def compare(
        self, chat: list[dict[str, str]], reference: str, candidate: str, prices: PriceBook, *, tier: int = 0
    ) -> Grade:
        return Grade(self._by_prompt[chat[-1]["content"]].good[tier - 1])


@dataclass
class Trace:
    """One policy's replay: per request, the tier and cost; tuning events; exploration spend."""

    name: str
    tiers: list[int] = field(default_factory=list)
    good: list[bool] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    exploration_usd: list[float] = field(default_factory=list)  # cumulative, per request
    tunings: list[dict[str, object]] = field(default_factory=list)

    def cost_per_request(self) -> np.ndarray:
        spend = np.cumsum(self.cost) + np.array(self.exploration_usd)
        return np.asarray(spend / np.arange(1, len(self.cost) + 1))

    def quality(self, window: int) -> np.ndarray:
        good = np.array(self.good, dtype=np.float64)
        return np.array([good[max(0, i + 1 - window) : i + 1].mean() for i in range(len(good))])


@dataclass(frozen=True)
class Settings:
    requests: int = 3000
    target: float = 0.95
    detect: float = 1.0
    feedback: float = 0.05
    explore: float = 0.02
    every: int = 250
    window: int = 500
    seed: int = 0
    out: Path = Path("var/replay")


async def replay(
    name: str,
    world: Sequence[Item],
    settings: Settings,
    state: Path,
    thresholds: Thresholds | None,
    tune: bool,
) -> Trace:
    """Route the stream under one policy; tune every `settings.every` requests when `tune`."""
    policy_path = _policy_copy(state, thresholds)
    sim_runner, sim_port = await start_simulator(
        SimulatorSettings(host="127.0.0.1", port=0, latency_scale=0.0)
    )
    simulator = f"http://127.0.0.1:{sim_port}"
    ledger = await create_ledger(
        LedgerSettings(port=0, database_url=f"sqlite+aiosqlite:///{state / 'ledger.db'}")
    )
    reporter = LedgerReporter(f"127.0.0.1:{ledger.port}", state / "spool.db", flush_interval=0.01)
    router_settings = RouterSettings(
        port=0,
        policy_path=policy_path,
        classifier_mode="local",
        simulator="always",
        simulator_url=f"{simulator}/v1",
        ledger_address=f"127.0.0.1:{ledger.port}",
        spool_path=state / "spool.db",
        warm_up=False,
        budgets_enabled=False,
        escalate_on_validation_failure=False,  # the answer is the routed tier's: what quality measures
        exploration_rate=settings.explore if tune else 0.0,
        exploration_daily_budget_usd=1e6,
        exploration_seed=settings.seed,
    )
    judge = DataJudge(world, settings.detect, settings.seed)
    router = await create_router(router_settings, usage_sink=reporter, judge=judge)  # type: ignore[arg-type]
    trace = Trace(name)
    rng = random.Random(settings.seed + 1)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    ledger_channel = grpc.aio.insecure_channel(f"127.0.0.1:{ledger.port}")
    stub, ledger_stub = (
        router_pb2_grpc.RouterServiceStub(channel),
        ledger_pb2_grpc.LedgerServiceStub(ledger_channel),
    )
    policy = load_policy(policy_path)
    fallback = reference_costs(policy)
    exploration_usd = 0.0
    pending: list[ledger_pb2.RecordFeedbackRequest] = []  # callers' verdicts come in after the answer
    try:
        for index, item in enumerate(world, start=1):
            reply = await stub.Route(
                router_pb2.RouteRequest(
                    messages=[common_pb2.ChatMessage(role="user", content=item.prompt)],
                    caller=CALLER,
                    options=router_pb2.RouteOptions(max_output_tokens=400),
                ),
                timeout=60,
            )
            tier = int(reply.tier)
            trace.tiers.append(tier)
            trace.good.append(item.good[tier - 1])
            trace.cost.append(reply.usage.cost_usd)
            trace.scores.append(reply.decision.score)
            if tune and rng.random() < settings.feedback:
                good = item.good[tier - 1]
                pending.append(
                    ledger_pb2.RecordFeedbackRequest(
                        request_id=reply.request_id,
                        caller=CALLER,
                        run_id=reply.run_id,
                        verdict=ledger_pb2.FEEDBACK_VERDICT_GOOD if good else ledger_pb2.FEEDBACK_VERDICT_BAD,
                        needed_tier=0 if good else item.needed,  # type: ignore[arg-type]
                    )
                )
            if index % settings.every == 0 or index == len(world):
                await _settle(simulator, reporter)
                for verdict in pending:
                    await ledger_stub.RecordFeedback(verdict, timeout=10)
                pending.clear()
                stats = await ledger_stub.GetStats(ledger_pb2.GetStatsRequest(), timeout=30)
                exploration_usd = stats.totals.exploration_cost_usd
                if tune and index < len(world):
                    trace.tunings.append(await _tune(ledger_stub, policy_path, settings, fallback, index))
            trace.exploration_usd.append(exploration_usd)
    finally:
        await channel.close()
        await ledger_channel.close()
        await router.stop(0)
        await ledger.stop(0)
        await sim_runner.cleanup()
    return trace


def _policy_copy(state: Path, thresholds: Thresholds | None) -> Path:
    """The shipped policy, in the replay's own file (with other thresholds, if given)."""
    state.mkdir(parents=True, exist_ok=True)
    text = DEFAULT_POLICY_PATH.read_text()
    path = state / "policy.yaml"
    path.write_text(policy_file.rewrite(text, thresholds) if thresholds is not None else text)
    return path


def _apply(path: Path, result: tuning.Result) -> None:
    policy_file.write(path, policy_file.rewrite(path.read_text(), result.proposed.thresholds, result.offsets))


async def _settle(simulator: str, reporter: LedgerReporter) -> None:
    """Explorations in flight have ended and every record is in the ledger."""
    async with httpx.AsyncClient() as client:
        for _ in range(500):
            if (await client.get(f"{simulator}/_sim/stats")).json()["in_flight"] == 0:
                break
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    await reporter.flush(30)


async def _tune(
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub,
    policy_path: Path,
    settings: Settings,
    fallback: np.ndarray,
    index: int,
) -> dict[str, object]:
    outcomes = [
        o async for batch in ledger.ExportOutcomes(ledger_pb2.ExportOutcomesRequest()) for o in batch.outcomes
    ]
    policy = load_policy(policy_path)
    event: dict[str, object] = {"at": index}
    try:
        result = await asyncio.to_thread(
            tuning.tune,
            to_runs(outcomes),
            policy,
            tuning.Target(quality=settings.target),
            fallback,
            bootstrap=60,
        )
    except tuning.NotEnoughOutcomes as error:
        event["refused"] = str(error)
        return event
    event["thresholds"] = result.proposed.thresholds.model_dump()
    event["expected_quality"] = result.quality.value
    if result.refused:
        event["refused"] = result.refused
        return event
    _apply(policy_path, result)
    os.kill(os.getpid(), signal.SIGHUP)  # the router reloads its policy, as an operator's SIGHUP does
    await asyncio.sleep(0.05)
    event["applied"] = True
    event["offsets"] = result.offsets.model_dump()
    return event


def oracle_thresholds(world: Sequence[Item], static: Trace, target: float) -> Thresholds:
    """Thresholds fitted with every request's outcome known on every tier, on the static run's scores
    and tier costs."""
    runs = [
        tuning.Run(score, tier, cost_usd=cost, assessments=tuple((t, item.good[t - 1]) for t in range(1, 5)))
        for item, score, tier, cost in zip(world, static.scores, static.tiers, static.cost, strict=True)
    ]
    model = tuning.fit_model(runs, reference_costs(load_policy(DEFAULT_POLICY_PATH)))
    plan, _ = tuning.optimise(
        model,
        tuning.Traffic.of(np.array(static.scores)),
        tuning.Target(quality=target),
        load_policy(DEFAULT_POLICY_PATH).thresholds,
    )
    return plan.thresholds


def summarise(traces: Sequence[Trace], settings: Settings) -> dict[str, object]:
    summary: dict[str, object] = {"settings": {k: str(v) for k, v in vars(settings).items()}}
    after = min(2000, settings.requests - 1)
    for trace in traces:
        good = np.array(trace.good, dtype=np.float64)
        cost = np.array(trace.cost)
        tail = slice(after, None)
        exploration_tail = (
            (trace.exploration_usd[-1] - trace.exploration_usd[after - 1])
            if after > 0
            else trace.exploration_usd[-1]
        )
        rolling = trace.quality(settings.window)[settings.window - 1 :]
        summary[trace.name] = {
            "requests": len(good),
            "quality": float(good.mean()),
            "cost_per_request_usd": float(cost.mean() + trace.exploration_usd[-1] / len(cost)),
            f"quality_after_{after}": float(good[tail].mean()),
            f"cost_per_request_after_{after}_usd": float(
                (cost[tail].sum() + exploration_tail) / max(1, len(cost[tail]))
            ),
            f"min_quality_over_{settings.window}": float(rolling.min()) if len(rolling) else float("nan"),
            "min_cumulative_quality_from_200": float(
                (np.cumsum(good) / np.arange(1, len(good) + 1))[199:].min()
            ),
            "tier_mix": [float((np.array(trace.tiers) == t).mean()) for t in range(1, 5)],
            "exploration_usd": trace.exploration_usd[-1],
            "tunings": trace.tunings,
        }
    return summary


def plot(traces: Sequence[Trace], settings: Settings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cost_axis, quality_axis) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    colours = {"static": "tab:red", "loop": "tab:blue", "oracle": "tab:green"}
    for trace in traces:
        x = np.arange(1, len(trace.cost) + 1)
        cost_axis.plot(x, trace.cost_per_request() * 1000, label=trace.name, color=colours.get(trace.name))
        quality_axis.plot(
            x[settings.window - 1 :],
            trace.quality(settings.window)[settings.window - 1 :],
            label=trace.name,
            color=colours.get(trace.name),
        )
        for event in trace.tunings:
            if event.get("applied"):
                quality_axis.axvline(int(event["at"]), color=colours.get(trace.name), alpha=0.15, linewidth=1)  # type: ignore[call-overload]
    quality_axis.axhline(
        settings.target, color="black", linestyle="--", linewidth=1, label=f"target {settings.target}"
    )
    quality_axis.axhline(
        settings.target - 0.02, color="grey", linestyle=":", linewidth=1, label="target - 2 points"
    )
    cost_axis.set_ylabel("cost per request so far ($ per 1k)")
    quality_axis.set_ylabel(f"quality, last {settings.window} requests")
    quality_axis.set_xlabel("requests served")
    cost_axis.legend()
    quality_axis.legend(loc="upper right", fontsize="small")
    cost_axis.set_title(
        f"make replay: feedback {settings.feedback:.0%}, exploration {settings.explore:.0%}, "
        f"automatic signal caught {settings.detect:.0%}, tuning every {settings.every}"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


async def run(settings: Settings) -> dict[str, object]:
    world = load_world(settings.requests, settings.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmroute-replay-") as tmp:
        root = Path(tmp)
        static = await replay("static", world, settings, root / "static", None, tune=False)
        oracle = oracle_thresholds(world, static, settings.target)
        fitted = await replay("oracle", world, settings, root / "oracle", oracle, tune=False)
        loop = await replay("loop", world, settings, root / "loop", None, tune=True)
        # "At the same quality": fully informed thresholds for the quality the loop reached after
        # 2,000 requests, replayed on the same stream.
        after = min(2000, settings.requests - 1)
        reached = float(np.mean(loop.good[after:]))
        same_thresholds = oracle_thresholds(world, static, reached)
        same = await replay(
            "oracle_same_quality", world, settings, root / "same", same_thresholds, tune=False
        )
    traces = [static, loop, fitted]
    summary = summarise([*traces, same], settings)
    summary["oracle_thresholds"] = oracle.model_dump()
    summary["oracle_same_quality_thresholds"] = same_thresholds.model_dump()
    summary["loop_quality_after_2000"] = reached
    summary["seconds"] = round(time.perf_counter() - started, 1)
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "replay.json").write_text(json.dumps(summary, indent=2, default=str))
    plot(traces, settings, settings.out / "replay.png")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    import logging

    from service_kit.logging import configure_logging

    configure_logging("replay", "WARNING", True, False)
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=Settings.requests)
    parser.add_argument("--target", type=float, default=Settings.target, help="quality target")
    parser.add_argument(
        "--detect",
        type=float,
        default=Settings.detect,
        help="share of bad answers the automatic signal catches",
    )
    parser.add_argument(
        "--feedback", type=float, default=Settings.feedback, help="share of requests with caller feedback"
    )
    parser.add_argument(
        "--explore", type=float, default=Settings.explore, help="share of requests explored one tier down"
    )
    parser.add_argument("--every", type=int, default=Settings.every, help="tune every this many requests")
    parser.add_argument(
        "--window", type=int, default=Settings.window, help="rolling window of the quality curve"
    )
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument("--out", type=Path, default=Settings.out)
    args = parser.parse_args(argv)
    summary = asyncio.run(run(Settings(**vars(args))))
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=2, default=str))


if __name__ == "__main__":
    main()
