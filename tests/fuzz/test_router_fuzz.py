"""Route and RouteStream under hostile input, against a real router, classifier and simulator.

Every field of the request is drawn hostile (empty, huge, unicode and control characters, a thousand
messages and more, deep or huge JSON schemas, unknown enum values, NaN and infinities, negative and
enormous numbers, unknown or hostile model names, wrong caller ids and keys). For every input:
- a clear status: OK, or the service's own rich status (an ErrorInfo reason; INVALID_ARGUMENT with
  field violations), never INTERNAL, UNKNOWN or a hang;
- a request validation must refuse (an oracle written from docs/router.md, independent of the
  router's code) is refused with no provider call, and anything refused makes no provider call;
- the records the router hands to the ledger are exactly the provider calls the simulator received,
  each with a key of its own (nothing recorded twice, nothing lost);
- afterwards the router is SERVING and a normal request succeeds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from classifier_svc.server import create_server as create_classifier
from classifier_svc.settings import ClassifierSettings
from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.server import create_server as create_router
from service_kit import auth
from service_kit.policy import load_policy
from service_kit.validation import ROLES
from simulator.server import start_simulator
from simulator.settings import SimulatorSettings
from tests.doubles import RecordingSink
from tests.fuzz import hostile
from tests.fuzz.conftest import Loop, clear_status, fuzz, is_over_receive_limit, raw_call, serving
from tests.rich_status import details
from tests.router.conftest import heuristic_policy, router_settings
from tests.waiting import eventually

NORMAL = "Is this message spam? 'You won a free cruise, click here'"
MAX_MESSAGES = 1000
MAX_OUTPUT_TOKENS = 128_000
# Refusals that must come before anything is paid for.
REFUSED_UNPAID = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.ALREADY_EXISTS,
}
ALLOWED = {
    *REFUSED_UNPAID,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # MAX_COST_EXCEEDED
    grpc.StatusCode.FAILED_PRECONDITION,  # a forced model that cannot take this prompt
    grpc.StatusCode.UNAVAILABLE,  # no candidate can take this prompt; every provider refused it
}


@dataclass
class World:
    loop: Loop
    channel: grpc.aio.Channel
    stub: router_pb2_grpc.RouterServiceAsyncStub
    sink: RecordingSink
    simulator: httpx.AsyncClient
    keys: dict[str, str]
    models: tuple[str, ...]
    keys_seen: set[tuple[str, str, str, int]] = field(default_factory=set)

    async def provider_calls(self) -> int:
        reply = await self.simulator.get("/_sim/stats")
        return int(reply.json()["totals"]["requests"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("router-fuzz")
    loop = Loop()
    closers: list[Any] = []
    keys_file = tmp / "keys.yaml"
    keys = {
        "fuzz": auth.create_key(keys_file, "fuzz", ["caller"], callers=["fuzz/*"])[1],
        "ops": auth.create_key(keys_file, "ops", ["admin"])[1],
    }

    async def start() -> World:
        runner, port = await start_simulator(SimulatorSettings(host="127.0.0.1", port=0, latency_scale=0.0))
        closers.append(runner.cleanup)
        classifier = await create_classifier(
            ClassifierSettings(port=0, strategy="heuristic", cache_enabled=False)
        )
        closers.append(lambda: classifier.stop(0))
        sink = RecordingSink()
        settings = router_settings(
            f"127.0.0.1:{classifier.port}",
            f"http://127.0.0.1:{port}/v1",
            Path(tmp),
            keys_file=keys_file,
            max_messages=MAX_MESSAGES,
            max_output_tokens=MAX_OUTPUT_TOKENS,
            cooldown_after_failures=10**6,  # a hostile request must not bench a model for the next one
        )
        router = await create_router(settings, usage_sink=sink)
        closers.append(lambda: router.stop(0))
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{router.port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        )
        closers.append(channel.close)
        simulator = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
        closers.append(simulator.aclose)
        policy = load_policy(heuristic_policy(Path(tmp)))
        models = tuple(spec.model for specs in policy.tiers.values() for spec in specs)
        return World(loop, channel, router_pb2_grpc.RouterServiceStub(channel), sink, simulator, keys, models)

    try:
        yield loop.run(start())
    finally:

        async def stop() -> None:
            for close in reversed(closers):
                await close()

        loop.run(stop())
        loop.close()


# ---- inputs ---------------------------------------------------------------------------------------

roles = hostile.sometimes(
    st.one_of(st.sampled_from(["", "USER", "user ", "system\x00", "admin", "function"]), hostile.short_text),
    st.sampled_from(sorted(ROLES)),
)
message = st.builds(
    common_pb2.ChatMessage,
    role=roles,
    content=st.one_of(
        st.just(NORMAL),
        hostile.text(huge=(1_000, 100_000, 400_001)),
        st.builds(lambda t: f"{NORMAL} {t}", hostile.text()),
    ),
    name=hostile.sometimes(hostile.short_text, st.just("")),
)
short_message = st.builds(
    common_pb2.ChatMessage, role=roles, content=st.one_of(st.just(NORMAL), hostile.short_text)
)


@st.composite
def messages(draw: st.DrawFn) -> list[common_pb2.ChatMessage]:
    """A few messages of any size, or thousands of short ones (one drawn message repeated)."""
    if draw(st.booleans()):
        return draw(st.lists(message, max_size=3))
    count = draw(st.sampled_from([MAX_MESSAGES, MAX_MESSAGES + 1, 3000]))
    return [draw(short_message)] * count


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


@st.composite
def options(draw: st.DrawFn, models: tuple[str, ...]) -> router_pb2.RouteOptions:
    unset = st.none()
    fields: dict[str, Any] = {
        "max_output_tokens": draw(hostile.sometimes(hostile.ints(hostile.INT32, (1, 64)), unset)),
        "temperature": draw(hostile.sometimes(hostile.floats(), unset)),
        "max_cost_usd": draw(hostile.sometimes(hostile.floats(), unset)),
        "force_tier": draw(hostile.sometimes(hostile.enum(list(common_pb2.Tier.values())), st.just(0))),
        "force_model": draw(hostile.sometimes(hostile.model_name(models), st.just(""))),
        "json_output": draw(st.booleans()),
        "json_schema": draw(hostile.sometimes(hostile.json_schema(), st.just(""))),
        "buffered_stream": draw(st.booleans()),
    }
    return router_pb2.RouteOptions(**{k: v for k, v in fields.items() if v is not None})


ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@dataclass(frozen=True)
class Call:
    stream: bool
    messages: list[common_pb2.ChatMessage]
    request_id: str
    caller: str
    options: router_pb2.RouteOptions
    key: str  # "fuzz", "ops", "none", "garbage", "revoked-looking"
    x_caller: str | None
    x_request_id: str | None


def calls(models: tuple[str, ...]) -> st.SearchStrategy[Call]:
    return st.builds(
        Call,
        stream=st.booleans(),
        messages=messages(),
        request_id=hostile.sometimes(hostile.identifier(), st.just("")),
        caller=hostile.sometimes(
            st.one_of(
                st.sampled_from(["other-team", "fuzz/\x00", "fuzz/" + "x" * 200, "fuzz/*"]),
                hostile.identifier(),
            ),
            st.sampled_from(["", "fuzz", "fuzz/team-1"]),
        ),
        options=options(models),
        key=hostile.sometimes(
            st.sampled_from(["none", "garbage", "lrk_000000000000_forged"]), st.sampled_from(["fuzz", "ops"])
        ),
        x_caller=hostile.sometimes(ascii_text, st.none()),
        x_request_id=hostile.sometimes(ascii_text, st.none()),
    )


# One field hostile, the rest a valid request: every field's handling is reached, the paid path too.
_ONE_FIELD: dict[str, Any] = {
    "messages": lambda models: messages(),
    "request_id": lambda models: hostile.identifier(),
    "caller": lambda models: hostile.identifier(("fuzz", "fuzz/a", "other-team")),
    "max_output_tokens": lambda models: hostile.ints(hostile.INT32, (1, 64)),
    "temperature": lambda models: hostile.floats(),
    "max_cost_usd": lambda models: hostile.floats(),
    "force_tier": lambda models: hostile.enum(list(common_pb2.Tier.values())),
    "force_model": hostile.model_name,
    "json_schema": lambda models: hostile.json_schema(),
    "x_caller": lambda models: ascii_text,
    "x_request_id": lambda models: ascii_text,
}


@st.composite
def one_field_calls(draw: st.DrawFn, models: tuple[str, ...]) -> Call:
    name = draw(st.sampled_from(sorted(_ONE_FIELD)))
    value = draw(_ONE_FIELD[name](models))
    call = Call(
        stream=draw(st.booleans()),
        messages=[common_pb2.ChatMessage(role="user", content=NORMAL)],
        request_id="",
        caller="",
        options=router_pb2.RouteOptions(max_output_tokens=32, buffered_stream=draw(st.booleans())),
        key=draw(st.sampled_from(["fuzz", "ops"])),
        x_caller=None,
        x_request_id=None,
    )
    if name in router_pb2.RouteOptions.DESCRIPTOR.fields_by_name:
        options = router_pb2.RouteOptions()
        options.CopyFrom(call.options)
        setattr(options, name, value)
        return dataclasses.replace(call, options=options)
    return dataclasses.replace(call, **{name: value})


def must_refuse(call: Call) -> bool:
    """What docs/router.md says validation refuses: INVALID_ARGUMENT before any provider call."""
    o = call.options
    if not call.messages or len(call.messages) > MAX_MESSAGES:
        return True
    if any(m.role not in ROLES or not m.content.strip() for m in call.messages):
        return True
    if sum(len(m.content) + len(m.role) + len(m.name) for m in call.messages) > 400_000:
        return True
    if o.HasField("max_output_tokens") and not 0 < o.max_output_tokens <= MAX_OUTPUT_TOKENS:
        return True
    if o.HasField("temperature") and not (math.isfinite(o.temperature) and 0 <= o.temperature <= 2):
        return True
    if o.HasField("max_cost_usd") and not (math.isfinite(o.max_cost_usd) and o.max_cost_usd >= 0):
        return True
    if o.force_tier not in common_pb2.Tier.values():
        return True
    return bool(o.json_schema) and not _json_object(o.json_schema)


def _json_object(text: str) -> bool:
    import json

    def not_json(constant: str) -> None:
        raise ValueError(constant)

    try:
        return isinstance(json.loads(text, parse_constant=not_json), dict)
    except (ValueError, RecursionError):
        return False


def _metadata(world: World, call: Call) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    if call.key in world.keys:
        pairs.append((auth.AUTHORIZATION, f"Bearer {world.keys[call.key]}"))
    elif call.key != "none":
        pairs.append((auth.AUTHORIZATION, f"Bearer {call.key}"))
    if call.x_caller is not None:
        pairs.append(("x-caller", call.x_caller))
    if call.x_request_id is not None:
        pairs.append(("x-request-id", call.x_request_id))
    return tuple(pairs)


async def _send(world: World, call: Call) -> grpc.aio.AioRpcError | None:
    fields: dict[str, Any] = {
        "messages": call.messages,
        "request_id": call.request_id,
        "caller": call.caller,
        "options": call.options,
    }
    metadata = _metadata(world, call)
    try:
        if call.stream:
            summaries = 0
            async for event in world.stub.RouteStream(
                router_pb2.RouteStreamRequest(**fields), metadata=metadata, timeout=60
            ):
                summaries += event.HasField("summary")
            assert summaries == 1  # a stream that ends OK ends with exactly one summary
        else:
            await world.stub.Route(router_pb2.RouteRequest(**fields), metadata=metadata, timeout=60)
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def _normal_request_succeeds(world: World) -> None:
    await serving(world.channel)
    await serving(world.channel, "llmroute.router.v1.RouterService")
    reply = await world.stub.Route(
        router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content=NORMAL)]),
        metadata=((auth.AUTHORIZATION, f"Bearer {world.keys['fuzz']}"),),
        timeout=30,
    )
    assert reply.content and reply.attempts


def _check_records(world: World, since: int, provider_calls: int) -> None:
    """The records since `since` are the provider calls made, each with a key of its own."""
    new = world.sink.records[since:]
    assert len(new) == provider_calls, f"{len(new)} records for {provider_calls} provider calls"
    for record in new:
        key = (record.caller, record.request_id, record.run_id, record.attempt)
        assert key not in world.keys_seen, f"recorded twice: {key}"
        world.keys_seen.add(key)


@fuzz(30)
@given(data=st.data())
def test_any_route_request_gets_a_clear_status_and_pays_only_when_valid(world: World, data: Any) -> None:
    _check_call(world, data.draw(calls(world.models)))


@fuzz(40)
@given(data=st.data())
def test_one_hostile_field_in_a_valid_request(world: World, data: Any) -> None:
    _check_call(world, data.draw(one_field_calls(world.models)))


def _check_call(world: World, call: Call) -> None:

    async def play() -> None:
        calls_before, records_before = await world.provider_calls(), len(world.sink.records)
        error = await _send(world, call)
        paid = await world.provider_calls() - calls_before
        _check_records(world, records_before, paid)
        event(f"{'stream' if call.stream else 'route'}: {error.code().name if error else 'OK'}")
        if error is None:
            assert not must_refuse(call), "an invalid request was routed"
        else:
            found = clear_status(error, ALLOWED)
            if must_refuse(call) and call.key in ("fuzz", "ops") and not is_over_receive_limit(found):
                assert found.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
            if (
                found.code in REFUSED_UNPAID
                or found.reason == "MAX_COST_EXCEEDED"
                or is_over_receive_limit(found)
            ):
                assert paid == 0, f"{found.code.name} after {paid} provider calls"
        if must_refuse(call):
            assert paid == 0, f"{paid} provider calls for a request validation must refuse"
        calls_before, records_before = await world.provider_calls(), len(world.sink.records)
        await _normal_request_succeeds(world)
        _check_records(world, records_before, await world.provider_calls() - calls_before)

    world.loop.run(play(), timeout=120)


def test_the_oracle_and_the_checks_can_fail(world: World) -> None:
    """The property's oracle flags an invalid request, and a valid one goes through and is recorded."""
    bad = Call(
        False,
        [common_pb2.ChatMessage(role="user", content=" ")],
        "",
        "",
        router_pb2.RouteOptions(),
        "fuzz",
        None,
        None,
    )
    assert must_refuse(bad)
    good = Call(
        False,
        [common_pb2.ChatMessage(role="user", content=NORMAL)],
        "",
        "",
        router_pb2.RouteOptions(),
        "fuzz",
        None,
        None,
    )
    assert not must_refuse(good)

    async def play() -> None:
        calls_before, records_before = await world.provider_calls(), len(world.sink.records)
        assert await _send(world, good) is None
        paid = await world.provider_calls() - calls_before
        assert paid >= 1
        _check_records(world, records_before, paid)
        with pytest.raises(AssertionError, match="recorded twice"):
            _check_records(world, records_before, paid)  # the same records again: caught
        error = await _send(world, bad)
        assert error is not None
        assert clear_status(error, ALLOWED).violations == {"messages[0].content": "must not be empty"}

    world.loop.run(play())


