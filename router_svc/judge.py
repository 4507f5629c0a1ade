"""An optional LLM judge: a cheap model grades whether an answer does what the request asked.

Off unless `ROUTER_JUDGE_MODEL` is set. It grades answers from the tiers in `ROUTER_JUDGE_TIERS`
(default simple and moderate, where cheap models fail silently; a cheap judge grading a flagship's
answer adds cost and little signal), after the rule-based validators passed them. A "fail" rejects
the answer like any validator (`judge_rejected`: escalation one tier up). The judge's call is charged
to the attempt it graded (`judge_cost_usd`, in the ledger as overhead against the savings). When the
judge errors, times out or answers out of format, the answer stands with a `judge_unavailable`
warning: a grading outage must not fail requests. Prompt and answer never reach the logs.

It also compares two answers for exploration (router_svc/exploration.py): whether a cheaper tier's
answer is as good as the routed one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from difficulty import Conversation, Message
from llmroute.common.v1 import common_pb2
from router_svc.providers import Providers
from router_svc.validators import strip_fences
from service_kit.policy import ModelSpec
from service_kit.pricing import PriceBook

log = structlog.get_logger()

INSTRUCTIONS = (
    'You grade an AI assistant\'s answer to a request. Reply with a JSON object: verdict "pass" if '
    "the answer does what the request asks, completely and correctly as far as you can tell, and in "
    'the format it asks for; "fail" if it is wrong, incomplete, evasive, off-topic or in the wrong '
    "format. Add a reason of at most one sentence."
)
COMPARE_INSTRUCTIONS = (
    "You compare two AI assistants' answers to the same request. The reference answer came from a "
    'stronger model; the candidate from a cheaper one. Reply with a JSON object: verdict "pass" if '
    "the candidate does what the request asks as well as the reference for the requester's purpose "
    '(correct, complete, in the format asked; wording and length may differ); "fail" if it is '
    "wrong, incomplete, evasive or clearly worse. Add a reason of at most one sentence."
)
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["pass", "fail"]},
        "reason": {"type": "string", "maxLength": 200},
    },
    "required": ["verdict"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class Grade:
    """The judge's verdict on one answer; `passed` is None when it gave none usable."""

    passed: bool | None
    cost_usd: float = 0.0
    problem: str = ""  # why there is no verdict (for the warning), e.g. "Timeout"

    @property
    def verdict(self) -> int:
        """As records carry it: JUDGE_VERDICT_PASS, _FAIL or _UNAVAILABLE."""
        if self.passed is None:
            return common_pb2.JUDGE_VERDICT_UNAVAILABLE
        return common_pb2.JUDGE_VERDICT_PASS if self.passed else common_pb2.JUDGE_VERDICT_FAIL


class Judge:
    def __init__(
        self,
        *,
        model: str,
        tiers: frozenset[int],
        providers: Providers,
        timeout_seconds: float,
        max_chars: int,
        acompletion: Callable[..., Any],
    ) -> None:
        self.model = model
        self._tiers = tiers
        self._providers = providers
        self._timeout = timeout_seconds
        self._max_chars = max_chars
        self._acompletion = acompletion

    def grades(self, tier: int) -> bool:
        return tier in self._tiers

    async def grade(
        self, chat: list[dict[str, str]], answer: str, prices: PriceBook, *, tier: int = 0
    ) -> Grade:
        """Whether `answer` (from a model of `tier`) does what the request asks."""
        return await self._ask(INSTRUCTIONS, self._exhibit(chat, answer), prices)

    async def compare(
        self, chat: list[dict[str, str]], reference: str, candidate: str, prices: PriceBook, *, tier: int = 0
    ) -> Grade:
        """Whether the cheaper tier's `candidate` (from a model of `tier`) is as good as the routed
        `reference` answer."""
        exhibit = (
            f"{self._request(chat)}\n\n<reference_answer>\n{reference[: self._max_chars]}\n</reference_answer>"
            f"\n\n<candidate_answer>\n{candidate[: self._max_chars]}\n</candidate_answer>"
        )
        return await self._ask(COMPARE_INSTRUCTIONS, exhibit, prices)

    async def _ask(self, instructions: str, exhibit: str, prices: PriceBook) -> Grade:
        route = self._providers.resolve(ModelSpec(model=self.model))
        if route is None:
            return Grade(None, problem="no_credentials")
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._acompletion(
                    **route.kwargs,
                    messages=[
                        {"role": "system", "content": instructions},
                        {"role": "user", "content": exhibit},
                    ],
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "grade", "schema": VERDICT_SCHEMA},
                    },
                    max_tokens=120,
                    temperature=0,
                    num_retries=0,
                    drop_params=True,
                )
        except Exception as error:  # any failure of the judge leaves the answer standing
            log.warning("judge_unavailable", model=self.model, error_type=type(error).__name__)
            return Grade(None, problem=type(error).__name__)
        usage = getattr(response, "usage", None)
        cost = prices.cost(
            self.model,
            int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0),
        ).usd
        verdict = _verdict(response.choices[0].message.content or "")
        if verdict is None:
            log.warning("judge_unavailable", model=self.model, error_type="unparseable_verdict")
            return Grade(None, cost, problem="unparseable_verdict")
        return Grade(verdict == "pass", cost)

    def _request(self, chat: list[dict[str, str]]) -> str:
        """The conversation's turns (system instructions too: they often say what format is wanted),
        cut to `max_chars` as the LLM classifier cuts them (the latest turns kept)."""
        conversation = Conversation(tuple(Message(m["role"], m["content"]) for m in chat))
        return f"<request>\n{conversation.render(self._max_chars)}\n</request>"

    def _exhibit(self, chat: list[dict[str, str]], answer: str) -> str:
        return f"{self._request(chat)}\n\n<answer>\n{answer[: self._max_chars]}\n</answer>"


def _verdict(content: str) -> str | None:
    try:
        value = json.loads(strip_fences(content))
    except ValueError:
        return None
    verdict = value.get("verdict") if isinstance(value, dict) else None
    return verdict if verdict in ("pass", "fail") else None
