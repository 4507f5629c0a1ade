"""Hand-written prompt features for the learned classifier: shape, numbers, code, question structure.

Pure Python: one word scan plus a few cheap regular expressions (tens of microseconds per prompt).
The same functions run at training and at inference, so the two cannot drift. ``FEATURE_NAMES``
fixes the column order; a trained artifact records it and the strategy refuses a mismatch.

They read text whose identifiers are already stripped (``identifiers.strip_identifiers``; the
learned model strips before it computes anything), so an order number changes no feature.

A conversation is reduced to one input by ``combine_turns``: the user turns' embeddings are
averaged with the most recent weighted most, and each feature takes its maximum over the turns,
so a short follow-up ("now do the same for all 50 states") keeps the difficulty of its thread.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = [
    "FEATURE_NAMES",
    "MAX_SCAN_CHARS",
    "MAX_TURNS",
    "TURN_DECAY",
    "combine_turns",
    "prompt_features",
    "user_turns",
]

# Counting features look at this many characters; length features see the whole prompt.
MAX_SCAN_CHARS = 20_000
# A conversation contributes at most this many of its latest user turns.
MAX_TURNS = 6
# Weight of each earlier user turn in the embedding mean, relative to the turn after it.
TURN_DECAY = 0.6

_WORD = re.compile(r"[A-Za-z][A-Za-z']*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*%?")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_MATH_CHAR = re.compile(r"[=<>^√∑∫π±×÷≤≥∞∈∀∃]|\\[a-z]+")
_ARITH = re.compile(r"\d\s*[-+*/×÷^]\s*\d")
_OPTION = re.compile(r"^\s*\(?([A-J])[.)]\s+(.*)$", re.MULTILINE)
_HAS_OPTIONS = re.compile(r"(?:^|\n)\s*\(?[AB][.)]\s")
_STATEMENT_PAIR = re.compile(r"(?:Statement|Scenario)\s*\d\s*\|")
_ROMAN_ITEM = re.compile(r"(?:^|\n)\s*(?:I|II|III|IV)[.)]\s")
_COMBO_OPTION = re.compile(r"^[A-Za-z ]{1,12},\s*[A-Za-z ]{1,12}\.?$")
_CODE_TOKENS = (
    "```",
    "def ",
    "return ",
    "import ",
    "class ",
    "function",
    "();",
    "{\n",
    "};",
    "=>",
    "->",
    "==",
    "!=",
    "[i]",
    "self.",
    "const ",
    "SELECT ",
    "#include",
)


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_KEYWORDS: dict[str, frozenset[str]] = {
    "question_words": _wordset("what which who whom whose when where why how"),
    "multi_step_markers": _wordset(
        "first then after afterwards next finally remaining rest each per every total altogether twice half "
        "thrice times percent fewer left combined average ratio respectively step steps until before if "
        "remainder longer older younger"
    ),
    "reasoning_markers": _wordset(
        "prove proof derive justify reason reasoning analyze analyse compare evaluate tradeoff tradeoffs "
        "design optimize optimise implication implications assume suppose consider hypothesis infer inference "
        "conclude conclusion argument premise valid validity implies therefore hence necessarily sufficient "
        "rigorous rigorously formally generalize"
    ),
    "negation": _wordset("not except least false incorrect never neither nor cannot"),
    "units": _wordset(
        "dollars dollar cents cent hours hour minutes minute seconds second days day weeks week months month years "
        "year miles mile km meters meter feet foot inches inch pounds pound kg grams gram liters liter gallons "
        "gallon mph percent"
    ),
    "number_words": _wordset(
        "one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty "
        "hundred thousand million billion dozen dozens"
    ),
    "fraction_words": _wordset(
        "half halves third thirds quarter quarters fifth fifths double triple twice thrice"
    ),
    "passage_reference": _wordset("passage excerpt following above below according text argument statement"),
    "constraint_markers": _wordset(
        "must exactly only without least most ensure guarantee constraint constraints"
    ),
    "legal_terms": _wordset(
        "court plaintiff defendant statute contract liability tort jurisdiction constitutional appeal lawsuit "
        "negligence evidence testimony prosecution jury damages clause lease tenant"
    ),
    "medical_terms": _wordset(
        "patient patients diagnosis symptoms treatment disease clinical syndrome dose mg blood infection "
        "physician therapy chronic acute"
    ),
    "finance_terms": _wordset(
        "revenue income tax interest rate inflation investment asset assets liability equity depreciation "
        "accounting cost costs profit gdp market price prices"
    ),
    "science_terms": _wordset(
        "energy force mass velocity electron molecule cell cells protein atom atoms temperature pressure "
        "reaction frequency wavelength gene genes"
    ),
}
_FIRST_PERSON = ("i", "me", "my", "mine", "myself")
_VARIABLE_LETTERS = tuple("bcdefghjklmnopqrstuvwxyz")
_CAPITALISED = re.compile(r"(?<=[a-z,;:] )[A-Z]")
_DIGIT = re.compile(r"\d")
_SIMPLE_OPENERS = (
    "hi", "hello", "hey", "thanks", "thank you", "translate", "summarize", "summarise", "classify", "extract",
    "list", "define", "what is", "who is", "when is", "when was", "when did", "where is", "rewrite", "fix the typo",
    "correct the", "tl;dr", "is this", "how do i", "how do you say",
)  # fmt: skip
_WORD_GROUP: dict[str, tuple[str, ...]] = {}
for _group, _words in _KEYWORDS.items():
    for _w in _words:
        _WORD_GROUP[_w] = (*_WORD_GROUP.get(_w, ()), _group)


FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "mean_word_len",
    "long_word_share",
    "capital_word_share",
    "type_token_ratio",
    "log_sentences",
    "mean_sentence_words",
    "question_marks",
    "question_words",
    "log_numbers",
    "distinct_number_share",
    "digit_share",
    "decimals_or_percents",
    "money",
    "number_words",
    "fraction_words",
    "units",
    "math_symbols",
    "arithmetic",
    "variables",
    "code_markers",
    "multi_step_markers",
    "reasoning_markers",
    "constraint_markers",
    "simple_ask",
    "negation",
    "first_person",
    "quotes",
    "passage_reference",
    "legal_terms",
    "medical_terms",
    "finance_terms",
    "science_terms",
    "is_multiple_choice",
    "log_stem_words",
    "log_option_words_mean",
    "option_words_max_over_min",
    "options_over_stem",
    "numeric_option_share",
    "combo_options",
    "all_none_options",
    "statement_pairs",
    "roman_list",
    "option_word_overlap",
)
_LONG_WORD = 10
_log1p = math.log1p


def _options(scan: str) -> list[str] | None:
    """The bodies of lettered answer options (A. ... B. ...), or None if the prompt has fewer than two."""
    if not _HAS_OPTIONS.search(scan):
        return None
    bodies = [body.strip() for _, body in _OPTION.findall(scan)]
    return bodies if len(bodies) >= 2 else None


def _option_features(options: list[str], stem: str) -> dict[str, float]:
    words = [_WORD.findall(body.lower()) for body in options]
    numbers = [_NUMBER.findall(body) for body in options]
    sizes = [max(len(w) + len(n), 1) for w, n in zip(words, numbers, strict=True)]
    stem_size = max(len(_WORD.findall(stem)) + len(_NUMBER.findall(stem)), 1)
    vocab = [set(w) for w in words]
    total_vocab = sum(map(len, vocab))
    n = len(options)
    return {
        "is_multiple_choice": 1.0,
        "log_stem_words": _log1p(stem_size),
        "log_option_words_mean": _log1p(sum(sizes) / n),
        "option_words_max_over_min": max(sizes) / min(sizes),
        "options_over_stem": sum(sizes) / stem_size,
        "numeric_option_share": sum(1 for w, num in zip(words, numbers, strict=True) if num and len(w) <= 2)
        / n,
        "combo_options": sum(1 for body in options if _COMBO_OPTION.match(body)) / n,
        "all_none_options": float(
            any(
                "of the above" in body or "of these" in body or body in ("Both", "Neither")
                for body in options
            )
        ),
        "option_word_overlap": (total_vocab - len(set().union(*vocab))) / max(total_vocab, 1),
    }


def prompt_features(text: str) -> np.ndarray:
    """One row of ``FEATURE_NAMES`` for one prompt (float32)."""
    scan = text[:MAX_SCAN_CHARS]
    options = _options(scan)
    # Question-structure counts look at the question itself, not at the answer options.
    stem = scan[: _OPTION.search(scan).start()] if options else scan  # type: ignore[union-attr]
    words = _WORD.findall(scan.lower())
    n_words = max(len(words), 1)
    counts = Counter(_WORD.findall(stem.lower()) if options else words)
    groups = dict.fromkeys(_KEYWORDS, 0)
    for word, n in counts.items():
        for group in _WORD_GROUP.get(word, ()):
            groups[group] += n
    lengths = [len(w) for w in words]
    numbers = _NUMBER.findall(scan)
    sentences = max(len(_SENTENCE_END.findall(scan)), 1)
    values = {
        "log_chars": _log1p(len(text)),
        "log_words": _log1p(len(words)),
        "log_lines": _log1p(scan.count("\n")),
        "mean_word_len": sum(lengths) / n_words,
        "long_word_share": sum(1 for n in lengths if n >= _LONG_WORD) / n_words,
        "capital_word_share": len(_CAPITALISED.findall(scan)) / n_words,
        "type_token_ratio": len(set(words)) / n_words,
        "log_sentences": _log1p(sentences),
        "mean_sentence_words": n_words / sentences,
        "question_marks": min(stem.count("?"), 5),
        "log_numbers": _log1p(len(numbers)),
        "distinct_number_share": len(set(numbers)) / max(len(numbers), 1),
        "digit_share": len(_DIGIT.findall(scan)) / max(len(scan), 1),
        "decimals_or_percents": _log1p(sum(1 for n in numbers if "." in n or "%" in n)),
        "money": _log1p(scan.count("$") + scan.count("€") + scan.count("£")),
        "math_symbols": _log1p(len(_MATH_CHAR.findall(scan))),
        "arithmetic": _log1p(len(_ARITH.findall(scan))),
        "variables": _log1p(sum(counts[letter] for letter in _VARIABLE_LETTERS if letter in counts)),
        "code_markers": _log1p(sum(scan.count(token) for token in _CODE_TOKENS)),
        "simple_ask": float(text.lstrip().lower().startswith(_SIMPLE_OPENERS)),
        "first_person": _log1p(sum(counts[w] for w in _FIRST_PERSON if w in counts)),
        "quotes": _log1p(scan.count('"') + scan.count("“") + scan.count("”")),
        "statement_pairs": _log1p(len(_STATEMENT_PAIR.findall(scan))),
        "roman_list": _log1p(len(_ROMAN_ITEM.findall(scan))),
    }
    for group, n in groups.items():
        values[group] = _log1p(n) if group != "question_words" else min(n, 5)
    if options:
        values.update(_option_features(options, stem))
    else:
        values["log_stem_words"] = _log1p(n_words)
        values["option_words_max_over_min"] = 1.0
    return np.fromiter(
        (values.get(name, 0.0) for name in FEATURE_NAMES), dtype=np.float32, count=len(FEATURE_NAMES)
    )


def combine_turns(embeddings: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (embedding, features) input for user turns given oldest first (rows of both arrays).

    The embedding is a decayed mean (latest turn weight 1, each earlier turn ``TURN_DECAY`` times the
    next), re-normalised; each feature is the maximum over the turns.
    """
    n = embeddings.shape[0]
    if n == 1:
        return embeddings[0], features[0]
    weights = TURN_DECAY ** np.arange(n - 1, -1, -1, dtype=np.float32)
    mean = (weights[:, None] * embeddings).sum(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32), features.max(axis=0)


def user_turns(messages: Sequence[tuple[str, str]]) -> list[str]:
    """The latest ``MAX_TURNS`` user turns, oldest first (the last message if there is no user turn)."""
    turns = [content for role, content in messages if role == "user"]
    if not turns and messages:
        turns = [messages[-1][1]]
    return turns[-MAX_TURNS:] or [""]
