"""A strategy's verdict as the Classify RPC answers it."""

from __future__ import annotations

from difficulty import Verdict
from llmroute.classifier.v1 import classifier_pb2
from llmroute.common.v1 import common_pb2


def classify_response(
    verdict: Verdict, tier: common_pb2.Tier.ValueType, latency_ms: float
) -> classifier_pb2.ClassifyResponse:
    return classifier_pb2.ClassifyResponse(
        tier=tier,
        score=verdict.score,
        confidence=verdict.confidence,
        category=verdict.category,
        source=verdict.source,
        rationale=verdict.rationale,
        version=verdict.version,
        overhead=common_pb2.Usage(
            input_tokens=verdict.overhead.input_tokens,
            output_tokens=verdict.overhead.output_tokens,
            cost_usd=verdict.overhead.cost_usd,
        ),
        overhead_model=verdict.overhead.model,
        latency_ms=latency_ms,
        family=verdict.family,
    )
