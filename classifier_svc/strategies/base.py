"""The strategy interface every classifier implements, and the conversation it receives."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from llmroute.common.v1 import common_pb2


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Conversation:
    """The conversation to classify, oldest message first."""

    messages: tuple[Message, ...]

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Conversation:
        return cls(tuple(Message(role, content) for role, content in pairs))

    @classmethod
    def user(cls, text: str) -> Conversation:
        return cls((Message("user", text),))

    @property
    def system(self) -> str:
        return "\n".join(m.content for m in self.messages if m.role in ("system", "developer"))

    @property
    def last_user(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return self.messages[-1].content

    @property
    def dialogue(self) -> tuple[Message, ...]:
        """Everything but system prompts."""
        return tuple(m for m in self.messages if m.role not in ("system", "developer"))

    def system_key(self) -> str:
        """A digest of the system prompts: cached verdicts are never shared across system prompts."""
        return hashlib.blake2b(self.system.encode(), digest_size=8).hexdigest()


@dataclass(slots=True)
class Overhead:
    """What a strategy itself spent (an LLM classifier's tokens and dollars)."""

    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(slots=True)
class Verdict:
    """A strategy's answer. `score`, in [0, 1], estimates the probability that a cheapest-tier model
    fails the prompt where a stronger one would succeed: the chance that routing up pays off."""

    score: float
    confidence: float
    category: int = common_pb2.CATEGORY_UNSPECIFIED
    rationale: str = ""
    source: int = common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    version: str = ""
    overhead: Overhead = field(default_factory=Overhead)
    # The prompt family the score was computed for ("multiple_choice", "open"); "" when none.
    family: str = ""


class Strategy(Protocol):
    """A classifier. `classify` must be safe to call concurrently; `warm_up` loads what it needs."""

    name: str

    async def warm_up(self) -> None: ...

    async def classify(self, conversation: Conversation) -> Verdict: ...
