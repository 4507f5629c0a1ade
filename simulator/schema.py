"""Generate a JSON value that validates against a JSON schema, for tool calls and structured output.

Covers what tool and output schemas use in practice (pydantic, OpenAI strict mode): objects with
properties/required, enum/const, strings (length, common formats), integers and numbers with bounds,
booleans, null, arrays (items, prefixItems, min/maxItems), $defs/$ref, anyOf/oneOf/allOf, type lists.
Not `pattern` (a regex cannot be inverted cheaply) and not `not`/if-then-else.

Some property names get meaningful values, so an LLM classifier backed by the simulator gets a
sensible verdict: `score` is the prompt's simulated difficulty, tier-like enums follow it, and
category-like enums follow the prompt's detected category.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

from simulator.analysis import Analysis

# Deep enough for real schemas; past it only required properties and minimum array lengths are made,
# so recursive schemas (a tree of nodes) end.
_MAX_DEPTH = 8
# The router's tier names in order, and where llmroute's default policy cuts the score into them.
_TIERS = ("simple", "moderate", "complex", "reasoning")
_TIER_CUTS = (0.35, 0.55, 0.75)
_TIER_NAME = re.compile(r"tier|level|difficulty|complexity|effort", re.IGNORECASE)
_CATEGORY_NAME = re.compile(r"categor|kind|type|label|class|intent|topic", re.IGNORECASE)
_PROSE_NAME = re.compile(r"reason|rationale|explanation|summary|justification|comment|answer|text", re.I)
_FALLBACK_CATEGORIES = ("chat", "general", "other")
_FORMATS = {
    "date-time": "2025-01-01T00:00:00Z",
    "date": "2025-01-01",
    "time": "12:00:00",
    "email": "simulated@example.com",
    "uri": "https://example.com/simulated",
    "url": "https://example.com/simulated",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "duration": "PT1M",
}


def generate(schema: Any, analysis: Analysis) -> Any:
    """A value valid against `schema` (a dict or boolean), shaped by `analysis`."""
    return _Generator(schema if isinstance(schema, dict) else {}, analysis).value(schema, "", 0)


class _Generator:
    def __init__(self, root: dict[str, Any], analysis: Analysis) -> None:
        self.root = root
        self.analysis = analysis

    def value(self, schema: Any, name: str, depth: int) -> Any:
        if schema is True or schema is None:
            return f"simulated {name}".strip()
        if not isinstance(schema, dict):
            return None
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.enum(schema["enum"], name)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.resolve(option) for option in schema[key]]
                # Prefer a real value over null, as a model filling in a field would.
                chosen = next((o for o in options if o.get("type") != "null"), options[0] if options else {})
                return self.value(chosen, name, depth)
        if "allOf" in schema:
            return self.value(self.merge(schema), name, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        make = getattr(self, f"make_{kind}", None)
        return make(schema, name, depth) if make else None

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        # Only local references ("#/$defs/Node"): tool schemas are self-contained.
        seen = 0
        while "$ref" in schema and seen < 32:
            target: Any = self.root
            for part in schema["$ref"].lstrip("#").strip("/").split("/"):
                if part:
                    target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings} if isinstance(target, dict) else siblings
            seen += 1
        return schema

    def merge(self, schema: dict[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = self.resolve(part)
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = sorted({*merged.get("required", ()), *value})
                else:
                    merged.setdefault(key, value)
        return merged

    def make_object(self, schema: dict[str, Any], name: str, depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        return {
            key: self.value(sub, key, depth + 1)
            for key, sub in properties.items()
            if key in required or depth < _MAX_DEPTH
        }

    def make_array(self, schema: dict[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        low = schema.get("minItems", 0)
        high = schema.get("maxItems", math.inf)
        count = max(low, len(prefix), 0 if depth >= _MAX_DEPTH else 1)
        count = int(min(count, high))
        items = schema.get("items", {})
        out = []
        for index in range(count):
            sub = prefix[index] if index < len(prefix) else items
            value = self.value(sub, name, depth + 1)
            # uniqueItems with several generated strings: keep them distinct.
            if isinstance(value, str) and index and schema.get("uniqueItems"):
                value = f"{value} {index + 1}"
            out.append(value)
        return out

    def make_string(self, schema: dict[str, Any], name: str, depth: int) -> str:
        fmt = schema.get("format")
        if fmt == "uuid":
            text = str(uuid.UUID(int=self.analysis.seed))
        elif fmt in _FORMATS:
            text = _FORMATS[fmt]
        elif _PROSE_NAME.search(name):
            text = f"Simulated {name.replace('_', ' ')}: the request looks {self.tier_of(_TIERS)}."
        else:
            text = f"simulated {name}".strip() if name else "simulated"
        low = schema.get("minLength", 0)
        high = schema.get("maxLength")
        if len(text) < low:
            text += "x" * (low - len(text))
        if high is not None:
            text = text[:high]
        return text

    def make_integer(self, schema: dict[str, Any], name: str, depth: int) -> int:
        low, high = _bounds(schema, integer=True)
        target = round(self.analysis.score * 10) if _TIER_NAME.search(name) else 1
        value = int(min(max(target, low), high))
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0 and value % step:
            value += step - value % step
        return value

    def make_number(self, schema: dict[str, Any], name: str, depth: int) -> float:
        low, high = _bounds(schema, integer=False)
        lower = name.lower()
        if "score" in lower or "difficulty" in lower or "probability" in lower:
            fraction = self.analysis.score
        elif "confidence" in lower:
            # Confident at the extremes, unsure in the middle, as a calibrated classifier would be.
            fraction = round(0.55 + abs(self.analysis.score - 0.5) * 0.8, 3)
        else:
            fraction = 0.5
        if math.isinf(low) and math.isinf(high):
            low, high = 0.0, 1.0
        elif math.isinf(low):
            low = min(0.0, high - 1)
        elif math.isinf(high):
            high = max(1.0, low + 1)
        return round(min(max(low + fraction * (high - low), low), high), 4)

    def make_boolean(self, schema: dict[str, Any], name: str, depth: int) -> bool:
        return True

    def make_null(self, schema: dict[str, Any], name: str, depth: int) -> None:
        return None

    def enum(self, values: list[Any], name: str) -> Any:
        if not values:
            return None
        usable = [v for v in values if not (isinstance(v, str) and "unspecified" in v.lower())] or values
        normalized = [_normalize(v) for v in usable]
        if _TIER_NAME.search(name) or set(_TIERS) <= set(normalized):
            if set(_TIERS) <= set(normalized):
                return usable[normalized.index(self.tier_of(_TIERS))]
            # An unknown ordered scale: map the score onto its positions.
            return usable[min(int(self.analysis.score * len(usable)), len(usable) - 1)]
        if _CATEGORY_NAME.search(name) or self.analysis.category in normalized:
            for wanted in (self.analysis.category, *_FALLBACK_CATEGORIES):
                if wanted in normalized:
                    return usable[normalized.index(wanted)]
        return usable[self.analysis.seed % len(usable)]

    def tier_of(self, tiers: tuple[str, ...]) -> str:
        return tiers[sum(self.analysis.score >= cut for cut in _TIER_CUTS)]


def _normalize(value: Any) -> str:
    # "TIER_SIMPLE", "Category.CODE", "question-answering" all compare by their last word(s).
    text = str(value).lower().replace("-", "_")
    for prefix in ("tier_", "category_"):
        text = text.removeprefix(prefix)
    return text.rsplit(".", 1)[-1]


def _bounds(schema: dict[str, Any], *, integer: bool) -> tuple[float, float]:
    low = float(schema.get("minimum", -math.inf))
    high = float(schema.get("maximum", math.inf))
    step = 1 if integer else 1e-6
    if "exclusiveMinimum" in schema:
        low = max(low, float(schema["exclusiveMinimum"]) + step)
    if "exclusiveMaximum" in schema:
        high = min(high, float(schema["exclusiveMaximum"]) - step)
    if integer:
        low = math.ceil(low) if not math.isinf(low) else low
        high = math.floor(high) if not math.isinf(high) else high
    return low, high
