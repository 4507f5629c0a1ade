"""A classifier's answer (`Verdict`), and the interface every classifier implements (`Strategy`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from difficulty.conversation import Conversation
from llmroute.common.v1 import common_pb2

__all__ = ["Overhead", "Strategy", "Verdict"]


@dataclass(frozen=True, slots=True)
class Overhead:
    """What a strategy itself spent (an LLM classifier's tokens and dollars)."""

    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """A strategy's answer. `score`, in [0, 1], estimates the probability that a cheapest-tier model
    fails the prompt where a stronger one would succeed: the chance that routing up pays off.

    `category` and `source` hold the values of the `Category` and `ClassifierSource` enums of
    llmroute/common/v1 (ints at run time)."""

    score: float
    confidence: float
    category: common_pb2.Category.ValueType = common_pb2.CATEGORY_UNSPECIFIED
    rationale: str = ""
    source: common_pb2.ClassifierSource.ValueType = common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    version: str = ""
    overhead: Overhead = field(default_factory=Overhead)
    # The prompt family the score was computed for ("multiple_choice", "open"); "" when none.
    family: str = ""


class Strategy(Protocol):
    """A classifier. `classify` must be safe to call concurrently; `warm_up` loads what it needs."""

    name: str

    async def warm_up(self) -> None: ...

    async def classify(self, conversation: Conversation) -> Verdict: ...
