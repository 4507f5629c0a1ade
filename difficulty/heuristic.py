"""A transparent keyword-and-shape heuristic: no model file, microseconds per prompt.

It is the floor the learned model must beat, and the fallback when no artifact is available.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from difficulty.conversation import Conversation
from difficulty.verdict import Verdict
from llmroute.common.v1 import common_pb2


def fold(text: str) -> str:
    """``text`` as the category and multi-step rules read it: lower case, length kept.

    The rules are lower-case ASCII and case-sensitive on folded text, which matches exactly where the
    same rules with IGNORECASE match the original text (and costs one pass instead of a
    case-insensitive comparison at every position of every rule). Besides A-Z, the letters that
    IGNORECASE matches to an ASCII letter are the Kelvin sign, which ``lower()`` maps to "k", and
    three it does not map there: dotted and dotless I, and the long s. Every other character's
    ``lower()`` is one non-ASCII character of the same word, digit and space classes
    (``tests/classifier/test_heuristic.py`` checks all code points).
    """
    if text.isascii():
        return text.lower()
    # "İ".lower() is "i" plus a combining dot: replaced first, so the length and word boundaries stay.
    return text.replace("\u0130", "i").lower().replace("\u0131", "i").replace("\u017f", "s")


@dataclass(frozen=True, slots=True)
class _Rule:
    category: common_pb2.Category.ValueType
    # Literals of which every match contains at least one: when none is in the text the regex is not
    # run (a substring test is far cheaper than a regex scan). None: always run it.
    needles: tuple[str, ...] | None
    pattern: re.Pattern[str]


def _rule(category: common_pb2.Category.ValueType, needles: str | None, pattern: str) -> _Rule:
    return _Rule(category, None if needles is None else tuple(needles.split("|")), re.compile(pattern))


# Ordered: the first rule that matches the folded text names the category. Split and factored for
# speed (same matches as the single IGNORECASE pattern per category they replace): a word boundary in
# front of every branch, or an anchor in one branch, costs the regex engine a test per branch at
# every position of the text.
_RULES: tuple[_Rule, ...] = (
    _rule(common_pb2.CATEGORY_CODE, "```|def |class |function|sql|regex|python|javascript|bug|compile|refactor|implement",
          r"```|\b(?:def |class |function\b|sql\b|regex\b|python\b|javascript\b|bug\b|compile|refactor|implement)"),
    _rule(common_pb2.CATEGORY_TRANSLATION, "translat|french|german|spanish|japanese|chinese|italian",
          r"\b(?:translat|in (?:french|german|spanish|japanese|chinese|italian)\b)"),
    _rule(common_pb2.CATEGORY_SUMMARIZATION, "summar|tldr|tl;dr|key points|condense",
          r"\b(?:summar|tl;?dr\b|key points\b|condense)"),
    _rule(common_pb2.CATEGORY_EXTRACTION, "extract|list all |list every |pull out|find all |find the |parse|json",
          r"\b(?:extract|list (?:all|every) |pull out\b|find (?:all|the) .* in\b|parse\b|json\b)"),
    _rule(common_pb2.CATEGORY_CLASSIFICATION, "classif|spam|positive|negative|sentiment|categori|label",
          r"\b(?:classif|is this (?:spam|positive|negative)|sentiment\b|categori[sz]e|label\b|spam\b)"),
    _rule(common_pb2.CATEGORY_MATH, "prove|theorem|integral|derivative|equation|solve|probability",
          r"\b(?:prove|theorem|integral|derivative|equation|solve|probability)\b"),
    # Finds the same texts as "\d+\s*op\s*\d+", without backtracking over runs of digits.
    _rule(common_pb2.CATEGORY_MATH, None, r"\d\s*[-+*/^]\s*\d"),
    _rule(common_pb2.CATEGORY_PLANNING, "plan|schedule|roadmap|strategy|itinerary",
          r"\b(?:plan|schedule|roadmap|strategy|itinerary)\b"),
    _rule(common_pb2.CATEGORY_REASONING, "why|step|reason|explain|trade|analy",
          r"\b(?:why\b|step[- ]by[- ]step\b|reason|explain\b|trade-?offs?\b|analy[sz]e)"),
    _rule(common_pb2.CATEGORY_GENERATION, "write|draft|compose|generate|story|poem|essay|email",
          r"\b(?:write|draft|compose|generate|story|poem|essay|email)\b"),
    _rule(common_pb2.CATEGORY_QUESTION_ANSWERING, "?", r"\?\s*$"),
    _rule(common_pb2.CATEGORY_QUESTION_ANSWERING, None, r"^(?:what|who|when|where|which|how)\b"),
)  # fmt: skip

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

# Read on folded text, like the category rules.
_MULTI_STEP = re.compile(
    r"\b(?:step[- ]by[- ]step\b|prove\b|derive\b|first\b.*\bthen\b|multi-?step\b|optimi[sz]e\b|"
    r"edge cases?\b|concurren|distributed\b|complexity\b|rigorous|formal)",
    re.DOTALL,
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def detect_category(text: str) -> common_pb2.Category.ValueType:
    """The task a request asks for, by keyword rules (case-insensitive); CATEGORY_CHAT when none matches."""
    return _category_of_folded(fold(text))


def _category_of_folded(folded: str) -> common_pb2.Category.ValueType:
    for rule in _RULES:
        if rule.needles is not None and not any(needle in folded for needle in rule.needles):
            continue
        if rule.pattern.search(folded):
            return rule.category
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
        folded_thread = fold(thread)
        category = detect_category(text)
        vague = category in (common_pb2.CATEGORY_CHAT, common_pb2.CATEGORY_QUESTION_ANSWERING)
        if vague and len(thread) > len(text):
            category = _category_of_folded(folded_thread)
        score = _CATEGORY_PRIOR.get(category, 0.3)
        words = len(thread.split())
        score += min(words / 2000, 0.15)
        if _MULTI_STEP.search(folded_thread):
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
