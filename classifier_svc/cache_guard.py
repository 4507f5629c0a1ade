"""The semantic cache's meaning guard: what two near-identical prompts must share to reuse a verdict.

Embeddings average word vectors, so "do X" and "do not X", or "3 items" and "30 items", look alike. A
similar cache entry is reused only when its `Signature` is `compatible` with the prompt's: the same
negation count, numbers, opposite-pair words, names, task and language, and a similar length.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from difficulty.heuristic import detect_category

__all__ = ["Signature", "compatible", "signature"]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_TOKEN = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# "Don't", "never", "without", "except", "avoid"... all count as one cue each: what matters is whether
# the two prompts negate the same number of times, not which word they use.
_NEGATIONS = frozenset(
    _words(
        "not no never none nothing nobody nowhere neither nor without cannot except excluding unless "
        "avoid omit skip exclude"
    )
)
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        _words(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen twenty"
        )
    )
} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "seventy": "70",
    "eighty": "80",
    "ninety": "90",
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "dozen": "12",
    "half": "0.5",
    "twice": "2",
    "double": "2",
    "triple": "3",
}
# One side of a pair of opposites is enough to tell "sort ascending" from "sort descending", which
# embeddings of averaged word vectors cannot: the words differ in one place and mean the same kind.
_POLAR = frozenset(
    _words(
        "positive negative ascending descending increase decrease increasing decreasing more less "
        "longer shorter larger smaller bigger higher lower maximum minimum max min against pros cons "
        "before after above below remove true false best worst encrypt decrypt encode "
        "decode compress decompress import export upload download enable disable start stop open close "
        "agree disagree allow deny include exclude"
    )
)
# Frequent function words of a few languages; the one with the most hits names the prompt's language.
_STOPWORDS = {
    lang: frozenset(_words(words))
    for lang, words in {
        "en": "the is are and of to what how with this that please you my for it can write does",
        "fr": "le la les des est et une du pour avec qui quelle quel dans sur vous mon pas écris",
        "es": "el los las es y del para con qué cómo por mi está escribe",
        "de": "der die das und ist ein eine mit für wie was nicht ich mein schreibe",
        "it": "il lo gli è di per che come cosa non mio scrivi della",
        "pt": "o os é uma um do da com não meu escreva",
    }.items()
}
_SENTENCE_END = frozenset(".!?:;\"'“”‘’([{*#>-|")


@dataclass(frozen=True, slots=True)
class Signature:
    """What two near-identical prompts must share to be the same request (the meaning guard)."""

    negations: int
    # Numbers, digits or words ("three" is "3"), sorted, repeats kept.
    numbers: tuple[str, ...]
    # Words of opposite pairs (ascending/descending, for/against...) present in the text.
    polar: frozenset[str]
    # Words capitalised in mid-sentence (names, places, languages, products), lower-cased.
    names: frozenset[str]
    # Words capitalised anywhere, lower-cased: a name may move to the start of a sentence.
    capitalised: frozenset[str]
    category: int
    # "en", "fr"... or a script name ("CJK", "CYRILLIC"); "" when unsure.
    language: str
    words: int


def signature(text: str) -> Signature:
    """The guard's signature of one text (use the same window of the prompt as is embedded)."""
    folded = text.casefold()
    tokens = _TOKEN.findall(folded)
    negations = sum(1 for t in tokens if t in _NEGATIONS or t.endswith(("n't", "n’t")))
    numbers = [n.replace(",", "") for n in _NUMBER.findall(text)]
    numbers.extend(_NUMBER_WORDS[t] for t in tokens if t in _NUMBER_WORDS)
    names: set[str] = set()
    capitalised: set[str] = set()
    for match in _TOKEN.finditer(text):
        word = match.group()
        if not word[0].isupper() or word == "I":
            continue
        lowered = re.sub(r"['’]s$", "", word.casefold())
        capitalised.add(lowered)
        before = text[: match.start()].rstrip()
        at_start = not before or before[-1] in _SENTENCE_END or "\n" in text[len(before) : match.start()]
        if not at_start:
            names.add(lowered)
    return Signature(
        negations=negations,
        numbers=tuple(sorted(numbers)),
        polar=frozenset(t for t in tokens if t in _POLAR),
        names=frozenset(names),
        capitalised=frozenset(capitalised),
        category=detect_category(text),
        language=_language(text, tokens),
        words=len(text.split()),
    )


def compatible(a: Signature, b: Signature) -> bool:
    """Whether two similar prompts may share a verdict: nothing the embedding blurs may differ."""
    return (
        a.negations == b.negations
        and a.numbers == b.numbers
        and a.polar == b.polar
        and a.names <= b.capitalised
        and b.names <= a.capitalised
        and a.category == b.category
        and (not a.language or not b.language or a.language == b.language)
        and abs(a.words - b.words) <= max(8, 0.25 * max(a.words, b.words))
    )


def _language(text: str, tokens: Sequence[str]) -> str:
    scripts: dict[str, int] = {}
    for char in text[:400]:
        if char.isalpha():
            script = unicodedata.name(char, "UNKNOWN").split(" ")[0]
            scripts[script] = scripts.get(script, 0) + 1
    if not scripts:
        return ""
    script = max(scripts, key=scripts.__getitem__)
    if script != "LATIN":
        return script
    votes = {lang: sum(1 for t in tokens if t in words) for lang, words in _STOPWORDS.items()}
    best = max(votes, key=votes.__getitem__)
    return best if votes[best] > 0 else ""
