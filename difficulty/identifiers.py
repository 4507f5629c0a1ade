"""Identifier stripping: what names a thing without saying how hard the request is.

``strip_identifiers`` removes order and ticket numbers, invoice codes, UUIDs, URLs, e-mail addresses,
dates and timestamps, hashes, phone numbers and long digit runs, with the label in front of them
("ticket 99120") and the brackets or separators around them. "Summarize this (order #A-48213, ticket
99120)" and "Summarize this" are then the same input, so they get the same score. The hand features
(``features``) and the embedding read the stripped text, at training and at inference alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = ["strip_identifiers"]


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Identifiers. Every mention contains a digit, an "@", "://" or "www.", so only the text around those
# (``_REACH`` characters each side) is searched with the full pattern: prose without them costs one
# fast scan. A label ("order", "ticket no.", "ref:") is part of the mention, and makes shorter codes
# identifiers too ("ticket 99120", "commit 9fceb02"); "order 150 cupcakes" stays.
_ID_LABELS = _wordset(
    "order ticket tkt ref reference invoice inv case account acct customer client user transaction txn "
    "tracking shipment parcel package request req issue incident booking confirmation reservation claim "
    "policy member employee job build session commit sku serial batch contract receipt payment quote po "
    "rma trace correlation run id uuid guid hash sha url link email e-mail date time timestamp phone tel"
)


def _label_pattern(words: Iterable[str]) -> str:
    """Label words grouped by first letter, each branch led by a character class the regex engine
    skips in one step (an IGNORECASE literal would be tried in full at every word start)."""
    by_first: dict[str, list[str]] = {}
    for word in words:
        by_first.setdefault(word[0], []).append(word[1:])
    branches = []
    for first, rests in sorted(by_first.items()):
        tail = "|".join(re.escape(r) for r in sorted(rests, key=len, reverse=True))
        branches.append(f"[{first.upper()}{first}](?i:{tail})")
    return "(?:" + "|".join(branches) + ")"


_MONTH = r"(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_ZONE = r"(?:[ \t]*(?:Z|UTC|GMT|[+-]\d{2}:?\d{2}))"
_ID_CORE = "|".join(
    (
        r"(?:https?://|www\.)[^\s<>\"'`()\[\]{}]*[^\s<>\"'`()\[\]{}.,;:!?]",  # URL
        r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail address
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",  # UUID
        rf"\d{{4}}-\d{{2}}-\d{{2}}(?:[T ]\d{{1,2}}:\d{{2}}(?::\d{{2}}(?:\.\d+)?)?{_ZONE}?)?\b",  # ISO date, time
        rf"\d{{1,2}}[/.]\d{{1,2}}[/.]\d{{2,4}}(?:[ ,T]+\d{{1,2}}:\d{{2}}(?::\d{{2}})?{_ZONE}?)?\b",  # 14/03/2026
        r"\d{4}/\d{1,2}/\d{1,2}\b",  # 2026/03/14
        rf"\d{{1,2}}(?:st|nd|rd|th)?[ \t]+{_MONTH}[ \t]+\d{{4}}\b",  # 14 March 2026
        rf"{_MONTH}[ \t]+\d{{1,2}}(?:st|nd|rd|th)?,?[ \t]+\d{{4}}\b",  # March 14, 2026
        rf"\d{{1,2}}:\d{{2}}:\d{{2}}(?:\.\d+)?{_ZONE}?|\d{{1,2}}:\d{{2}}{_ZONE}\b",  # 10:32:05, 10:32 UTC
        r"(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b",  # hex hash
        r"#[A-Za-z]{0,6}-?\d{3,}\b",  # #44812, #A-48213
        r"[A-Z]{1,6}[-_]?\d{4,}(?:[-_/][A-Z0-9]+)*\b",  # INV-20931, A-48213, PO-2026-0042
        r"(?=[A-Z0-9]{8,}\b)(?=(?:[A-Z]*\d){4})(?=\d*[A-Z])[A-Z0-9]+\b",  # 01HZX3K8Q2VF
        r"[a-z]{2,10}_(?:[a-z]{2,10}_)?(?=[A-Za-z]*\d[A-Za-z]*\d)[A-Za-z0-9]{8,}\b",  # req_8f3k2j9x7q
        # phone numbers: +1 415-555-0199, +44 20 7946 0958, (415) 555-0199
        r"\+\d{1,3}(?:[ .-]?(?:\(\d{1,5}\)|\d{1,5})){2,5}(?![\w.])|(?:\(\d{3}\)|\d{3})[ .-]\d{3}[.-]\d{4}\b",
        r"\d{2,}(?:-\d{2,}){2,}\b|\d{4}(?:[ -]\d{4}){3}\b",  # 123-45-6789, card numbers
        r"(?<![\d.,])\d{7,}(?![\d]|[.,]\d)",  # long digit runs
    )
)
# After a label: five digits or more, "#" and three, or a code with three digits and a letter.
_ID_LABELLED = r"(?:#?\d{5,}|#\d{3,}|(?=[\w-]*\d{3})(?=[\w-]*[A-Za-z])[A-Za-z0-9][\w-]*[A-Za-z0-9])\b"
_ID_LABEL = (
    _label_pattern(_ID_LABELS)
    + r"\b\.?(?:[ \t]+(?:[Ii][Dd]|[Nn][Oo]\.?|[Nn]um(?:ber)?|[Cc]ode|#))?[ \t]*[:#=]?[ \t]*"
)
# Never inside a word, a number, an address or a sum ("x+240" and "v2.0.1" are not identifiers).
_ID_MENTION = re.compile(rf"(?<![\w.@/+-])(?:{_ID_LABEL}(?:{_ID_CORE}|{_ID_LABELLED})|{_ID_CORE})")
_ID_TRIGGER = re.compile(r"[\d@]|://|www\.")
_WHITESPACE = re.compile(r"\s")
_REACH = 64
# What may stand between two mentions of one group: "(order #A-48213, ticket 99120)".
_ID_JOIN = re.compile(r"[ \t]*(?:[,;/|·&-]|and\b)?[ \t]*")
_BLANK = " \t"


def _identifier_spans(text: str) -> Iterator[tuple[int, int]]:
    n = len(text)
    trigger = _ID_TRIGGER.search(text)
    while trigger is not None:
        start = end = trigger.start()
        # One window while triggers keep coming (a GSM8K problem is one window).
        while (following := _ID_TRIGGER.search(text, end + 1, min(n, end + 1 + 2 * _REACH))) is not None:
            end = following.start()
        space = _WHITESPACE.search(text, min(n, end + _REACH))
        stop = space.start() if space else n
        # pos/endpos keep the real context for the lookbehind, unlike a slice.
        for match in _ID_MENTION.finditer(text, max(0, start - _REACH), stop):
            yield match.span()
        trigger = _ID_TRIGGER.search(text, stop)


def strip_identifiers(text: str) -> str:
    """The text without identifiers, their labels, and the brackets and separators left around them.

    A mention alone on its line drops the line; one at the start of a line drops with the separator
    after it ("Ticket 99120: ..."); one before the end of a sentence drops with the separator before
    it ("..., ticket 99120."); one inside a sentence becomes a space. Brackets holding only mentions
    go with them. Surrounding whitespace is stripped.
    """
    text = text.strip()
    groups: list[list[int]] = []
    for start, end in _identifier_spans(text):
        if groups and start >= groups[-1][1] and _ID_JOIN.fullmatch(text, groups[-1][1], start):
            groups[-1][1] = end
        elif not groups or start >= groups[-1][1]:
            groups.append([start, end])
    if not groups:
        return text
    n = len(text)
    out: list[str] = []
    last = 0
    for start, end in groups:
        left, right = _widen(text, start, end, last)
        bracketed = left > last and right < n and text[left - 1] in "([{<" and text[right] in ")]}>"
        if bracketed:
            end = right + 1
            left, right = _widen(text, left - 1, end, last)
        line_start = left == 0 or text[left - 1] == "\n"
        after = right + 1 if right < n and text[right] in ".,;" else right
        while after < n and text[after] in _BLANK:
            after += 1
        replacement = ""
        if line_start and (after == n or text[after] == "\n"):
            # Alone on its line: the line goes, with one newline.
            right = min(after + 1, n)
            if after == n and left > last:
                left -= 1
        elif line_start:
            while right < n and text[right] in ",;:.·|-" + _BLANK:
                right += 1
        elif right == n or text[right] in ".!?,;:)]}\n":
            # "..., ticket 99120." drops its comma; "x; (ref 7)" and "x: 99120" at the end keep theirs.
            ends_sentence = right < n and text[right] in ".!?)]}"
            if ends_sentence and not bracketed and left > last and text[left - 1] in ",;:":
                left, _ = _widen(text, left - 1, left - 1, last)
            right = end  # the spaces after it belong to the text (a line may end in one)
        else:
            # Inside a sentence: the spaces after it stay, or one space if it had none on either side.
            replacement = "" if left < start or end < right else " "
            right = end
        out.append(text[last:left])
        out.append(replacement)
        last = right
    out.append(text[last:])
    return "".join(out).strip()


def _widen(text: str, start: int, end: int, floor: int) -> tuple[int, int]:
    """``start``/``end`` moved outward over spaces and tabs (never left of ``floor``)."""
    while start > floor and text[start - 1] in _BLANK:
        start -= 1
    while end < len(text) and text[end] in _BLANK:
        end += 1
    return start, end
