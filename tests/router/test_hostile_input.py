"""Hostile input is refused before anything is paid for, with a clear status, and cannot hang the router."""

from __future__ import annotations

import json

import grpc
import pytest

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from router_svc import schemas
from service_kit.validation import MAX_VIOLATIONS, message_violations
from tests.rich_status import details
from tests.router.conftest import RouterHarness


def route(text: str = "Extract the city: 'ship to Lyon'", **options: object) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=text)],
        caller="tests",
        options=router_pb2.RouteOptions(**options),  # type: ignore[arg-type]
    )


async def refused(router: RouterHarness, request: router_pb2.RouteRequest) -> dict[str, str]:
    before = (await router.simulator_stats())["totals"]["requests"]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.stub.Route(request)
    found = details(raised.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (await router.simulator_stats())["totals"]["requests"] == before  # nothing was paid for
    return found.violations


def nested(depth: int) -> str:
    return '{"type": "object", "properties": {"a": ' * depth + "{}" + "}}" * depth


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"$ref": "http://127.0.0.1:9/evil.json"}, "never fetched"),
        ({"properties": {"a": {"$ref": "https://example.com/s#/x"}}}, "never fetched"),
        ({"type": 12}, "not a valid JSON Schema"),
        ({"type": "object", "required": "name"}, "not a valid JSON Schema"),
        ([1, 2], "must be a JSON object"),
    ],
)
async def test_a_bad_schema_is_refused_before_any_call(
    router: RouterHarness, schema: object, says: str
) -> None:
    violations = await refused(router, route(json_schema=json.dumps(schema)))
    assert says in violations["options.json_schema"]


async def test_a_huge_or_deep_schema_is_refused(router: RouterHarness) -> None:
    huge = json.dumps({"type": "object", "description": "x" * 1_500_000})
    assert "bytes; at most" in (await refused(router, route(json_schema=huge)))["options.json_schema"]
    for depth in (40, 100_000):
        text = nested(depth)
        if len(text) > router.settings.max_json_schema_bytes:
            continue
        assert "nested more than" in (await refused(router, route(json_schema=text)))["options.json_schema"]
    with pytest.raises(schemas.SchemaProblem, match="nested more than"):
        schemas.parse(nested(100_000), max_bytes=10**8)  # deeper than the parser's recursion


async def test_a_local_reference_and_a_sane_schema_are_fine(router: RouterHarness) -> None:
    schema = {
        "$defs": {"city": {"type": "string", "pattern": "^[A-Z]"}},
        "type": "object",
        "properties": {"city": {"$ref": "#/$defs/city"}},
        "required": ["city"],
    }
    response = await router.stub.Route(route(json_schema=json.dumps(schema)))
    assert json.loads(response.content)["city"]


def test_a_catastrophic_pattern_rejects_the_answer_instead_of_hanging() -> None:
    schema = schemas.parse(json.dumps({"type": "string", "pattern": "^(a+)+$"}), max_bytes=10_000)
    # 2^40 backtracking steps with Python's re: this returns only because the match is time-limited.
    assert schemas.mismatch("a" * 40 + "!", schema) == "$:pattern"
    assert schemas.mismatch("aaaa", schema) is None
    keyed = schemas.parse(
        json.dumps({"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}}), 10_000
    )
    assert schemas.mismatch({"aaaa": 1}, keyed) is None and schemas.mismatch({"aaaa": "x"}, keyed) is not None


async def test_too_many_messages_and_uncounted_fields_are_refused(router: RouterHarness) -> None:
    many = router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="hi")] * (router.settings.max_messages + 1),
        caller="tests",
    )
    violations = await refused(router, many)
    assert list(violations) == ["messages"] and "at most" in violations["messages"]
    named = route()
    named.messages[0].name = "n" * (router.settings.max_prompt_chars + 1)  # the name counts too
    assert "characters; the limit is" in (await refused(router, named))["messages"]
    assert "options.max_output_tokens" in await refused(router, route(max_output_tokens=10**9))


def test_violations_are_bounded_whatever_the_request() -> None:
    empty = [common_pb2.ChatMessage(role="user", content="")] * 1000
    violations = message_violations(empty, max_chars=10**6)
    assert len(violations) == MAX_VIOLATIONS + 1 and "980 more" in violations[-1][1]


async def test_a_request_larger_than_the_limits_admit_is_refused_before_it_is_decoded(
    router: RouterHarness,
) -> None:
    """gRPC's receive limit is sized to the router's own limits: a 3 MB message is refused by gRPC
    (RESOURCE_EXHAUSTED), not decoded, and the router keeps serving."""
    from router_svc.parsing import max_request_bytes

    limit = max_request_bytes(router.settings)
    assert limit < 3_000_000
    huge = router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="x" * 3_000_000)], caller="tests"
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.stub.Route(huge)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    ok = await router.stub.Route(
        router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content="hi")], caller="tests")
    )
    assert ok.content
