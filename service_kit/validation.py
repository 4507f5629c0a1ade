"""Checks on conversations shared by the classifier and the router."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


class Message(Protocol):
    role: str
    content: str


def message_violations(
    messages: Sequence[Message], max_chars: int, field: str = "messages"
) -> list[tuple[str, str]]:
    """Field violations for a conversation: none, empty content, unknown role, or too long in total."""
    if not messages:
        return [(field, "at least one message is required")]
    violations = []
    total = 0
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            violations.append(
                (f"{field}[{i}].role", f"unknown role {message.role!r}; expected one of {sorted(ROLES)}")
            )
        if not message.content.strip():
            violations.append((f"{field}[{i}].content", "must not be empty"))
        total += len(message.content)
    if total > max_chars:
        violations.append((field, f"conversation is {total} characters; the limit is {max_chars}"))
    return violations
