"""Conversions between UsageRecord messages, table rows and export lines."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from ledger_svc.schema import NUSD_PER_USD
from ledger_svc.validation import timestamp_us
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2


def to_nusd(usd: float) -> int:
    return round(usd * NUSD_PER_USD)


def to_usd(nusd: int) -> float:
    return nusd / NUSD_PER_USD


def usd_text(nusd: int) -> str:
    """Exact decimal text of an amount in nano-dollars ("0.000012345")."""
    sign = "-" if nusd < 0 else ""
    whole, frac = divmod(abs(nusd), NUSD_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


def timestamp_pb(us: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def iso_us(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_hour(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H:00:00Z")


def enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def to_row(record: ledger_pb2.UsageRecord, received_us: int) -> dict[str, Any]:
    usage = record.usage
    row = {
        "request_id": record.request_id,
        "attempt": record.attempt,
        "ts": timestamp_us(record.time),
        "caller": record.caller,
        "category": int(record.category),
        "tier": int(record.tier),
        "score": record.score,
        "classifier_source": int(record.classifier_source),
        "classifier_version": record.classifier_version,
        "model": record.model,
        "provider": record.provider,
        "outcome": int(record.outcome),
        "error": record.error,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_nusd": to_nusd(usage.cost_usd),
        "baseline_nusd": to_nusd(usage.baseline_cost_usd),
        "classifier_nusd": to_nusd(record.classifier_cost_usd),
        "price_map_version": record.price_map_version,
        "price_known": record.price_known,
        "classify_ms": record.classify_ms,
        "provider_ms": record.provider_ms,
        "total_ms": record.total_ms,
        "cache_hit": record.cache_hit,
        "final": record.final,
        "received_ts": received_us,
        "judge_nusd": to_nusd(record.judge_cost_usd),
        "run_id": record.run_id,
        "baseline_reasoning_nusd": to_nusd(usage.baseline_reasoning_cost_usd),
        "policy_version": record.policy_version,
        "family": record.family,
        "exploration": record.exploration,
        "judge_verdict": int(record.judge_verdict),
        "simulated": record.simulated,
    }
    # PostgreSQL cannot store NUL in text: a record's text keeps U+FFFD in its place, on both databases,
    # so its spend is counted whatever a sender wrote (the same record always maps to the same key).
    for name, value in row.items():
        if isinstance(value, str) and "\x00" in value:
            row[name] = value.replace("\x00", "\ufffd")
    return row


# Export columns, in order: the UsageRecord fields, flattened, with enums by name and money exact.
EXPORT_COLUMNS = (
    "request_id",
    "run_id",
    "attempt",
    "time",
    "caller",
    "category",
    "tier",
    "score",
    "classifier_source",
    "classifier_version",
    "model",
    "provider",
    "outcome",
    "error",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "cost_usd",
    "baseline_cost_usd",
    "classifier_cost_usd",
    "price_map_version",
    "price_known",
    "classify_ms",
    "provider_ms",
    "total_ms",
    "cache_hit",
    "final",
    "judge_cost_usd",
    "baseline_reasoning_cost_usd",
    "policy_version",
    "family",
    "exploration",
    "judge_verdict",
    "simulated",
)


def export_fields(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "request_id": row["request_id"],
        "run_id": row["run_id"],
        "attempt": row["attempt"],
        "time": iso_us(row["ts"]),
        "caller": row["caller"],
        "category": enum_name(common_pb2.Category, row["category"]),
        "tier": enum_name(common_pb2.Tier, row["tier"]),
        "score": row["score"],
        "classifier_source": enum_name(common_pb2.ClassifierSource, row["classifier_source"]),
        "classifier_version": row["classifier_version"],
        "model": row["model"],
        "provider": row["provider"],
        "outcome": enum_name(common_pb2.AttemptOutcome, row["outcome"]),
        "error": row["error"],
        "input_tokens": int(row["input_tokens"]),
        "output_tokens": int(row["output_tokens"]),
        "cached_input_tokens": int(row["cached_input_tokens"]),
        "reasoning_tokens": int(row["reasoning_tokens"]),
        "cost_usd": int(row["cost_nusd"]),
        "baseline_cost_usd": int(row["baseline_nusd"]),
        "classifier_cost_usd": int(row["classifier_nusd"]),
        "price_map_version": row["price_map_version"],
        "price_known": bool(row["price_known"]),
        "classify_ms": row["classify_ms"],
        "provider_ms": row["provider_ms"],
        "total_ms": row["total_ms"],
        "cache_hit": bool(row["cache_hit"]),
        "final": bool(row["final"]),
        "judge_cost_usd": int(row["judge_nusd"]),
        "baseline_reasoning_cost_usd": int(row["baseline_reasoning_nusd"]),
        "policy_version": row["policy_version"],
        "family": row["family"],
        "exploration": bool(row["exploration"]),
        "judge_verdict": enum_name(common_pb2.JudgeVerdict, row["judge_verdict"]),
        "simulated": bool(row["simulated"]),
    }


_MONEY = (
    "cost_usd",
    "baseline_cost_usd",
    "classifier_cost_usd",
    "judge_cost_usd",
    "baseline_reasoning_cost_usd",
)


def csv_header() -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(EXPORT_COLUMNS)
    return out.getvalue()


def csv_line(row: Mapping[Any, Any]) -> str:
    fields = export_fields(row)
    for name in _MONEY:
        fields[name] = usd_text(fields[name])
    for name in ("price_known", "cache_hit", "final", "exploration", "simulated"):
        fields[name] = "true" if fields[name] else "false"
    for name in _TEXT:
        fields[name] = _no_formula(fields[name])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([fields[c] for c in EXPORT_COLUMNS])
    return out.getvalue()


_TEXT = (
    "request_id",
    "run_id",
    "caller",
    "classifier_version",
    "model",
    "provider",
    "error",
    "policy_version",
    "family",
)


def _no_formula(text: str) -> str:
    """A text cell a spreadsheet would run as a formula (=, +, -, @, tab or carriage return first)
    starts with an apostrophe instead (OWASP's CSV injection advice)."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def json_line(row: Mapping[Any, Any]) -> str:
    fields = export_fields(row)
    for name in _MONEY:
        # nusd / 1e9 is the double nearest the exact decimal, and JSON prints its shortest round-trip form.
        fields[name] = to_usd(fields[name])
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False) + "\n"
