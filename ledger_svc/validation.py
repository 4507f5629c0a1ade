"""Checks on requests: each returns BadRequest field violations, raised as one INVALID_ARGUMENT."""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2
from service_kit.errors import InvalidArgument

MAX_ID_CHARS = 200
MAX_ERROR_CHARS = 500  # the router sends a reason and a status, not the provider's text
MAX_RUN_ID_CHARS = 64
MAX_NOTE_CHARS = 10_000
MAX_ATTEMPT = 10_000
MAX_WINDOW_MINUTES = 10 * 366 * 24 * 60
MAX_LIMIT_USD = 1e9  # fits int64 nano-dollars with room to sum
# Per record (one provider call): far above any real call, and low enough that sums of them in int64
# rollups (nano-dollars, tokens) cannot overflow at any plausible volume; an overflowing sum would
# break GetStats for every window that includes it.
MAX_RECORD_USD = 10_000.0
MAX_RECORD_TOKENS = 1_000_000_000
MAX_SPOOL_DEPTH = 10**12
# google.protobuf.Timestamp's range ends at 9999-12-31T23:59:59Z; later times overflow the database.
MAX_TIMESTAMP_SECONDS = 253_402_300_799
MIN_WATCH_INTERVAL = 0.05
MAX_WATCH_INTERVAL = 3600.0
DEFAULT_WATCH_INTERVAL = 5.0
DEFAULT_GROUP_BY = (ledger_pb2.GROUP_BY_MODEL, ledger_pb2.GROUP_BY_TIER, ledger_pb2.GROUP_BY_CALLER)

Violations = list[tuple[str, str]]


def raise_if(violations: Violations, **kwargs: object) -> None:
    if violations:
        raise InvalidArgument(violations, **kwargs)


def now_us() -> int:
    return time.time_ns() // 1000


