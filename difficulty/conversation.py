"""The conversation a difficulty model reads: its messages, oldest first."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["Conversation", "Message"]


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

    def render(self, max_chars: int) -> str:
        """The conversation as a model reads it (the LLM classifier, the router's judge): the system
        prompt clipped to a fifth of `max_chars`, then the latest turns that fit, each `[role]` headed;
        omitted turns are counted."""
        blocks: list[str] = []
        budget = max_chars
        if self.system:
            system = _clip(self.system, max_chars // 5)
            blocks.append(f"[system]\n{system}")
            budget -= len(system)
        turns = [f"[{message.role}]\n{message.content}" for message in self.dialogue]
        kept: list[str] = []
        for turn in reversed(turns):
            if budget <= 0:
                break
            clipped = _clip(turn, budget)
            kept.append(clipped)
            budget -= len(clipped)
        if len(kept) < len(turns):
            blocks.append(f"[{len(turns) - len(kept)} earlier turns omitted]")
        blocks.extend(reversed(kept))
        return "\n\n".join(blocks)

    def system_key(self) -> str:
        """A digest of the system prompts: cached verdicts are never shared across system prompts."""
        return hashlib.blake2b(self.system.encode(), digest_size=8).hexdigest()


def _clip(text: str, limit: int) -> str:
    """At most about `limit` characters, keeping the start and the end (where the request usually is)."""
    if len(text) <= limit:
        return text
    head = max(limit * 2 // 3, 1)
    tail = max(limit - head, 0)
    return text[:head] + " […] " + (text[-tail:] if tail else "")
