"""Record builders, and a reference computation of the ledger's figures straight from the records."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from ledger_svc.schema import bucket_value, latency_bucket
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2

HOUR_US = 3_600_000_000
NUSD = 1_000_000_000


def ts(us: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def us(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp() * 1_000_000)


def now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def record(
    request_id: str,
    attempt: int = 1,
    *,
    at: int,
    caller: str = "alice",
    model: str = "small-model",
    tier: int = common_pb2.TIER_SIMPLE,
    category: int = common_pb2.CATEGORY_CHAT,
    outcome: int = common_pb2.ATTEMPT_OUTCOME_OK,
    cost: float = 0.0,
    baseline: float = 0.0,
    classifier: float = 0.0,
    judge: float = 0.0,
    input_tokens: int = 0,
    output_tokens: int = 0,
    final: bool = False,
    total_ms: float = 0.0,
    cache_hit: bool = False,
    price_known: bool = True,
    run_id: str = "",
    **fields: object,
) -> ledger_pb2.UsageRecord:
    """A record; `fields` sets any other UsageRecord field (exploration, judge_verdict, score...)."""
    built = ledger_pb2.UsageRecord(
        request_id=request_id,
        run_id=run_id,
        attempt=attempt,
        time=ts(at),
        caller=caller,
        category=category,  # type: ignore[arg-type]
        tier=tier,  # type: ignore[arg-type]
        score=0.5,
        classifier_source=common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL,
        classifier_version="test-1",
        model=model,
        provider="sim",
        outcome=outcome,  # type: ignore[arg-type]
        usage=common_pb2.Usage(
            input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost, baseline_cost_usd=baseline
        ),
        classifier_cost_usd=classifier,
        judge_cost_usd=judge,
        price_map_version="pm-1",
        price_known=price_known,
        total_ms=total_ms,
        cache_hit=cache_hit,
        final=final,
    )
    for name, value in fields.items():
        setattr(built, name, value)
    return built


@dataclass
class Expected:
    requests: int = 0
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: int = 0  # nano-dollars
    baseline: int = 0
    classifier: int = 0
    judge: int = 0
    failed: int = 0
    unpriced: int = 0
    escalated: int = 0
    fallback: int = 0
    cache_hits: int = 0
    latencies: list[float] | None = None

    def check(self, totals: ledger_pb2.Totals) -> None:
        assert totals.requests == self.requests
        assert totals.attempts == self.attempts
        assert totals.input_tokens == self.input_tokens
        assert totals.output_tokens == self.output_tokens
        assert totals.cost_usd == self.cost / NUSD
        assert totals.baseline_cost_usd == self.baseline / NUSD
        assert totals.classifier_cost_usd == self.classifier / NUSD
        assert totals.gross_savings_usd == (self.baseline - self.cost) / NUSD
        assert totals.judge_cost_usd == self.judge / NUSD
        assert totals.net_savings_usd == (self.baseline - self.cost - self.classifier - self.judge) / NUSD
        assert totals.failed_attempt_cost_usd == self.failed / NUSD
        assert totals.unpriced_attempts == self.unpriced
        rate = (lambda n: n / self.requests) if self.requests else (lambda n: 0.0)
        assert totals.escalation_rate == rate(self.escalated)
        assert totals.fallback_rate == rate(self.fallback)
        assert totals.cache_hit_rate == rate(self.cache_hits)
        lat = sorted(self.latencies or [])
        assert totals.latency_p50_ms == reference_percentile(lat, 0.5)
        assert totals.latency_p95_ms == reference_percentile(lat, 0.95)


def reference_percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest rank, reported as the value's histogram bucket (what the ledger documents)."""
    if not sorted_values:
        return 0.0
    value = sorted_values[max(1, math.ceil(p * len(sorted_values))) - 1]
    return round(bucket_value(latency_bucket(value)), 3)


def key_of(dim: int, r: ledger_pb2.UsageRecord) -> str:
    if dim == ledger_pb2.GROUP_BY_MODEL:
        return r.model
    if dim == ledger_pb2.GROUP_BY_TIER:
        return common_pb2.Tier.Name(r.tier)
    if dim == ledger_pb2.GROUP_BY_CATEGORY:
        return common_pb2.Category.Name(r.category)
    if dim == ledger_pb2.GROUP_BY_CALLER:
        return r.caller
    if dim == ledger_pb2.GROUP_BY_HOUR:
        hour = (r.time.seconds * 1_000_000 + r.time.nanos // 1000) // HOUR_US
        return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H:00:00Z")
    return ""


def _t(r: ledger_pb2.UsageRecord) -> int:
    return r.time.seconds * 1_000_000 + r.time.nanos // 1000


def reference(
    records: Iterable[ledger_pb2.UsageRecord], since: int, until: int, dim: int = 0, caller: str | None = None
) -> dict[str, Expected]:
    """Per group: attempt figures from attempts in [since, until) by their own dimensions; request
    figures from requests (runs) whose attempt 1 is in the window, by attempt 1's dimensions. A record
    is identified by (request_id, caller, run_id, attempt), a run by the first three."""
    unique: dict[tuple[str, str, str, int], ledger_pb2.UsageRecord] = {}
    for r in records:
        unique.setdefault((r.request_id, r.caller, r.run_id, r.attempt), r)
    by_request: dict[tuple[str, str, str], list[ledger_pb2.UsageRecord]] = defaultdict(list)
    for r in unique.values():
        by_request[(r.request_id, r.caller, r.run_id)].append(r)
    out: dict[str, Expected] = defaultdict(Expected)
    for r in unique.values():
        if not since <= _t(r) < until or (caller is not None and r.caller != caller):
            continue
        e = out[key_of(dim, r)]
        e.attempts += 1
        e.input_tokens += r.usage.input_tokens
        e.output_tokens += r.usage.output_tokens
        cost = round(r.usage.cost_usd * NUSD)
        e.cost += cost
        e.baseline += round(r.usage.baseline_cost_usd * NUSD)
        e.classifier += round(r.classifier_cost_usd * NUSD)
        e.judge += round(r.judge_cost_usd * NUSD)
        e.failed += 0 if r.final else cost
        e.unpriced += 0 if r.price_known else 1
    for attempts in by_request.values():
        first = next((r for r in attempts if r.attempt == 1), None)
        if first is None or not since <= _t(first) < until or (caller is not None and first.caller != caller):
            continue
        e = out[key_of(dim, first)]
        e.requests += 1
        e.escalated += any(r.outcome == common_pb2.ATTEMPT_OUTCOME_ESCALATED for r in attempts)
        e.fallback += len(attempts) > 1
        e.cache_hits += first.cache_hit
        final = next((r for r in sorted(attempts, key=lambda r: r.attempt) if r.final), None)
        if final is not None:
            e.latencies = [*(e.latencies or []), final.total_ms]
    return dict(out)
