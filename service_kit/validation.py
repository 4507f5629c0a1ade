"""Checks on conversations shared by the classifier and the router."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
DEFAULT_MAX_MESSAGES = 1000
# At most this many field violations are listed; the rest are counted in one more (a response's
# metadata must stay small whatever the request).
MAX_VIOLATIONS = 20


class Message(Protocol):
    role: str
    content: str


def message_violations(
    messages: Sequence[Message],
    max_chars: int,
    field: str = "messages",
    max_messages: int = DEFAULT_MAX_MESSAGES,
) -> list[tuple[str, str]]:
    """Field violations for a conversation: none, too many messages, empty content, unknown role, or too
    long in total (every text field counted: content, role and the optional name)."""
    if not messages:
        return [(field, "at least one message is required")]
    if len(messages) > max_messages:
        return [(field, f"{len(messages)} messages; at most {max_messages}")]
    violations = []
    total = 0
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            violations.append(
                (f"{field}[{i}].role", f"unknown role {message.role[:40]!r}; expected one of {sorted(ROLES)}")
            )
        if not message.content.strip():
            violations.append((f"{field}[{i}].content", "must not be empty"))
        total += len(message.content) + len(message.role) + len(getattr(message, "name", "") or "")
    if total > max_chars:
        violations.append((field, f"conversation is {total} characters; the limit is {max_chars}"))
    return bounded(violations)


def bounded(violations: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The first MAX_VIOLATIONS violations, and one more saying how many were left out."""
    if len(violations) <= MAX_VIOLATIONS:
        return violations
    left = len(violations) - MAX_VIOLATIONS
    return [*violations[:MAX_VIOLATIONS], ("", f"and {left} more violations of the same kinds")]
