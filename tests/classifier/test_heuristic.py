"""The heuristic's keyword rules: categories of hand-labelled prompts, case folding, and the rules they replaced."""

from __future__ import annotations

import re
import sys

import pytest

from classifier_training import data
from classifier_training.cache_eval import load_pairs
from difficulty import Conversation
from difficulty.heuristic import HeuristicStrategy, detect_category, fold
from llmroute.common.v1 import common_pb2 as pb

# Written down by reading the rules (the first rule that matches wins), not by running them.
EXPECTED: list[tuple[str, int]] = [
    ("Write a Python function that merges two sorted lists.", pb.CATEGORY_CODE),
    ("PLEASE REFACTOR THIS MODULE", pb.CATEGORY_CODE),
    # "sql" comes before "explain" and "trade-offs": code outranks reasoning.
    ("Explain the trade-offs between SQL and NoSQL databases.", pb.CATEGORY_CODE),
    # A known quirk of the rules: "compile" reads as code.
    ("Compile a list of ten fun facts about otters", pb.CATEGORY_CODE),
    ("Translate 'good morning' into French.", pb.CATEGORY_TRANSLATION),
    ("How do you say thank you in Japanese?", pb.CATEGORY_TRANSLATION),
    ("Summarize the key points of the attached meeting notes in three bullets.", pb.CATEGORY_SUMMARIZATION),
    ("tl;dr of this thread please", pb.CATEGORY_SUMMARIZATION),
    ("Résumé: can you summarise this?", pb.CATEGORY_SUMMARIZATION),
    ("Extract every date from this contract.", pb.CATEGORY_EXTRACTION),
    ("Find all the email addresses in the text below.", pb.CATEGORY_EXTRACTION),
    ("Find the total in the table", pb.CATEGORY_EXTRACTION),
    # "find the ... in" must be on one line.
    ("Find the total\nin the table", pb.CATEGORY_CHAT),
    ("Is this spam? 'You won a free cruise, click here.'", pb.CATEGORY_CLASSIFICATION),
    ("What is the sentiment of this review: 'great value'?", pb.CATEGORY_CLASSIFICATION),
    ("Solve for x: 3x + 5 = 20.", pb.CATEGORY_MATH),
    ("What is 17 * 23?", pb.CATEGORY_MATH),
    ("Give me 3 - 4 ideas", pb.CATEGORY_MATH),
    ("Prove that the square root of 2 is irrational, step by step.", pb.CATEGORY_MATH),
    ("Plan a three-day itinerary for Rome.", pb.CATEGORY_PLANNING),
    ("What's the plan?", pb.CATEGORY_PLANNING),
    ("Why does ice float on water?", pb.CATEGORY_REASONING),
    ("ANALYZE the results", pb.CATEGORY_REASONING),
    ("Draft a polite email declining the meeting.", pb.CATEGORY_GENERATION),
    ("Who wrote Pride and Prejudice", pb.CATEGORY_QUESTION_ANSWERING),
    ("The capital of France is which city?  \n", pb.CATEGORY_QUESTION_ANSWERING),
    ("hi there, thanks!", pb.CATEGORY_CHAT),
    ("", pb.CATEGORY_CHAT),
    # Letters that IGNORECASE matches to ASCII ones: dotted capital I, long s, the Kelvin sign.
    ("\u0130mplement a queue", pb.CATEGORY_CODE),
    ("cla\u017f\u017fify the\u017fe tickets", pb.CATEGORY_CLASSIFICATION),
    ("Brea\u212a down the \u212aey points", pb.CATEGORY_SUMMARIZATION),
    # "İ" is a letter: no word boundary before "SQL" (a plain lower() would make one).
    ("\u0130SQL", pb.CATEGORY_CHAT),
]


@pytest.mark.parametrize(("text", "category"), EXPECTED, ids=[t[:40] for t, _ in EXPECTED])
def test_categories_of_hand_labelled_prompts(text: str, category: pb.Category.ValueType) -> None:
    assert pb.Category.Name(detect_category(text)) == pb.Category.Name(category)


