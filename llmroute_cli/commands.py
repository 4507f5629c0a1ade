"""`llmroute route|stats|budget|feedback|report|tune`: a small client over the router's and the
ledger's gRPC APIs, and the feedback loop's tuner."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format

from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from llmroute_cli import connect, loop
from llmroute_client import Client, LLMRouteError
from service_kit import auth

PERIODS = {"daily": ledger_pb2.BUDGET_PERIOD_DAILY, "monthly": ledger_pb2.BUDGET_PERIOD_MONTHLY}


def _route(args: argparse.Namespace) -> None:
    options = {"max_output_tokens": args.max_output_tokens} if args.max_output_tokens is not None else {}
    with Client(args.router, api_key=connect.api_key(), timeout=args.timeout) as client:
        reply = client.route(
            args.prompt,
            caller=args.caller or ("" if connect.api_key() else "cli"),
            request_id=args.request_id,
            **options,
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
    with connect.channel(args.ledger) as channel:
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
    # The admin token from the environment or a file (LLMROUTE_ADMIN_TOKEN[_FILE]); the flag is kept
    # for scripts, but it shows in `ps`.
    token = args.admin_token or connect.secret("LLMROUTE_ADMIN_TOKEN")
    metadata = (("x-admin-token", token),) if token else ()
    with connect.channel(args.ledger) as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        reply: ledger_pb2.SetBudgetResponse | ledger_pb2.GetBudgetsResponse
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


def _keys(args: argparse.Namespace) -> None:
    if args.in_ledger:
        _keys_in_ledger(args)
        return
    path = Path(args.keys_file)
    if args.action == "create":
        if not args.name:
            sys.exit("llmroute: keys create needs --name")
        key_id, key = auth.create_key(path, args.name, args.role or ["caller"], args.caller)
        print(key)
        print(f"[key {key_id} for {args.name}: shown once, stored as a digest in {path}]", file=sys.stderr)
    elif args.action == "list":
        for entry in auth.read_keys(path):
            state = f"revoked {entry.revoked}" if entry.revoked else "active"
            callers = f" callers={','.join(entry.callers)}" if entry.callers else ""
            print(
                f"{entry.id}  {entry.name}  roles={','.join(entry.roles)}{callers}  {entry.created}  {state}"
            )
    elif not auth.revoke_key(path, args.id):
        sys.exit(f"llmroute: no active key {args.id} in {path}")


def _keys_in_ledger(args: argparse.Namespace) -> None:
    """The same verbs over the ledger's key RPCs (an admin key in LLMROUTE_API_KEY)."""
    with connect.channel(args.ledger) as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        if args.action == "create":
            if not args.name:
                sys.exit("llmroute: keys create needs --name")
            request = ledger_pb2.CreateKeyRequest(
                name=args.name, roles=args.role or ["caller"], callers=args.caller
            )
            reply = ledger.CreateKey(request, timeout=30)
            print(reply.key)
            print(
                f"[key {reply.info.id} for {args.name}: shown once, stored as a digest in the ledger]",
                file=sys.stderr,
            )
        elif args.action == "list":
            for key in ledger.ListKeys(ledger_pb2.ListKeysRequest(), timeout=30).keys:
                state = f"revoked {key.revoked.ToJsonString()}" if key.HasField("revoked") else "active"
                callers = f" callers={','.join(key.callers)}" if key.callers else ""
                print(
                    f"{key.id}  {key.name}  roles={','.join(key.roles)}{callers}  {key.created.ToJsonString()}  {state}"
                )
        elif not ledger.RevokeKey(ledger_pb2.RevokeKeyRequest(id=args.id), timeout=30).revoked:
            sys.exit(f"llmroute: no active key {args.id} in the ledger")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="llmroute", description=__doc__)
    root.add_argument("--router", default="127.0.0.1:50051")
    root.add_argument("--ledger", default="127.0.0.1:50053")
    commands = root.add_subparsers(dest="command", required=True)

    route = commands.add_parser("route", help="route one prompt and print the answer")
    route.add_argument("prompt")
    route.add_argument("--caller", default="", help="default: the key's principal (open services: cli)")
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

    keys = commands.add_parser("keys", help="create, list or revoke API keys in a keys file")
    keys.add_argument("action", choices=("create", "list", "revoke"))
    keys.add_argument("id", nargs="?", default="", help="revoke: the key's id")
    keys.add_argument(
        "--keys-file",
        default=os.environ.get("LLMROUTE_KEYS_FILE", "var/keys.yaml"),
        help="the services' *_KEYS_FILE",
    )
    keys.add_argument(
        "--in-ledger", action="store_true", help="the ledger's database (its key RPCs), not a keys file"
    )
    keys.add_argument("--name", default="", help="create: the principal (the caller budgets and stats see)")
    keys.add_argument(
        "--role", action="append", choices=auth.ROLES, help="create: repeat for more (default caller)"
    )
    keys.add_argument(
        "--caller", action="append", default=[], help="create: a sub-caller pattern it may name"
    )
    keys.set_defaults(run=_keys)

    loop.add_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except grpc.RpcError as error:
        sys.exit(f"llmroute: {error.code().name}: {error.details()}")
    except LLMRouteError as error:
        sys.exit(f"llmroute: {error}")
