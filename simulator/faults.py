"""Fault injection: what can go wrong with a provider call, and the rules that say when it does.

A fault reaches a request in one of three ways, checked in this order:
  1. the `x-sim-fault` request header, e.g. `status:429` or `cut_stream:2`;
  2. a directive in the last user message, e.g. `[[sim:fault=status:500]]` (handy with grpcurl);
  3. rules posted to `POST /_sim/faults`, matched on the request's model.
"""

from __future__ import annotations

import fnmatch
import itertools
import random
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FaultKind = Literal[
    "status",
    "delay",
    "timeout",
    "malformed",
    "cut_stream",
    "slow_stream",
    "empty",
    "length",
    "refusal",
    "bad_json",
]

HEADER = "x-sim-fault"
_DIRECTIVE = re.compile(r"\[\[sim:fault=([^\]]+)\]\]")
# The parameter a bare value sets: "status:429", "delay:250", "cut_stream:2", "timeout:5",
# "slow_stream:200".
_PRIMARY_PARAM = {
    "status": "status",
    "delay": "delay_ms",
    "cut_stream": "after_chunks",
    "timeout": "hang_seconds",
    "slow_stream": "chunk_interval_ms",
}


class FaultSpec(BaseModel):
    """One fault and its parameters; parameters that do not apply to its kind are ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: FaultKind
    # status: the HTTP status to answer with (429 also sends `retry-after`).
    status: int = Field(default=500, ge=400, le=599)
    # status: the error message in the OpenAI-style body.
    message: str | None = None
    # status 429/503: seconds the client is told to wait.
    retry_after: float = Field(default=1.0, ge=0)
    # delay: milliseconds to wait before answering normally.
    delay_ms: float = Field(default=1000.0, ge=0)
    # timeout: hang at most this long (capped by the simulator's max_hang_seconds), then answer 504.
    hang_seconds: float | None = Field(default=None, gt=0)
    # cut_stream: content deltas sent before the connection is closed.
    after_chunks: int = Field(default=2, ge=0)
    # slow_stream: milliseconds between streamed chunks (one token each), whatever the model's pace.
    chunk_interval_ms: float = Field(default=200.0, ge=0)


class FaultRule(FaultSpec):
    """A fault applied to requests for a model: `count` times (None: forever), each with `probability`."""

    id: int = 0
    # Exact model name as sent in the request body ("gpt-5-mini", "groq/openai/gpt-oss-20b"), "*" for
    # every model, or a shell-style pattern ("claude-*").
    model: str = "*"
    count: int | None = Field(default=None, ge=0)
    probability: float = Field(default=1.0, ge=0, le=1)
    # How many requests this rule has faulted so far.
    applied: int = 0


class FaultError(ValueError):
    """A fault given in a header or directive that does not parse; answered with HTTP 400."""


def parse_spec(text: str) -> FaultSpec:
    """`status:429,retry_after=2` -> FaultSpec(fault="status", status=429, retry_after=2)."""
    head, *extras = [part.strip() for part in text.split(",")]
    kind, _, value = head.partition(":")
    params: dict[str, Any] = {"fault": kind.strip()}
    if value:
        if kind not in _PRIMARY_PARAM:
            raise FaultError(f"fault {kind!r} takes no value (got {value!r})")
        params[_PRIMARY_PARAM[kind]] = value.strip()
    for extra in extras:
        key, sep, val = extra.partition("=")
        if not sep:
            raise FaultError(f"expected key=value after the fault, got {extra!r}")
        params[key.strip()] = val.strip()
    try:
        return FaultSpec.model_validate(params)
    except ValidationError as exc:
        raise FaultError(_first_error(exc)) from None


def directive_in(text: str) -> str | None:
    # The substring test keeps the regex off the hot path for ordinary prompts.
    if "[[sim:" not in text:
        return None
    match = _DIRECTIVE.search(text)
    return match.group(1) if match else None


class FaultRules:
    """The rules posted to the admin API, tried in the order they were added."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)
        self._rng = rng or random.Random()

    @staticmethod
    def validate(payload: dict[str, Any]) -> FaultRule:
        """The rule `payload` describes; FaultError says what is wrong with it."""
        try:
            return FaultRule.model_validate({**payload, "id": 0, "applied": 0})
        except ValidationError as exc:
            raise FaultError(_first_error(exc)) from None

    def add(self, payload: dict[str, Any]) -> FaultRule:
        rule = self.validate(payload).model_copy(update={"id": next(self._ids)})
        self._rules.append(rule)
        return rule

    def remove(self, rule_id: int) -> bool:
        before = len(self._rules)
        self._rules = [rule for rule in self._rules if rule.id != rule_id]
        return len(self._rules) < before

    def clear(self) -> None:
        self._rules.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {**rule.model_dump(), "remaining": None if rule.count is None else rule.count - rule.applied}
            for rule in self._rules
        ]

    def pick(self, model: str) -> FaultSpec | None:
        """The first rule that matches `model`, has uses left and wins its probability draw."""
        for index, rule in enumerate(self._rules):
            if rule.count is not None and rule.applied >= rule.count:
                continue
            if rule.model != "*" and rule.model != model and not fnmatch.fnmatchcase(model, rule.model):
                continue
            if rule.probability < 1 and self._rng.random() >= rule.probability:
                continue
            self._rules[index] = rule.model_copy(update={"applied": rule.applied + 1})
            return rule
        return None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "fault"
    return f"{where}: {error['msg']}"