def test_a_request_over_the_transport_limit_is_refused_and_the_router_keeps_serving(world: World) -> None:
    """Over the router's gRPC receive limit (sized to its own limits) the transport refuses
    (RESOURCE_EXHAUSTED) before the router decodes it: nothing is paid, and the router keeps serving."""
    huge = [common_pb2.ChatMessage(role="user", content="\U0001f600" * 500_000)]  # 2 MB, 500k characters

    async def play() -> None:
        calls_before = await world.provider_calls()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await world.stub.Route(
                router_pb2.RouteRequest(messages=huge),
                metadata=((auth.AUTHORIZATION, f"Bearer {world.keys['fuzz']}"),),
                timeout=30,
            )
        assert is_over_receive_limit(details(raised.value))
        assert await world.provider_calls() == calls_before
        await _normal_request_succeeds(world)

    world.loop.run(play())


# ---- regressions: bugs this fuzzing found ---------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        {"$schema": 5},  # was INTERNAL (validator_for on a non-string)
        {"$schema": ["x"]},
        {"$ref": "#/definitions/missing"},  # was a paid call, then INTERNAL checking the answer
        {"$ref": "#"},  # was a paid call, then INTERNAL (RecursionError) checking the answer
        {"properties": {"a": {"$ref": "#/properties/a"}}},
        {"$id": "http://127.0.0.1:9/x", "$ref": "#/nowhere"},
        '{"type": "object", "a": NaN}',  # Python's JSON reader takes NaN: sent on, 24 calls all refused 400
        '{"maximum": Infinity}',
    ],
)
def test_regression_a_schema_that_cannot_be_applied_is_refused_before_any_call(
    world: World, schema: dict[str, Any] | str
) -> None:
    import json

    call = Call(
        False,
        [common_pb2.ChatMessage(role="user", content="Extract the city: 'ship to Lyon'")],
        "",
        "",
        router_pb2.RouteOptions(json_schema=schema if isinstance(schema, str) else json.dumps(schema)),
        "fuzz",
        None,
        None,
    )

    async def play() -> None:
        calls_before, records_before = await world.provider_calls(), len(world.sink.records)
        error = await _send(world, call)
        assert error is not None
        found = clear_status(error, {grpc.StatusCode.INVALID_ARGUMENT})
        assert list(found.violations) == ["options.json_schema"]
        assert await world.provider_calls() == calls_before and len(world.sink.records) == records_before

    world.loop.run(play())


