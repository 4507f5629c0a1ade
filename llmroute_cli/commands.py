"""`llmroute route|stats|budget|feedback|report|tune`: a small client over the router's and the
ledger's gRPC APIs, and the feedback loop's tuner."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from google.protobuf import json_format

from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from llmroute_cli import loop

PERIODS = {"daily": ledger_pb2.BUDGET_PERIOD_DAILY, "monthly": ledger_pb2.BUDGET_PERIOD_MONTHLY}


def _route(args: argparse.Namespace) -> None:
    options = router_pb2.RouteOptions()
    if args.max_output_tokens is not None:
        options.max_output_tokens = args.max_output_tokens
    with grpc.insecure_channel(args.router) as channel:
        reply = router_pb2_grpc.RouterServiceStub(channel).Route(
            router_pb2.RouteRequest(
                messages=[common_pb2.ChatMessage(role="user", content=args.prompt)],
                caller=args.caller,
                request_id=args.request_id,
                options=options,
            ),
            timeout=args.timeout,
        )
    print(reply.content)
    usage = reply.usage
    replayed = " · replayed, not charged again" if reply.replayed else ""
    print(
        f"\n[{common_pb2.Tier.Name(reply.tier)} · {reply.model} · ${usage.cost_usd:.6f} "
        f"(baseline ${usage.baseline_cost_usd:.6f}) · {reply.timings.total_ms:.0f} ms · "
        f"request {reply.request_id} run {reply.run_id}{replayed}]",
        file=sys.stderr,
    )


def _print_totals(totals: ledger_pb2.Totals, label: str) -> None:
    print(
        f"{label}: {totals.requests} requests, spend ${totals.cost_usd:.6f}, baseline ${totals.baseline_cost_usd:.6f}, "
        f"net savings ${totals.net_savings_usd:.6f} (classifier ${totals.classifier_cost_usd:.6f}, "
        f"judge ${totals.judge_cost_usd:.6f})",
        flush=True,
    )


def _stats(args: argparse.Namespace) -> None:
    with grpc.insecure_channel(args.ledger) as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        if args.watch:
            request = ledger_pb2.WatchSpendRequest(
                interval_seconds=args.interval, last_minutes=args.last_minutes, caller=args.caller
            )
            try:
                for snapshot in ledger.WatchSpend(request):
                    _print_totals(snapshot.totals, snapshot.time.ToDatetime().strftime("%H:%M:%S"))
            except KeyboardInterrupt:
                return
            return
        reply = ledger.GetStats(
            ledger_pb2.GetStatsRequest(
                window=ledger_pb2.TimeWindow(last_minutes=args.last_minutes), caller=args.caller
            ),
            timeout=30,
        )
    print(json_format.MessageToJson(reply, preserving_proto_field_name=True))


def _budget(args: argparse.Namespace) -> None:
    metadata = (("x-admin-token", args.admin_token),) if args.admin_token else ()
    with grpc.insecure_channel(args.ledger) as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        if args.action == "set":
            budget = ledger_pb2.Budget(
                caller=args.caller,
                period=PERIODS[args.period],
                soft_limit_usd=args.soft,
                hard_limit_usd=args.hard,
            )
            reply = ledger.SetBudget(
                ledger_pb2.SetBudgetRequest(budget=budget), metadata=metadata, timeout=30
            )
        else:
            reply = ledger.GetBudgets(ledger_pb2.GetBudgetsRequest(caller=args.caller), timeout=30)
    print(json_format.MessageToJson(reply, preserving_proto_field_name=True))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="llmroute", description=__doc__)
    root.add_argument("--router", default="127.0.0.1:50051")
    root.add_argument("--ledger", default="127.0.0.1:50053")
    commands = root.add_subparsers(dest="command", required=True)

    route = commands.add_parser("route", help="route one prompt and print the answer")
    route.add_argument("prompt")
    route.add_argument("--caller", default="cli")
    route.add_argument("--max-output-tokens", type=int)
    route.add_argument("--request-id", default="", help="idempotency key (a retry with it is replayed)")
    route.add_argument("--timeout", type=float, default=120)
    route.set_defaults(run=_route)

    stats = commands.add_parser("stats", help="spend and savings; --watch streams live spend")
    stats.add_argument("--last-minutes", type=int, default=0, help="0: all time (with --watch: today)")
    stats.add_argument("--caller", default="")
    stats.add_argument("--watch", action="store_true")
    stats.add_argument("--interval", type=float, default=5.0)
    stats.set_defaults(run=_stats)

    budget = commands.add_parser("budget", help="read or set budgets (setting is an admin operation)")
    budget.add_argument("action", choices=("get", "set"))
    budget.add_argument("--caller", default="", help="empty: the global budget")
    budget.add_argument("--period", choices=sorted(PERIODS), default="daily")
    budget.add_argument("--soft", type=float, default=0.0, help="US dollars")
    budget.add_argument("--hard", type=float, default=0.0, help="US dollars")
    budget.add_argument("--admin-token", default="")
    budget.set_defaults(run=_budget)

    loop.add_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except grpc.RpcError as error:
        sys.exit(f"llmroute: {error.code().name}: {error.details()}")  # type: ignore[attr-defined]
