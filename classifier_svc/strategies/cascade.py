"""Local model first; the LLM classifier only when the local model is unsure (and one is configured)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from classifier_svc.strategies.llm import LLMStrategy, fall_back
from classifier_svc.strategies.warm_up import warm_up_local
from difficulty import Conversation, Strategy, Verdict

__all__ = ["CascadeStats", "CascadeStrategy"]


@dataclass(slots=True)
class CascadeStats:
    """How the cascade decided, since start."""

    # Answered by the local model, confident enough (or no LLM configured).
    local: int = 0
    # Sent to the LLM because the local confidence was below the bound.
    escalated: int = 0
    # Of those, the LLM failed and the local verdict was returned.
    llm_failed: int = 0


class CascadeStrategy:
    """`local` answers; below `min_confidence`, `llm` (if any) is asked, and its verdict wins when it gives one."""

    name = "cascade"

    def __init__(self, local: Strategy, llm: LLMStrategy | None, *, min_confidence: float) -> None:
        self._local = local
        self._llm = llm
        self._min_confidence = min_confidence
        self.stats = CascadeStats()

    @property
    def local(self) -> Strategy:
        return self._local

    @property
    def llm(self) -> LLMStrategy | None:
        return self._llm

    async def warm_up(self) -> None:
        await warm_up_local(self._local)
        if self._llm is not None:
            await self._llm.prepare()

    async def classify(self, conversation: Conversation) -> Verdict:
        verdict = await self._local.classify(conversation)
        if self._llm is None or verdict.confidence >= self._min_confidence:
            self.stats.local += 1
            return verdict
        self.stats.escalated += 1
        reason = f"local confidence {verdict.confidence:.2f} < {self._min_confidence:.2f}"
        attempt = await self._llm.attempt(conversation)
        if attempt.verdict is None:
            self.stats.llm_failed += 1
            return fall_back(verdict, attempt)
        return dataclasses.replace(attempt.verdict, rationale=f"{reason}; {attempt.verdict.rationale}")