def timestamp_us(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def _bad_number(value: float, *, allow_negative: bool = False) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    if value < 0 and not allow_negative:
        return f"must not be negative; got {value}"
    return None


def _text(
    field: str, value: str, *, required: bool, limit: int = MAX_ID_CHARS, nul_ok: bool = False
) -> Violations:
    if required and not value.strip():
        return [(field, "is required")]
    if len(value) > limit:
        return [(field, f"is {len(value)} characters; at most {limit}")]
    if "\x00" in value and not nul_ok:
        # PostgreSQL cannot store NUL in text (SQLite can): refused alike on both.
        return [(field, "must not contain NUL, a control character PostgreSQL cannot store")]
    return []


def key_violations(request: ledger_pb2.RevokeKeyRequest | ledger_pb2.LookupKeyRequest) -> Violations:
    found = _text("id", request.id, required=True)
    if isinstance(request, ledger_pb2.LookupKeyRequest):
        found += _text("sha256", request.sha256, required=True, limit=64)
    return found


def caller_violations(field: str, caller: str) -> Violations:
    """A caller id as the router sends it (its x-caller): printable, no surrounding spaces."""
    found = _text(field, caller, required=False)
    if found:
        return found
    if caller != caller.strip():
        return [(field, "must not start or end with whitespace")]
    if any(not ch.isprintable() for ch in caller):
        return [(field, "must not contain control characters")]
    return []


def record_violations(index: int, record: ledger_pb2.UsageRecord, max_future_us: int) -> Violations:
    p = f"records[{index}]"
    found: Violations = []
    found += _text(f"{p}.request_id", record.request_id, required=True, nul_ok=True)
    found += _text(f"{p}.run_id", record.run_id, required=False, limit=MAX_RUN_ID_CHARS, nul_ok=True)
    found += _text(
        f"{p}.policy_version", record.policy_version, required=False, limit=MAX_RUN_ID_CHARS, nul_ok=True
    )
    found += _text(f"{p}.family", record.family, required=False, limit=MAX_RUN_ID_CHARS, nul_ok=True)
    if not 1 <= record.attempt <= MAX_ATTEMPT:
        found.append((f"{p}.attempt", f"must be between 1 and {MAX_ATTEMPT}; got {record.attempt}"))
    if not record.HasField("time") or record.time.seconds <= 0:
        found.append((f"{p}.time", "is required (when the attempt finished)"))
    elif timestamp_us(record.time) > max_future_us:
        found.append((f"{p}.time", "is in the future beyond the allowed clock skew"))
    # Spend is counted whatever the caller id looks like; only its length is bounded.
    found += _text(f"{p}.caller", record.caller, required=False, nul_ok=True)
    found += _text(f"{p}.model", record.model, required=False, nul_ok=True)
    found += _text(f"{p}.provider", record.provider, required=False, nul_ok=True)
    # Free text a sender writes: bounded, so a record cannot carry a megabyte into exports.
    found += _text(f"{p}.error", record.error, required=False, limit=MAX_ERROR_CHARS, nul_ok=True)
    found += _text(f"{p}.classifier_version", record.classifier_version, required=False, nul_ok=True)
    found += _text(f"{p}.price_map_version", record.price_map_version, required=False, nul_ok=True)
    for name in ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens"):
        value = getattr(record.usage, name)
        if value < 0:
            found.append((f"{p}.usage.{name}", f"must not be negative; got {value}"))
        elif value > MAX_RECORD_TOKENS:
            found.append((f"{p}.usage.{name}", f"at most {MAX_RECORD_TOKENS} per attempt; got {value}"))
    for field, value in (
        ("usage.cost_usd", record.usage.cost_usd),
        ("usage.baseline_cost_usd", record.usage.baseline_cost_usd),
        ("usage.baseline_reasoning_cost_usd", record.usage.baseline_reasoning_cost_usd),
        ("classifier_cost_usd", record.classifier_cost_usd),
        ("judge_cost_usd", record.judge_cost_usd),
        ("classify_ms", record.classify_ms),
        ("provider_ms", record.provider_ms),
        ("total_ms", record.total_ms),
    ):
        problem = _bad_number(value)
        if problem is None and field.endswith("usd") and value > MAX_RECORD_USD:
            problem = f"is larger than {MAX_RECORD_USD:.0f} US dollars (one provider call)"
        if problem:
            found.append((f"{p}.{field}", problem))
    if not math.isfinite(record.score):
        found.append((f"{p}.score", "must be a finite number"))
    return found


def record_usage_violations(request: ledger_pb2.RecordUsageRequest, max_batch: int) -> Violations:
    found: Violations = []
    if len(request.records) > max_batch:
        found.append(("records", f"at most {max_batch} records per call; got {len(request.records)}"))
        return found
    found += _text("sender", request.sender, required=False)
    if request.sender_spool_depth < 0:
        found.append(("sender_spool_depth", f"must not be negative; got {request.sender_spool_depth}"))
    elif request.sender_spool_depth > MAX_SPOOL_DEPTH:
        found.append(("sender_spool_depth", f"at most {MAX_SPOOL_DEPTH}; got {request.sender_spool_depth}"))
    return found


@dataclass(frozen=True)
class Window:
    """[since_us, until_us), in µs since the epoch."""

    since_us: int
    until_us: int


def _ts_violation(field: str, ts: timestamp_pb2.Timestamp) -> Violations:
    if not 0 <= ts.seconds <= MAX_TIMESTAMP_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        return [(field, "must be a valid time between 1970-01-01 and 9999-12-31")]
    return []


def resolve_window(
    window: ledger_pb2.TimeWindow, now: int, field: str = "window"
) -> tuple[Window | None, Violations]:
    found: Violations = []
    has_since, has_until = window.HasField("since"), window.HasField("until")
    if window.last_minutes < 0:
        found.append((f"{field}.last_minutes", f"must not be negative; got {window.last_minutes}"))
    elif window.last_minutes > MAX_WINDOW_MINUTES:
        found.append(
            (f"{field}.last_minutes", f"at most {MAX_WINDOW_MINUTES} (ten years); got {window.last_minutes}")
        )
    elif window.last_minutes and (has_since or has_until):
        found.append((f"{field}.last_minutes", "set either last_minutes or since/until, not both"))
    if has_since:
        found += _ts_violation(f"{field}.since", window.since)
    if has_until:
        found += _ts_violation(f"{field}.until", window.until)
    if found:
        return None, found
    if window.last_minutes:
        return Window(now - window.last_minutes * 60_000_000, now), []
    since = timestamp_us(window.since) if has_since else 0
    until = timestamp_us(window.until) if has_until else now
    if until < since:
        return None, [(f"{field}.until", "must not be before window.since")]
    return Window(since, until), []


def group_by_violations(group_by: Iterable[int], enum: Any = ledger_pb2.GroupBy) -> Violations:
    """Known dimensions of `enum` (GroupBy, or FeedbackGroupBy), each at most once."""
    found: Violations = []
    seen: set[int] = set()
    known = set(enum.values()) - {0}
    for i, dim in enumerate(group_by):
        if dim not in known:
            names = ", ".join(enum.Name(v) for v in sorted(known))
            found.append((f"group_by[{i}]", f"unknown dimension {dim}; expected one of {names}"))
        elif dim in seen:
            found.append((f"group_by[{i}]", f"{enum.Name(dim)} is requested twice"))
        seen.add(dim)
    return found


def reservation_violations(request: ledger_pb2.ReserveBudgetRequest) -> Violations:
    found = caller_violations("caller", request.caller)
    found += _text("request_id", request.request_id, required=True)
    found += _text("run_id", request.run_id, required=False, limit=MAX_RUN_ID_CHARS)
    problem = _bad_number(request.amount_usd)
    if problem is None and request.amount_usd > MAX_RECORD_USD:
        problem = f"at most {MAX_RECORD_USD:.0f} US dollars (one provider call)"
    if problem:
        found.append(("amount_usd", problem))
    if not math.isfinite(request.ttl_seconds) or not 0 <= request.ttl_seconds <= 24 * 3600:
        found.append(("ttl_seconds", "must be between 0 (default 300) and 86400 seconds"))
    return found


def budget_violations(budget: ledger_pb2.Budget) -> Violations:
    found = caller_violations("budget.caller", budget.caller)
    if budget.period not in (ledger_pb2.BUDGET_PERIOD_DAILY, ledger_pb2.BUDGET_PERIOD_MONTHLY):
        found.append(("budget.period", "must be BUDGET_PERIOD_DAILY or BUDGET_PERIOD_MONTHLY"))
    limits_ok = True
    for name in ("soft_limit_usd", "hard_limit_usd"):
        value = getattr(budget, name)
        problem = _bad_number(value)
        if problem is None and value > MAX_LIMIT_USD:
            problem = f"at most {MAX_LIMIT_USD:.0f} US dollars"
        if problem:
            found.append((f"budget.{name}", problem))
            limits_ok = False
    if limits_ok:
        soft, hard = budget.soft_limit_usd, budget.hard_limit_usd
        if soft == 0 and hard == 0:
            found.append(("budget.hard_limit_usd", "set soft_limit_usd or hard_limit_usd (0 means no limit)"))
        elif soft > 0 and hard > 0 and soft > hard:
            found.append(("budget.soft_limit_usd", f"must not exceed hard_limit_usd ({hard}); got {soft}"))
    return found


def feedback_violations(request: ledger_pb2.RecordFeedbackRequest, caller: str) -> Violations:
    found = _text("request_id", request.request_id, required=True)
    found += caller_violations("caller", caller)
    if not caller:
        found.append(("caller", "is required (the field or the x-caller metadata): whose request it is"))
    found += _text("run_id", request.run_id, required=False, limit=MAX_RUN_ID_CHARS)
    verdicts = set(ledger_pb2.FeedbackVerdict.values()) - {ledger_pb2.FEEDBACK_VERDICT_UNSPECIFIED}
    if request.verdict not in verdicts:
        found.append(("verdict", "must be FEEDBACK_VERDICT_GOOD, _BAD or _OVERKILL"))
    if request.needed_tier not in set(common_pb2.Tier.values()):
        found.append(("needed_tier", f"unknown tier {request.needed_tier}"))
    found += _text("note", request.note, required=False, limit=MAX_NOTE_CHARS)
    return found


def watch_violations(request: ledger_pb2.WatchSpendRequest) -> Violations:
    found: Violations = []
    interval = request.interval_seconds
    if not math.isfinite(interval) or (
        interval != 0 and not MIN_WATCH_INTERVAL <= interval <= MAX_WATCH_INTERVAL
    ):
        found.append(
            (
                "interval_seconds",
                f"must be 0 (default {DEFAULT_WATCH_INTERVAL}) or between {MIN_WATCH_INTERVAL} and {MAX_WATCH_INTERVAL}",
            )
        )
    if not 0 <= request.last_minutes <= MAX_WINDOW_MINUTES:
        found.append(
            ("last_minutes", f"must be between 0 and {MAX_WINDOW_MINUTES}; got {request.last_minutes}")
        )
    found += caller_violations("caller", request.caller)
    return found


DEFAULT_FEEDBACK_GROUP_BY = (
    ledger_pb2.FEEDBACK_GROUP_BY_CATEGORY,
    ledger_pb2.FEEDBACK_GROUP_BY_TIER,
    ledger_pb2.FEEDBACK_GROUP_BY_CALLER,
    ledger_pb2.FEEDBACK_GROUP_BY_SCORE_BAND,
)


def encode_page_token(key: tuple[Any, ...]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def page_token(token: str) -> tuple[tuple[Any, ...] | None, Violations]:
    """An export's page token: the last exported record's key, or a violation."""
    if not token:
        return None, []
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
        ts, request_id, caller, run_id, attempt = key
        if not (isinstance(ts, int) and isinstance(attempt, int)):
            raise ValueError(token)
        if not all(isinstance(part, str) for part in (request_id, caller, run_id)):
            raise ValueError(token)
    except (ValueError, TypeError, binascii.Error):
        return None, [("page_token", "is not a token this ledger gave (next_page_token)")]
    return (ts, request_id, caller, run_id, attempt), []


def export_violations(request: ledger_pb2.ExportRecordsRequest) -> Violations:
    if request.format not in set(ledger_pb2.ExportFormat.values()):
        return [
            ("format", f"unknown format {request.format}; expected EXPORT_FORMAT_CSV or EXPORT_FORMAT_JSONL")
        ]
    return []