def test_fold_keeps_every_character_class_the_rules_read() -> None:
    """Each code point folds to one character: the ASCII letter IGNORECASE would match it to, or one of
    the same word, digit and space classes that is not ASCII (so it matches no literal of the rules)."""
    word, digit, space = re.compile(r"\w"), re.compile(r"\d"), re.compile(r"\s")
    any_letter = re.compile("[a-z]", re.IGNORECASE)
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        folded = fold(char)
        assert len(folded) == 1, hex(code)
        if any_letter.fullmatch(char):
            assert re.fullmatch(folded, char, re.IGNORECASE) and folded.isascii() and folded.islower(), hex(
                code
            )
        elif folded != char:
            assert not folded.isascii(), hex(code)
            for cls in (word, digit, space):
                assert bool(cls.match(folded)) == bool(cls.match(char)), hex(code)


# The rules as they were before they were rewritten for speed (IGNORECASE, one pattern per category).
_REFERENCE = tuple(
    (category, re.compile(pattern, re.IGNORECASE))
    for category, pattern in (
        (pb.CATEGORY_CODE, r"```|\bdef |\bclass |\bfunction\b|\bSQL\b|\bregex\b|\bpython\b|\bjavascript\b|\bbug\b|\bcompile|\brefactor|\bimplement"),
        (pb.CATEGORY_TRANSLATION, r"\btranslat|\bin (french|german|spanish|japanese|chinese|italian)\b"),
        (pb.CATEGORY_SUMMARIZATION, r"\bsummar|\btl;?dr\b|\bkey points\b|\bcondense"),
        (pb.CATEGORY_EXTRACTION, r"\bextract|\blist (all|every) |\bpull out\b|\bfind (all|the) .* in\b|\bparse\b|\bjson\b"),
        (pb.CATEGORY_CLASSIFICATION, r"\bclassif|\bis this (spam|positive|negative)|\bsentiment\b|\bcategori[sz]e|\blabel\b|\bspam\b"),
        (pb.CATEGORY_MATH, r"\bprove\b|\btheorem\b|\bintegral\b|\bderivative\b|\bequation\b|\bsolve\b|\d+\s*[-+*/^]\s*\d+|\bprobability\b"),
        (pb.CATEGORY_PLANNING, r"\bplan\b|\bschedule\b|\broadmap\b|\bstrategy\b|\bitinerary\b"),
        (pb.CATEGORY_REASONING, r"\bwhy\b|\bstep[- ]by[- ]step\b|\breason|\bexplain\b|\btrade-?offs?\b|\banaly[sz]e"),
        (pb.CATEGORY_GENERATION, r"\bwrite\b|\bdraft\b|\bcompose\b|\bgenerate\b|\bstory\b|\bpoem\b|\bessay\b|\bemail\b"),
        (pb.CATEGORY_QUESTION_ANSWERING, r"\?\s*$|^(what|who|when|where|which|how)\b"),
    )
)  # fmt: skip


def _reference_category(text: str) -> int:
    for category, pattern in _REFERENCE:
        if pattern.search(text):
            return category
    return pb.CATEGORY_CHAT


def _committed_texts() -> list[str]:
    """The hand-labelled prompts above, the app prompts and both sides of every cache pair."""
    texts = [text for text, _ in EXPECTED]
    texts.extend(content for app in data.load_app_prompts() for _, content in app.messages)
    for pair in load_pairs():
        texts.extend(m.content for side in (pair.a, pair.b) for m in side.messages)
    return texts


def test_same_categories_as_the_rules_they_replaced() -> None:
    texts = _committed_texts()
    variants = [
        v for t in texts for v in (t, t.upper(), t.title(), t.replace("i", "\u0130").replace("s", "\u017f"))
    ]
    differ = [t for t in variants if detect_category(t) != _reference_category(t)]
    assert len(variants) > 1000 and differ == []


def test_case_does_not_change_the_heuristic_verdict() -> None:
    strategy = HeuristicStrategy()
    lower = strategy.classify_sync(Conversation.user("first list the edge cases, then optimise the loop"))
    upper = strategy.classify_sync(Conversation.user("FIRST LIST THE EDGE CASES, THEN OPTIMISE THE LOOP"))
    assert lower.score == upper.score and lower.category == upper.category
    assert lower.score > 0.3  # the multi-step cue counted in both
