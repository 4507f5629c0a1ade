"""Hypothesis strategies for hostile values: the text, numbers, enums, names and JSON a client can send."""

from __future__ import annotations

import json
import math
from typing import TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

# Every code point a protobuf string can carry (valid UTF-8: no lone surrogates), control characters,
# NUL, bidi overrides and combining marks included.
any_char = st.characters(exclude_categories=["Cs"])
nasty_chars = st.sampled_from(
    ["\x00", "\x07", "\x1b", "\x7f", "\u200b", "\u202e", "\u2028", "\ufeff", "\U0001f600", "\u0301", "\t"]
)
short_text = st.text(st.one_of(any_char, nasty_chars), max_size=40)


@st.composite
def repeated(draw: st.DrawFn, lengths: tuple[int, ...]) -> str:
    """A drawn piece of text repeated to one of `lengths` characters: big inputs, drawn cheaply."""
    piece = draw(st.text(st.one_of(any_char, nasty_chars), min_size=1, max_size=4))
    length = draw(st.sampled_from(lengths))
    return (piece * (length // len(piece) + 1))[:length]


def sometimes(strategy: st.SearchStrategy[T], otherwise: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`strategy` about one draw in four, else `otherwise`: most requests get past the first check, so
    the later ones (and the paid path) are fuzzed too."""
    return st.integers(0, 3).flatmap(lambda i: strategy if i == 2 else otherwise)


def text(huge: tuple[int, ...] = (1_000, 100_000)) -> st.SearchStrategy[str]:
    """Empty, blank, short hostile text, or text of one of the `huge` lengths."""
    return st.one_of(
        st.sampled_from(["", " ", "\n\t ", "\x00", "a" * 201]),
        short_text,
        repeated(huge),
    )


def identifier(valid: tuple[str, ...] = ("fuzz-1", "a", "x.y:z_9")) -> st.SearchStrategy[str]:
    """An id field: valid ones, and hostile ones (spaces, control characters, unicode, too long)."""
    return st.one_of(
        st.sampled_from(valid),
        st.sampled_from(["", " x", "x ", "a/b", "../../etc/passwd", "a" * 129, "a" * 201, "ü", "\x00"]),
        short_text,
    )


def model_name(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Model names: the policy's, and hostile or unknown ones (paths, URLs, provider prefixes)."""
    return st.one_of(
        st.sampled_from(known),
        st.sampled_from(
            [
                "",
                "gpt-4o",
                "openai/gpt-5-mini",
                "ollama/llama3",
                "http://127.0.0.1:9/v1",
                "../../../etc/passwd",
                "gpt-5-mini\x00",
                " gpt-5-mini",
                "GPT-5-MINI",
                "m" * 201,
                "*",
                "%s%s%n",
            ]
        ),
        short_text,
    )


def floats() -> st.SearchStrategy[float]:
    """Every double, with the hostile ones drawn often: NaN, infinities, -0, subnormal, huge, negative."""
    return st.one_of(
        st.sampled_from([math.nan, -math.nan, math.inf, -math.inf, -0.0, 5e-324, 1e308, -1.0, 0.0]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(0, 3),
    )


def ints(bounds: tuple[int, int], sane: tuple[int, int] = (0, 1000)) -> st.SearchStrategy[int]:
    """Integers within a field's wire bounds: its limits, -1, 0, and sane values."""
    low, high = bounds
    return st.one_of(
        st.sampled_from([low, high, -1, 0, 1]),
        st.integers(low, high),
        st.integers(*sane),
    )


def enum(values: list[int]) -> st.SearchStrategy[int]:
    """An enum field: its known values, and unknown ones (proto3 enums are open on the wire)."""
    return st.one_of(st.sampled_from(values), st.sampled_from([-1, max(values) + 1, *INT32]), ints(INT32))


def _deep(depth: int) -> str:
    return '{"type": "object", "properties": {"a": ' * depth + "{}" + "}}" * depth


# JSON schemas: valid ones, and hostile ones (not JSON, not an object, deep, huge, remote or broken
# references, self-references, wrong keyword types, a catastrophic pattern).
_SCHEMAS = [
    "",
    "{}",
    "null",
    "[]",
    '"x"',
    "{",
    "{" * 10_000,
    "[" * 100_000,
    '{"a": NaN}',
    '{"type": "number", "maximum": Infinity}',
    _deep(8),
    _deep(40),
    json.dumps({"type": "object", "description": "x" * 70_000}),
    json.dumps({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2_000)}}),
    json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    json.dumps({"type": "string", "pattern": "^(a+)+$"}),
    json.dumps({"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}}),
    json.dumps({"type": "string", "pattern": "("}),
    json.dumps({"type": 12}),
    json.dumps({"type": "nope"}),
    json.dumps({"required": "name"}),
    json.dumps({"$ref": "#"}),
    json.dumps({"$ref": "#/definitions/missing"}),
    json.dumps({"$ref": "http://127.0.0.1:9/evil.json"}),
    json.dumps({"$ref": "file:///etc/passwd"}),
    json.dumps({"properties": {"a": {"$ref": "#/properties/a"}}}),
    json.dumps({"$defs": {"s": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/s"}}}),
    json.dumps({"$dynamicRef": "#meta"}),
    json.dumps({"$schema": 5}),
    json.dumps({"$schema": ["x"]}),
    json.dumps({"$schema": "urn:unknown-dialect", "type": "object"}),
    json.dumps({"$schema": "http://json-schema.org/draft-03/schema#", "type": "object"}),
    json.dumps({"$id": "http://127.0.0.1:9/x", "$ref": "#/nowhere"}),
    json.dumps({"enum": []}),
    json.dumps({"type": "object", "minProperties": 10**30}),
]


def json_schema() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(_SCHEMAS), short_text)
