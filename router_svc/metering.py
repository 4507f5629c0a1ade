"""The router's Prometheus metrics, taken where every provider call is accounted for: the usage
records on their way to the ledger (`MeteredSink` wraps the sink), so the metrics and the ledger count
the same calls. Served with the other metrics at `ROUTER_METRICS_PORT` (service_kit/metrics.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2
from router_svc.accounting import UsageSink

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

_V = TypeVar("_V", bound=int)

PROVIDER_CALLS = Counter(
    "llmroute_router_provider_calls", "Provider calls, by model and outcome.", ["model", "outcome"]
)
PROVIDER_SECONDS = Histogram(
    "llmroute_router_provider_call_duration_seconds",
    "Provider call latency, by model.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
)
SPEND = Counter("llmroute_router_spend_usd", "Spend on provider calls, in US dollars.", ["tier", "model"])
BASELINE = Counter(
    "llmroute_router_baseline_usd",
    "What the answers would have cost on the baseline model, in US dollars.",
    ["tier"],
)
EXPLORATION_SPEND = Counter(
    "llmroute_router_exploration_spend_usd", "Spend on exploration calls and their grading, in US dollars."
)
SIMULATED_CALLS = Counter("llmroute_router_simulated_calls", "Calls the bundled simulator answered.")
REQUESTS = Counter(
    "llmroute_router_requests", "Answered requests, by tier and classification source.", ["tier", "source"]
)
CACHE_HITS = Counter(
    "llmroute_router_classification_cache_hits", "Answered requests classified from the cache."
)
MODELS_IN_COOLDOWN = Gauge("llmroute_router_models_in_cooldown", "Models whose circuit breaker is open now.")
SPOOL_DEPTH = Gauge("llmroute_router_spool_depth", "Usage records waiting in the spool for the ledger.")


def _name(enum: _EnumTypeWrapper[_V], value: _V, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


class MeteredSink:
    """A UsageSink that counts each record, then hands it on."""

    def __init__(self, inner: UsageSink) -> None:
        self._inner = inner

    def submit(self, records: Sequence[ledger_pb2.UsageRecord]) -> None:
        for record in records:
            observe(record)
        self._inner.submit(records)

    def accepting(self) -> bool:
        return self._inner.accepting()

    async def start(self) -> None:
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    def __getattr__(self, name: str) -> object:  # flush, stats: the inner sink's, when it has them
        return getattr(self._inner, name)


def observe(record: ledger_pb2.UsageRecord) -> None:
    model = record.model or "unknown"
    tier = _name(common_pb2.Tier, record.tier, "TIER_")
    PROVIDER_CALLS.labels(model, _name(common_pb2.AttemptOutcome, record.outcome, "ATTEMPT_OUTCOME_")).inc()
    if record.provider_ms:
        PROVIDER_SECONDS.labels(model).observe(record.provider_ms / 1000)
    SPEND.labels(tier, model).inc(max(record.usage.cost_usd, 0.0))
    if record.simulated:
        SIMULATED_CALLS.inc()
    if record.exploration:
        EXPLORATION_SPEND.inc(max(record.usage.cost_usd + record.judge_cost_usd, 0.0))
        return
    if record.final:
        BASELINE.labels(tier).inc(max(record.usage.baseline_cost_usd, 0.0))
        REQUESTS.labels(
            tier, _name(common_pb2.ClassifierSource, record.classifier_source, "CLASSIFIER_SOURCE_")
        ).inc()
        if record.cache_hit:
            CACHE_HITS.inc()


def watch(models_in_cooldown: Callable[[], int], spool_depth: Callable[[], int]) -> None:
    """The gauges read at scrape time (the last router created in a process is the one measured)."""
    MODELS_IN_COOLDOWN.set_function(models_in_cooldown)
    SPOOL_DEPTH.set_function(spool_depth)
