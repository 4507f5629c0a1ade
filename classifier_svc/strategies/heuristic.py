"""A transparent keyword-and-shape heuristic: no model file, microseconds per prompt.

It is the floor the learned model must beat, and the fallback when no artifact is available.
"""

from __future__ import annotations

import re

from classifier_svc.strategies.base import Conversation, Verdict
from llmroute.common.v1 import common_pb2

# Ordered: the first category whose pattern matches the last user turn wins.
_CATEGORY_PATTERNS: tuple[tuple[int, re.Pattern[str]], ...] = tuple(
    (category, re.compile(pattern, re.IGNORECASE))
    for category, pattern in (
        (common_pb2.CATEGORY_CODE, r"```|\bdef |\bclass |\bfunction\b|\bSQL\b|\bregex\b|\bpython\b|\bjavascript\b|\bbug\b|\bcompile|\brefactor|\bimplement"),
        (common_pb2.CATEGORY_TRANSLATION, r"\btranslat|\bin (french|german|spanish|japanese|chinese|italian)\b"),
        (common_pb2.CATEGORY_SUMMARIZATION, r"\bsummar|\btl;?dr\b|\bkey points\b|\bcondense"),
        (common_pb2.CATEGORY_EXTRACTION, r"\bextract|\blist (all|every) |\bpull out\b|\bfind (all|the) .* in\b|\bparse\b|\bjson\b"),
        (common_pb2.CATEGORY_CLASSIFICATION, r"\bclassif|\bis this (spam|positive|negative)|\bsentiment\b|\bcategori[sz]e|\blabel\b|\bspam\b"),
        (common_pb2.CATEGORY_MATH, r"\bprove\b|\btheorem\b|\bintegral\b|\bderivative\b|\bequation\b|\bsolve\b|\d+\s*[-+*/^]\s*\d+|\bprobability\b"),
        (common_pb2.CATEGORY_PLANNING, r"\bplan\b|\bschedule\b|\broadmap\b|\bstrategy\b|\bitinerary\b"),
        (common_pb2.CATEGORY_REASONING, r"\bwhy\b|\bstep[- ]by[- ]step\b|\breason|\bexplain\b|\btrade-?offs?\b|\banaly[sz]e"),
        (common_pb2.CATEGORY_GENERATION, r"\bwrite\b|\bdraft\b|\bcompose\b|\bgenerate\b|\bstory\b|\bpoem\b|\bessay\b|\bemail\b"),
        (common_pb2.CATEGORY_QUESTION_ANSWERING, r"\?\s*$|^(what|who|when|where|which|how)\b"),
    )
)

# How hard each category tends to be for a cheap model (a prior, nudged by the prompt's shape).
_CATEGORY_PRIOR = {
    common_pb2.CATEGORY_CLASSIFICATION: 0.10,
    common_pb2.CATEGORY_EXTRACTION: 0.20,
    common_pb2.CATEGORY_TRANSLATION: 0.25,
    common_pb2.CATEGORY_CHAT: 0.10,
    common_pb2.CATEGORY_SUMMARIZATION: 0.30,
    common_pb2.CATEGORY_QUESTION_ANSWERING: 0.30,
    common_pb2.CATEGORY_GENERATION: 0.35,
    common_pb2.CATEGORY_CODE: 0.55,
    common_pb2.CATEGORY_PLANNING: 0.55,
    common_pb2.CATEGORY_REASONING: 0.55,
    common_pb2.CATEGORY_MATH: 0.65,
}

_MULTI_STEP = re.compile(
    r"\bstep[- ]by[- ]step\b|\bprove\b|\bderive\b|\bfirst\b.*\bthen\b|\bmulti-?step\b|\boptimi[sz]e\b|"
    r"\bedge cases?\b|\bconcurren|\bdistributed\b|\bcomplexity\b|\brigorous|\bformal",
    re.IGNORECASE | re.DOTALL,
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def detect_category(text: str) -> int:
    for category, pattern in _CATEGORY_PATTERNS:
        if pattern.search(text):
            return category
    return common_pb2.CATEGORY_CHAT


class HeuristicStrategy:
    name = "heuristic"
    version = "heuristic/1"

    async def warm_up(self) -> None:
        return None

    async def classify(self, conversation: Conversation) -> Verdict:
        return self.classify_sync(conversation)

    def classify_sync(self, conversation: Conversation) -> Verdict:
        text = conversation.last_user
        # A short follow-up inherits the thread: judge it with the earlier user turns.
        thread = " ".join(m.content for m in conversation.dialogue if m.role == "user")
        category = detect_category(text)
        if category in (common_pb2.CATEGORY_CHAT, common_pb2.CATEGORY_QUESTION_ANSWERING) and len(thread) > len(text):
            category = detect_category(thread)
        score = _CATEGORY_PRIOR.get(category, 0.3)
        words = len(thread.split())
        score += min(words / 2000, 0.15)
        if _MULTI_STEP.search(thread):
            score += 0.2
        if len(_NUMBER.findall(text)) >= 4:
            score += 0.1
        score = max(0.0, min(score, 0.99))
        return Verdict(
            score=round(score, 4),
            # The heuristic knows it is a heuristic: confidence grows toward the ends of the scale.
            confidence=round(0.5 + abs(score - 0.5) * 0.6, 4),
            category=category,
            rationale=f"heuristic: {common_pb2.Category.Name(category).removeprefix('CATEGORY_').lower()} prior, {words} words",
            source=common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL,
            version=self.version,
        )
