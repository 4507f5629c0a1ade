"""A cheap reading of the last user message: what kind of answer fits, and how hard it looks.

The simulator has no model, so this is what makes its answers plausible: a label for a classification
prompt, prose for "write/explain", code for code, and a difficulty `score` for LLM-classifier prompts.
It is deliberately a few regexes: it runs on every request.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Literal

AnswerKind = Literal["label", "short", "long", "code"]

# Ordered: the first category whose pattern matches wins. Names match llmroute's Category enum.
_CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        (
            "code",
            r"```|\bdef |\bclass |\bfunction\b|\bsql\b|\bregex\b|\bpython\b|\bjavascript\b|\bbug\b|\brefactor|\bimplement",
        ),
        ("translation", r"\btranslat"),
        ("summarization", r"\bsummar|\btl;?dr\b|\bkey points\b"),
        ("classification", r"\bclassif|\bsentiment\b|\bcategori[sz]e|\blabel\b|\bspam\b|\byes or no\b"),
        ("extraction", r"\bextract|\bparse\b|\bpull out\b|\blist (all|every)\b"),
        (
            "math",
            r"\bprove\b|\btheorem\b|\bintegral\b|\bderivative\b|\bequation\b|\bsolve\b|\d+\s*[-+*/^]\s*\d+",
        ),
        ("planning", r"\bplan\b|\bschedule\b|\broadmap\b|\bitinerary\b|\barchitecture\b"),
        ("reasoning", r"\bwhy\b|\bstep[- ]by[- ]step\b|\breason|\btrade-?offs?\b|\banaly[sz]e|\bcompare\b"),
        (
            "generation",
            r"\bwrite\b|\bdraft\b|\bcompose\b|\bgenerate\b|\bstory\b|\bpoem\b|\bessay\b|\bexplain\b|\bdescribe\b",
        ),
        ("question_answering", r"\?\s*$|^\s*(what|who|when|where|which|how)\b"),
    )
)

# How hard each category tends to be for the cheapest models.
_PRIOR = {
    "classification": 0.08,
    "chat": 0.1,
    "extraction": 0.18,
    "translation": 0.22,
    "question_answering": 0.25,
    "summarization": 0.28,
    "generation": 0.35,
    "code": 0.55,
    "planning": 0.55,
    "reasoning": 0.58,
    "math": 0.65,
}

_KIND: dict[str, AnswerKind] = {
    "classification": "label",
    "code": "code",
    "generation": "long",
    "planning": "long",
    "reasoning": "long",
    "summarization": "short",
}

_MULTI_STEP = re.compile(
    r"\bstep[- ]by[- ]step\b|\bprove\b|\bderive\b|\bthen\b|\bmulti-?step\b|\boptimi[sz]e|\bedge cases?\b|"
    r"\bconcurren|\bdistributed\b|\bcomplexity\b|\brigorous|\bformal|\bdesign\b|\btrade-?offs?\b",
    re.IGNORECASE,
)
# A classifier prompt usually wraps the conversation to judge in tags; judge what is inside them.
_WRAPPED = re.compile(
    r"<(conversation|prompt|input|text|query|message)>(.*?)</\1>", re.IGNORECASE | re.DOTALL
)
_ONE_WORD = re.compile(
    r"\b(one word|single word|only the (label|category|answer)|yes or no|true or false)\b", re.I
)
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{4,}")
_STOPWORDS = frozenset(
    [
        "about",
        "above",
        "after",
        "again",
        "against",
        "because",
        "before",
        "being",
        "below",
        "between",
        "could",
        "doesn't",
        "during",
        "every",
        "having",
        "other",
        "should",
        "their",
        "there",
        "these",
        "those",
        "through",
        "under",
        "until",
        "where",
        "which",
        "while",
        "would",
        "write",
        "explain",
        "please",
        "simple",
        "answer",
        "question",
        "following",
        "describe",
    ]
)


@dataclass(frozen=True, slots=True)
class Analysis:
    category: str
    kind: AnswerKind
    # Probability-like difficulty in [0, 1]: higher means a cheap model is more likely to fail.
    score: float
    # A stable per-prompt number, so the same request always gets the same answer.
    seed: int
    # A few words of the prompt that the answer can mention.
    topic: str


def stable_seed(*parts: str) -> int:
    # Not hash(): that is salted per process, and answers must be the same across restarts.
    return zlib.crc32("\x00".join(parts).encode("utf-8", "surrogatepass"))


def analyze(text: str, model: str = "") -> Analysis:
    wrapped = _WRAPPED.search(text)
    subject = wrapped.group(2) if wrapped else text
    category = next((name for name, pattern in _CATEGORIES if pattern.search(subject)), "chat")
    words = len(subject.split())
    score = _PRIOR[category] + min(words / 1500, 0.2) + 0.07 * min(len(_MULTI_STEP.findall(subject)), 3)
    if "```" in subject:
        score += 0.05
    score = round(max(0.02, min(score, 0.98)), 3)
    kind: AnswerKind = "label" if _ONE_WORD.search(subject) else _KIND.get(category, "short")
    return Analysis(
        category=category,
        kind=kind,
        score=score,
        seed=stable_seed(model, text),
        topic=_topic(subject),
    )


def _topic(text: str) -> str:
    seen: list[str] = []
    for word in _WORD.findall(text[:2000]):
        lower = word.lower()
        if lower not in _STOPWORDS and lower not in seen:
            seen.append(lower)
    # The longest words carry the most meaning; keep the prompt's order among them.
    chosen = set(sorted(seen, key=len, reverse=True)[:3])
    return " ".join(w for w in seen if w in chosen) or "your request"
