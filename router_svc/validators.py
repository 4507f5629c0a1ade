"""Output validators: cheap models fail silently, so the router checks what they return.

Each validator takes the answer and the request's expectations and returns None when the output is
acceptable, or a short reason. A rejected answer is escalated one tier up (when enabled).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router_svc import schemas


@dataclass(frozen=True, slots=True)
class Answer:
    content: str
    finish_reason: str
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Expectations:
    json_output: bool = False
    json_schema: dict[str, Any] | None = None
    # The caller capped the output: a "length" finish is then the caller's choice, not a failure.
    caller_capped_output: bool = False


Validator = Callable[[Answer, Expectations], str | None]

_REFUSAL = re.compile(
    r"^\s*(i'?m sorry,? but )?(i can(no|')t|i am (not able|unable)|i'?m (not able|unable)|i won'?t) "
    r"(help|assist|comply|do that|provide)",
    re.IGNORECASE,
)


def not_empty(answer: Answer, expect: Expectations) -> str | None:
    return "empty_output" if not answer.content.strip() else None


def not_truncated(answer: Answer, expect: Expectations) -> str | None:
    if answer.finish_reason == "length" and not expect.caller_capped_output:
        return "truncated_output"
    return None


def not_refusal(answer: Answer, expect: Expectations) -> str | None:
    return "refusal" if _REFUSAL.match(answer.content) else None


def valid_json(answer: Answer, expect: Expectations) -> str | None:
    if not (expect.json_output or expect.json_schema):
        return None
    try:
        value = json.loads(strip_fences(answer.content))
    except ValueError:
        return "invalid_json"
    if expect.json_schema is not None:
        # The path and the failed keyword only: the message would quote the model's output.
        problem = schemas.mismatch(value, expect.json_schema)
        if problem is not None:
            return f"schema_mismatch:{problem}"
    return None


def strip_fences(text: str) -> str:
    """The text inside a Markdown code fence (models often wrap JSON in one), else the text stripped."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped


DEFAULT_VALIDATORS: tuple[Validator, ...] = (not_empty, not_truncated, not_refusal, valid_json)


def first_failure(answer: Answer, expect: Expectations, validators: Sequence[Validator]) -> str | None:
    for validator in validators:
        reason = validator(answer, expect)
        if reason is not None:
            return reason
    return None
