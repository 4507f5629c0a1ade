"""`llmroute feedback | report | tune`: the feedback loop from the shell."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from difficulty import DEFAULT_ARTIFACT_DIR
from feedback_loop import tuning
from feedback_loop.outcomes import reference_costs, to_runs
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute_cli import connect
from service_kit import policy_file
from service_kit.policy import DEFAULT_POLICY_PATH, TIER_BY_NAME, TIER_NAMES, load_policy

VERDICTS = {
    "good": ledger_pb2.FEEDBACK_VERDICT_GOOD,
    "bad": ledger_pb2.FEEDBACK_VERDICT_BAD,
    "overkill": ledger_pb2.FEEDBACK_VERDICT_OVERKILL,
}
REPORT_DIMENSIONS = {
    "category": ledger_pb2.FEEDBACK_GROUP_BY_CATEGORY,
    "tier": ledger_pb2.FEEDBACK_GROUP_BY_TIER,
    "caller": ledger_pb2.FEEDBACK_GROUP_BY_CALLER,
    "score": ledger_pb2.FEEDBACK_GROUP_BY_SCORE_BAND,
    "family": ledger_pb2.FEEDBACK_GROUP_BY_FAMILY,
}
REFUSED = 3  # exit status of `tune` when the outcomes are too few for the confidence asked


def feedback(args: argparse.Namespace) -> None:
    request = ledger_pb2.RecordFeedbackRequest(
        request_id=args.request_id,
        caller=args.caller or ("" if connect.api_key() else "cli"),
        run_id=args.run_id,
        verdict=VERDICTS[args.verdict],
        needed_tier=TIER_BY_NAME[args.needed_tier] if args.needed_tier else common_pb2.TIER_UNSPECIFIED,
        note=args.note,
    )
    with connect.channel(args.ledger) as channel:
        reply = ledger_pb2_grpc.LedgerServiceStub(channel).RecordFeedback(request, timeout=30)
    print(f"stored against run {reply.run_id}")


def _window(last_minutes: int) -> ledger_pb2.TimeWindow:
    return ledger_pb2.TimeWindow(last_minutes=last_minutes) if last_minutes else ledger_pb2.TimeWindow()


def report(args: argparse.Namespace) -> None:
    request = ledger_pb2.GetFeedbackStatsRequest(
        window=_window(args.last_minutes),
        caller=args.caller,
        group_by=[REPORT_DIMENSIONS[d] for d in args.by],
    )
    with connect.channel(args.ledger) as channel:
        reply = ledger_pb2_grpc.LedgerServiceStub(channel).GetFeedbackStats(request, timeout=120)
    print(_summary("all", reply.totals))
    print(_matrix(reply.totals))
    for breakdown in reply.breakdowns:
        name = ledger_pb2.FeedbackGroupBy.Name(breakdown.group_by).removeprefix("FEEDBACK_GROUP_BY_").lower()
        print(f"\nby {name}:")
        for group in breakdown.groups:
            print(_summary(group.key, group.totals))


def _summary(key: str, t: ledger_pb2.FeedbackTotals) -> str:
    judged = max(t.runs_with_evidence, 1)
    return (
        f"  {key:<28} {t.runs:>7} runs  {t.runs_with_evidence:>6} with evidence: "
        f"{t.too_low / judged:6.1%} too low  {t.adequate / judged:6.1%} adequate  "
        f"{t.too_high / judged:6.1%} too high  {t.inconsistent:>4} inconsistent  "
        f"escalated {t.escalation_rate:5.1%}  explored {t.explored} ({t.explored_sufficient} cheaper was enough)  "
        f"over-routing ${t.over_routing_spend_usd:.6f} seen, ${t.estimated_over_routing_spend_usd:.6f} estimated  "
        f"spend ${t.cost_usd:.6f} + exploration ${t.exploration_cost_usd:.6f}"
    )


def _matrix(t: ledger_pb2.FeedbackTotals) -> str:
    header = "  routed \\ needed at least " + "".join(f"{n:>11}" for n in TIER_NAMES)
    rows = [
        f"  {TIER_NAMES[r]:<26}" + "".join(f"{t.routed_vs_needed[r * 4 + c]:>11}" for c in range(4))
        for r in range(4)
        if len(t.routed_vs_needed) == 16
    ]
    return "\n".join([header, *rows])


def tune(args: argparse.Namespace) -> None:
    policy_path = Path(args.policy)
    policy = load_policy(policy_path)
    request = ledger_pb2.ExportOutcomesRequest(window=_window(args.last_minutes), caller=args.caller)
    with connect.channel(args.ledger) as channel:
        outcomes = [
            o
            for batch in ledger_pb2_grpc.LedgerServiceStub(channel).ExportOutcomes(request, timeout=600)
            for o in batch.outcomes
        ]
    target = tuning.Target(quality=args.quality, strong_share=args.strong_share, budget_usd=args.budget)
    runs = to_runs(outcomes)
    try:
        result = tuning.tune(
            runs,
            policy,
            target,
            reference_costs(policy),
            offsets=not args.no_offsets,
            bootstrap=args.bootstrap,
            max_interval=args.max_interval,
            aim_bound=args.aim == "bound",
        )
    except tuning.NotEnoughOutcomes as error:
        print(f"llmroute tune: refused: {error}", file=sys.stderr)
        sys.exit(REFUSED)
    print(explain(result, len(runs)))
    old = policy_path.read_text()
    new = policy_file.rewrite(old, result.proposed.thresholds, result.offsets)
    diff = "".join(
        difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(policy_path), "proposed")
    )
    print(diff or "\n(no change to the policy file)")
    if result.refused:
        print(f"\nllmroute tune: refused: {result.refused}", file=sys.stderr)
        sys.exit(REFUSED)
    if args.apply and diff:
        written = policy_file.write(policy_path, new)
        print(f"\nwrote {policy_path} (policy {written.version_id}); routers reload it within seconds")


def retrain(args: argparse.Namespace) -> None:
    from feedback_loop import retrain as pipeline

    request = ledger_pb2.ExportOutcomesRequest(window=_window(args.last_minutes), with_evidence_only=True)
    with connect.channel(args.ledger) as channel:
        outcomes = [
            o
            for batch in ledger_pb2_grpc.LedgerServiceStub(channel).ExportOutcomes(request, timeout=600)
            for o in batch.outcomes
        ]
    try:
        result = pipeline.retrain(
            outcomes,
            pipeline.load_prompts(Path(args.prompts)),
            load_policy(Path(args.policy)),
            Path(args.current),
            Path(args.work),
            promote_to=Path(args.promote_to) if args.promote_to else None,
        )
    except ValueError as error:
        print(f"llmroute retrain: {error}", file=sys.stderr)
        sys.exit(REFUSED)
    c = result.comparison
    print(
        f"{result.rows} outcome rows; candidate learned/{result.candidate.version} in {result.candidate.artifact_dir}"
    )
    print(f"replay on {c.rows} held-out outcomes       current   candidate")
    print(f"  concordance                       {c.current_concordance:9.4f} {c.candidate_concordance:11.4f}")
    print(
        f"  cheapest-tier decision right     {c.current_decided_right:9.4f} {c.candidate_decided_right:11.4f}"
    )
    if c.regression:
        print(
            "llmroute retrain: not promoted: the candidate does worse on the held-out outcomes",
            file=sys.stderr,
        )
        sys.exit(REFUSED)
    print(
        f"promoted to {args.promote_to}"
        if result.promoted
        else "no regression; --promote-to DIR to install it"
    )


def explain(result: tuning.Result, runs: int) -> str:
    lines = [f"{runs} routed requests; assessments per tier (good enough / not):"]
    for k, (good, bad) in sorted(result.assessments.items()):
        lines.append(f"  {TIER_NAMES[k - 1]:<10} {good:>6} / {bad:<6}")
    lines += [f"note: {n}" for n in result.notes]
    lines.append("")
    lines.append(f"{'':<22}{'current':>12}{'proposed':>12}   90% interval")
    for name, estimate in result.thresholds.items():
        current = getattr(result.current.thresholds, name)
        lines.append(
            f"  {name:<20}{current:>12.4f}{estimate.value:>12.4f}   [{estimate.low:.4f}, {estimate.high:.4f}]"
        )
    q, c = result.quality, result.cost
    lines.append(
        f"  {'expected quality':<20}{result.current.quality:>12.4f}{q.value:>12.4f}   [{q.low:.4f}, {q.high:.4f}]"
    )
    lines.append(
        f"  {'cost per request $':<20}{result.current.cost:>12.6f}{c.value:>12.6f}   [{c.low:.6f}, {c.high:.6f}]"
    )
    if result.current.cost:
        lines.append(f"  {'cost change':<20}{'':>12}{(c.value / result.current.cost - 1):>+12.1%}")
    for i, name in enumerate(TIER_NAMES):
        lines.append(f"  {'share ' + name:<20}{result.current.mix[i]:>12.1%}{result.proposed.mix[i]:>12.1%}")
    offsets = {**{f"family {k}": v for k, v in result.offsets.family.items()}}
    offsets.update({f"category {k}": v for k, v in result.offsets.category.items()})
    for key, value in offsets.items():
        lines.append(f"  offset {key:<13}{'':>12}{value:>+12.2f}")
    return "\n".join(lines)


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    give = commands.add_parser("feedback", help="tell the router whether an answer's tier was right")
    give.add_argument("request_id")
    give.add_argument("--verdict", choices=sorted(VERDICTS), required=True)
    give.add_argument(
        "--needed-tier", choices=TIER_NAMES, help="bad: at least this tier; overkill: this one would do"
    )
    give.add_argument("--caller", default="", help="default: the key's principal (open services: cli)")
    give.add_argument("--run-id", default="", help="default: the latest answered run of the request")
    give.add_argument("--note", default="")
    give.set_defaults(run=feedback)

    show = commands.add_parser("report", help="routed tier against needed tier: the misclassification report")
    show.add_argument("--last-minutes", type=int, default=7 * 24 * 60, help="0: all time")
    show.add_argument("--caller", default="")
    show.add_argument(
        "--by", nargs="*", choices=sorted(REPORT_DIMENSIONS), default=["category", "tier", "caller", "score"]
    )
    show.set_defaults(run=report)

    fit = commands.add_parser(
        "tune", help="fit the policy's thresholds to the outcomes of the traffic served"
    )
    goal = fit.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--quality", type=float, help="share of requests on a tier good enough for them, e.g. 0.95"
    )
    goal.add_argument("--strong-share", type=float, help="at most this share on complex and reasoning")
    goal.add_argument("--budget", type=float, help="at most this mean cost per request, in US dollars")
    fit.add_argument("--policy", default=str(DEFAULT_POLICY_PATH))
    fit.add_argument(
        "--last-minutes", type=int, default=7 * 24 * 60, help="the outcomes' window; 0: all time"
    )
    fit.add_argument("--caller", default="", help="only this caller's outcomes")
    fit.add_argument(
        "--no-offsets", action="store_true", help="thresholds only, no per-family/category offsets"
    )
    fit.add_argument("--bootstrap", type=int, default=200, help="resamples for the intervals")
    fit.add_argument(
        "--max-interval", type=float, default=0.04, help="widest 90%% interval of the quality accepted"
    )
    fit.add_argument(
        "--aim",
        choices=("bound", "estimate"),
        default="bound",
        help="--quality: bound, the quality's 5%% bound reaches it (default); estimate, the estimate does",
    )
    fit.add_argument("--apply", action="store_true", help="write the policy file (the router reloads it)")
    fit.set_defaults(run=tune)

    learn = commands.add_parser(
        "retrain", help="retrain the classifier on the outcomes; promote it if it does no worse"
    )
    learn.add_argument(
        "--prompts", required=True, help='JSON lines {"request_id", "caller", "messages"} from your logs'
    )
    learn.add_argument(
        "--last-minutes", type=int, default=30 * 24 * 60, help="the outcomes' window; 0: all time"
    )
    learn.add_argument("--policy", default=str(DEFAULT_POLICY_PATH))
    learn.add_argument("--current", default=str(DEFAULT_ARTIFACT_DIR), help="the artifact in use")
    learn.add_argument("--work", default="var/retrain", help="where the outcome rows and the candidate go")
    learn.add_argument("--promote-to", default="", help="install the candidate here when it does no worse")
    learn.set_defaults(run=retrain)
