"""The caller's JSON Schema (`options.json_schema`): checked when the request arrives, never used to fetch
anything, and applied to answers with regular expressions under a time limit.

A schema is refused with INVALID_ARGUMENT, before anything is paid for, when it is larger than
`ROUTER_MAX_JSON_SCHEMA_BYTES`, nested deeper than `MAX_DEPTH`, not a JSON object, not a valid JSON
Schema of its declared draft (`check_schema`), or refers (`$ref`) outside itself: the router never
retrieves a reference. Answers are validated with `pattern` and `patternProperties` matched by the
`regex` module with a time limit (`PATTERN_SECONDS`), so a catastrophic pattern (`^(a+)+$`) costs
at most that long and rejects the answer instead of blocking the event loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema
import regex

MAX_DEPTH = 32
PATTERN_SECONDS = 0.05
_REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


class SchemaProblem(ValueError):
    """Why a caller's schema is refused (a field violation's description)."""


def parse(text: str, max_bytes: int) -> dict[str, Any]:
    size = len(text.encode())
    if size > max_bytes:
        raise SchemaProblem(f"is {size} bytes; at most {max_bytes}")
    if _nesting(text) > MAX_DEPTH:  # before json.loads, whose recursion a deep document would exhaust
        raise SchemaProblem(f"is nested more than {MAX_DEPTH} levels deep")
    try:
        schema = json.loads(text, parse_constant=_not_json)
    except SchemaProblem:
        raise
    except ValueError:
        raise SchemaProblem("must be a JSON Schema document (JSON text)") from None
    if not isinstance(schema, dict):
        raise SchemaProblem("must be a JSON object")
    if not isinstance(schema.get("$schema", ""), str):
        raise SchemaProblem("$schema must be a string (the URI of a JSON Schema dialect)")
    for depth, node in _walk(schema):
        if depth > MAX_DEPTH:
            raise SchemaProblem(f"is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            for key in _REF_KEYS:
                ref = node.get(key)
                if isinstance(ref, str) and not ref.startswith("#"):
                    raise SchemaProblem(
                        f"{key} {ref[:80]!r} points outside the schema; references are never fetched"
                    )
    try:
        _validator_class(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        where = "/".join(map(str, error.absolute_path)) or "$"
        raise SchemaProblem(f"is not a valid JSON Schema at {where}: {error.message[:200]}") from None
    _check_references(schema)
    return schema


# Instances that make a validator follow the references it meets first: a reference that points
# nowhere, or loops back without consuming the instance ({"$ref": "#"}), would otherwise only show
# when an answer is checked, after the provider was paid.
_PROBES: tuple[Any, ...] = (None, True, 0, "", [], {})


def _check_references(schema: dict[str, Any]) -> None:
    resource = referencing.jsonschema.specification_with(
        schema.get("$schema", ""), default=referencing.jsonschema.DRAFT202012
    ).create_resource(schema)
    registry = _NO_RETRIEVAL.with_resource(resource.id() or "", resource).crawl()
    resolver = registry.resolver(base_uri=resource.id() or "")
    for _, node in _walk(schema):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str) and "$id" not in node:
            try:
                resolver.lookup(node["$ref"])
            except referencing.exceptions.Unresolvable:
                raise SchemaProblem(
                    f"$ref {node['$ref'][:80]!r} does not resolve within the schema"
                ) from None
    names = {
        name
        for _, node in _walk(schema)
        if isinstance(node, dict) and isinstance(node.get("properties"), dict)
        for name in node["properties"]
    }
    validator = _validator_class(schema)(schema, registry=_NO_RETRIEVAL)
    for probe in (*_PROBES, dict.fromkeys(names)):
        try:
            for _ in validator.iter_errors(probe):
                pass
        except (RecursionError, referencing.exceptions.Unresolvable):
            raise SchemaProblem("has a reference that does not resolve or loops without end") from None


def mismatch(value: Any, schema: dict[str, Any]) -> str | None:
    """None when `value` matches; else where and which keyword failed (never the value itself)."""
    validator = _validator_class(schema)(schema, registry=_NO_RETRIEVAL)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except (RecursionError, referencing.exceptions.Unresolvable):
        # A reference only this answer's shape reaches, and that does not resolve or never ends.
        return "$:$ref"
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path)) or "$"
    return f"{where}:{error.validator}"


def _not_json(constant: str) -> None:
    # Python reads NaN and Infinity; JSON has no such numbers, and a provider refuses a body with them.
    raise SchemaProblem(f"is not JSON: {constant} is not a JSON number")


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _nesting(text: str) -> int:
    """How deep the JSON text's arrays and objects nest (strings skipped), without parsing it."""
    depth = peak = 0
    for char in _STRING.sub("", text):
        if char in "[{":
            depth += 1
            peak = max(peak, depth)
        elif char in "]}":
            depth -= 1
    return peak


def _walk(root: Any) -> Iterator[tuple[int, Any]]:
    stack: list[tuple[int, Any]] = [(1, root)]
    while stack:
        depth, node = stack.pop()
        yield depth, node
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((depth + 1, child) for child in children if isinstance(child, dict | list))


def _refuse(uri: str) -> referencing.Resource[Any]:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


_NO_RETRIEVAL: referencing.Registry[Any] = referencing.Registry(retrieve=_refuse)  # type: ignore[call-arg]


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Any
) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not _matches(pattern, instance):
        yield jsonschema.ValidationError(f"does not match the pattern {pattern[:80]!r} (or took too long)")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[jsonschema.ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _matches(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _matches(pattern: str, text: str) -> bool:
    try:
        return regex.search(pattern, text, timeout=PATTERN_SECONDS) is not None
    except (TimeoutError, regex.error):
        return False


_CLASSES: dict[type, type] = {}


def _validator_class(schema: dict[str, Any]) -> Any:
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    if base not in _CLASSES:
        # types-jsonschema declares extend() without annotations.
        _CLASSES[base] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
            base, {"pattern": _pattern, "patternProperties": _pattern_properties}
        )
    return _CLASSES[base]