def test_regression_a_reference_only_an_answer_reaches_rejects_the_answer_instead_of_failing() -> None:
    from router_svc import schemas

    # Only an answer with "b" inside "a" follows this loop; the request-time probes do not reach it.
    schema = schemas.parse(
        '{"properties": {"a": {"properties": {"b": {"$ref": "#/properties/a/properties/b"}}}}}', 10_000
    )
    assert schemas.mismatch({"a": {"b": 1}}, schema) == "$:$ref"
    assert schemas.mismatch({"a": {}}, schema) is None


@fuzz(20)
@given(stream=st.booleans(), payload=st.one_of(st.binary(max_size=64), st.just(b"\xff" * 8)))
def test_any_bytes_as_a_request_get_a_clear_status(world: World, stream: bool, payload: bytes) -> None:
    """Bytes that are not a RouteRequest: INVALID_ARGUMENT (MALFORMED_REQUEST), no call; bytes that
    happen to parse are routed like any request, and recorded as such."""
    method = f"/llmroute.router.v1.RouterService/{'RouteStream' if stream else 'Route'}"

    async def play() -> None:
        calls_before, records_before = await world.provider_calls(), len(world.sink.records)
        key = ((auth.AUTHORIZATION, f"Bearer {world.keys['fuzz']}"),)
        error = await raw_call(world.channel, method, payload, stream, key)

        async def settled() -> (
            tuple[int] | None
        ):  # a stream cancelled after its first message records as it unwinds
            stats = (await world.simulator.get("/_sim/stats")).json()
            paid = int(stats["totals"]["requests"]) - calls_before
            done = stats["in_flight"] == 0 and len(world.sink.records) - records_before == paid
            return (paid,) if done else None

        (paid,) = await eventually(settled, "every provider call ended and recorded")
        _check_records(world, records_before, paid)
        event(f"{method.rsplit('/', 1)[1]}: {error.code().name if error else 'OK'}")
        if error is not None:
            found = clear_status(error, ALLOWED)
            if found.code in REFUSED_UNPAID:
                assert paid == 0
        calls_before, records_before = await world.provider_calls(), len(world.sink.records)
        await _normal_request_succeeds(world)
        _check_records(world, records_before, await world.provider_calls() - calls_before)

    world.loop.run(play())
