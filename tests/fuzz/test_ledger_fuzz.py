"""Every LedgerService RPC under hostile input, against a real ledger (SQLite) with API keys.

RecordUsage, GetStats, WatchSpend, ExportRecords, SetBudget, GetBudgets, CheckBudget, ReserveBudget,
RecordFeedback, GetFeedbackStats and ExportOutcomes, each with its fields drawn hostile (empty, huge,
unicode and control characters, unknown enum values, NaN and infinities, negative and enormous numbers
and times, wrong or missing keys, callers a key may not name). For every call:
- a clear status: OK, or the service's own rich status (an ErrorInfo reason; INVALID_ARGUMENT with
  field violations), never INTERNAL, UNKNOWN, a hang, or UNAVAILABLE (the database is up: a database
  error caused by a value is a validation bug, and the reporter would retry it forever);
- RecordUsage stores exactly the records it acknowledges: its `inserted` are the keys not stored before,
  its `duplicates` the rest, and all-time GetStats attempts equal the distinct keys ever acknowledged
  (nothing recorded twice, nothing lost);
- afterwards the ledger is SERVING and a normal GetStats succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from hypothesis import event, given
from hypothesis import strategies as st

from ledger_svc.server import create_server
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2 as L
from llmroute.ledger.v1 import ledger_pb2_grpc
from service_kit import auth
from tests.fuzz import hostile
from tests.fuzz.conftest import Loop, clear_status, fuzz, raw_call, serving
from tests.ledger.conftest import Backend, _scratch_schema, start_ledger, stop_ledger

MAX_BATCH = 50  # records per RecordUsage (LEDGER_MAX_BATCH_RECORDS), small so over-limit batches are cheap
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,  # RecordFeedback about a run the ledger does not have
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # ReserveBudget over a hard budget
}
Key = tuple[str, str, str, int]


@dataclass
class World:
    loop: Loop
    channel: grpc.aio.Channel
    stub: ledger_pb2_grpc.LedgerServiceAsyncStub
    keys: dict[str, str]
    stored: set[Key] = field(default_factory=set)

    def auth(self, who: str) -> tuple[tuple[str, str], ...]:
        if who == "none":
            return ()
        return ((auth.AUTHORIZATION, f"Bearer {self.keys.get(who, who)}"),)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A ledger on SQLite, and one on PostgreSQL (a scratch schema): each property runs on both."""
    tmp = tmp_path_factory.mktemp("ledger-fuzz")
    loop = Loop()
    keys_file = tmp / "keys.yaml"
    keys = {
        "router": auth.create_key(keys_file, "router", ["service"])[1],
        "ops": auth.create_key(keys_file, "ops", ["admin"])[1],
        "team": auth.create_key(keys_file, "team", ["caller"], callers=["team/*"])[1],
    }
    scratch = _scratch_schema() if request.param == "postgresql" else None
    backend = (
        loop.run(scratch.__aenter__())
        if scratch is not None
        else Backend("sqlite", f"sqlite+aiosqlite:///{tmp / 'ledger.db'}")
    )
    settings = backend.settings(
        keys_file=keys_file, max_batch_records=MAX_BATCH, export_chunk_bytes=4096, log_level="WARNING"
    )

    async def start() -> tuple[Any, World]:
        running = await create_server(settings)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        return running, World(loop, channel, ledger_pb2_grpc.LedgerServiceStub(channel), keys)

    running, world = loop.run(start())
    try:
        yield world
    finally:

        async def stop() -> None:
            await world.channel.close()
            await running.stop(0)
            if scratch is not None:
                await scratch.__aexit__(None, None, None)

        loop.run(stop())
        loop.close()


# ---- inputs ---------------------------------------------------------------------------------------

NOW = int(time.time())
# Keys: mostly the role each RPC needs, sometimes none, a forged one, or a role it does not allow.
who = hostile.sometimes(st.sampled_from(["none", "lrk_000000000000_forged", "team"]), st.just("right"))
callers = st.one_of(st.sampled_from(["", "team", "team/a", "other", "router"]), hostile.identifier())


def timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp | None]:
    seconds = st.one_of(
        st.integers(NOW - 3 * 86_400, NOW),
        hostile.ints(hostile.INT64, (0, 253_402_300_799)),
        st.sampled_from([253_402_300_799, 253_402_300_800, NOW + 10**6]),
    )
    nanos = hostile.sometimes(hostile.ints(hostile.INT32, (0, 999_999_999)), st.just(0))
    return st.one_of(st.none(), st.builds(timestamp_pb2.Timestamp, seconds=seconds, nanos=nanos))


@st.composite
def windows(draw: st.DrawFn) -> L.TimeWindow | None:
    if draw(st.booleans()):
        return None
    window = L.TimeWindow(last_minutes=draw(hostile.sometimes(hostile.ints(hostile.INT32), st.just(0))))
    for name in ("since", "until"):
        stamp = draw(timestamps())
        if stamp is not None:
            getattr(window, name).CopyFrom(stamp)
    return window


def _valid_record(index: int, example: int) -> L.UsageRecord:
    record = L.UsageRecord(
        request_id=f"fz-{example}-{index % 3}",
        run_id="run-1",
        attempt=index % 2 + 1,
        caller="team",
        model="gpt-5-mini",
        tier=common_pb2.TIER_SIMPLE,
        outcome=common_pb2.ATTEMPT_OUTCOME_OK,
        usage=common_pb2.Usage(input_tokens=10, output_tokens=5, cost_usd=0.0001),
        price_known=True,
        final=index % 2 == 1,
    )
    record.time.FromSeconds(NOW - 60)
    return record


# Hostile values for each UsageRecord field a batch may carry.
_RECORD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "request_id": hostile.identifier(),
    "attempt": hostile.ints(hostile.INT32, (1, 5)),
    "time": timestamps(),
    "caller": callers,
    "category": hostile.enum(list(common_pb2.Category.values())),
    "tier": hostile.enum(list(common_pb2.Tier.values())),
    "score": hostile.floats(),
    "classifier_source": hostile.enum(list(common_pb2.ClassifierSource.values())),
    "classifier_version": hostile.text(),
    "model": hostile.model_name(("gpt-5-mini",)),
    "provider": hostile.text(),
    "outcome": hostile.enum(list(common_pb2.AttemptOutcome.values())),
    "error": hostile.text(),
    "usage.input_tokens": hostile.ints(hostile.INT64),
    "usage.output_tokens": hostile.ints(hostile.INT64),
    "usage.cached_input_tokens": hostile.ints(hostile.INT64),
    "usage.reasoning_tokens": hostile.ints(hostile.INT64),
    "usage.cost_usd": hostile.floats(),
    "usage.baseline_cost_usd": hostile.floats(),
    "usage.baseline_reasoning_cost_usd": hostile.floats(),
    "classifier_cost_usd": hostile.floats(),
    "price_map_version": hostile.text(),
    "classify_ms": hostile.floats(),
    "provider_ms": hostile.floats(),
    "total_ms": hostile.floats(),
    "judge_cost_usd": hostile.floats(),
    "run_id": hostile.identifier(),
    "policy_version": hostile.identifier(),
    "family": hostile.identifier(),
    "exploration": st.booleans(),
    "judge_verdict": hostile.enum(list(common_pb2.JudgeVerdict.values())),
}


def _set(record: L.UsageRecord, name: str, value: Any) -> None:
    target: Any = record
    *path, last = name.split(".")
    for part in path:
        target = getattr(target, part)
    if last == "time":
        record.ClearField("time")
        if value is not None:
            record.time.CopyFrom(value)
    else:
        setattr(target, last, value)


@st.composite
def batches(draw: st.DrawFn, example: int) -> L.RecordUsageRequest:
    size = draw(st.one_of(st.integers(0, 6), st.sampled_from([MAX_BATCH, MAX_BATCH + 1])))
    records = [_valid_record(i, example) for i in range(size)]
    if records:  # up to two hostile fields in the batch, the other records valid
        for name in draw(st.lists(st.sampled_from(sorted(_RECORD_FIELDS)), max_size=2)):
            record = records[draw(st.integers(0, min(len(records), 6) - 1))]
            _set(record, name, draw(_RECORD_FIELDS[name]))
    if records and bool(draw(st.booleans())):
        records.append(records[0])  # the same record twice in one batch
    return L.RecordUsageRequest(
        records=records,
        sender=draw(hostile.sometimes(hostile.identifier(), st.just("router-1"))),
        sender_spool_depth=draw(hostile.sometimes(hostile.ints(hostile.INT64), st.just(0))),
    )


def _key(record: L.UsageRecord) -> Key:
    return (record.caller, record.request_id, record.run_id, record.attempt)


def group_bys(enum: Any) -> st.SearchStrategy[list[int]]:
    return st.lists(hostile.enum([v for v in enum.values() if v]), max_size=8)


def _message(kind: type, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A request message whose fields are drawn from `fields` (None leaves a field unset)."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        message = kind()
        for name, strategy in fields.items():
            value = draw(strategy)
            if value is None:
                continue
            target = getattr(message, name)
            if isinstance(value, list):
                target.extend(value)
            elif hasattr(target, "CopyFrom"):
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return build()


budgets = _message(
    L.Budget,
    caller=callers,
    period=hostile.sometimes(hostile.enum(list(L.BudgetPeriod.values())), st.sampled_from([1, 2])),
    soft_limit_usd=hostile.sometimes(hostile.floats(), st.sampled_from([0.0, 50.0])),
    hard_limit_usd=hostile.sometimes(hostile.floats(), st.sampled_from([0.0, 100.0, 1e9])),
)
REQUESTS: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    # RPC name → (the role it needs, its request)
    "GetStats": (
        "ops",
        _message(L.GetStatsRequest, window=windows(), group_by=group_bys(L.GroupBy), caller=callers),
    ),
    "WatchSpend": (
        "team",
        _message(
            L.WatchSpendRequest,
            interval_seconds=hostile.sometimes(hostile.floats(), st.just(0.05)),
            last_minutes=hostile.sometimes(hostile.ints(hostile.INT32), st.just(60)),
            caller=callers,
        ),
    ),
    "ExportRecords": (
        "ops",
        _message(
            L.ExportRecordsRequest,
            window=windows(),
            format=hostile.sometimes(hostile.enum(list(L.ExportFormat.values())), st.sampled_from([1, 2])),
        ),
    ),
    "SetBudget": ("ops", _message(L.SetBudgetRequest, budget=budgets)),
    "GetBudgets": ("team", _message(L.GetBudgetsRequest, caller=callers)),
    "CheckBudget": ("router", _message(L.CheckBudgetRequest, caller=callers)),
    "ReserveBudget": (
        "router",
        _message(
            L.ReserveBudgetRequest,
            caller=callers,
            request_id=hostile.identifier(),
            run_id=hostile.identifier(),
            amount_usd=hostile.floats(),
            ttl_seconds=hostile.sometimes(hostile.floats(), st.just(1.0)),
        ),
    ),
    "RecordFeedback": (
        "team",
        _message(
            L.RecordFeedbackRequest,
            request_id=st.one_of(st.sampled_from(["fz-0-0", "fz-1-1"]), hostile.identifier()),
            verdict=hostile.enum(list(L.FeedbackVerdict.values())),
            needed_tier=hostile.enum(list(common_pb2.Tier.values())),
            note=hostile.text(),
            caller=callers,
            run_id=st.one_of(st.just("run-1"), hostile.identifier()),
        ),
    ),
    "GetFeedbackStats": (
        "ops",
        _message(
            L.GetFeedbackStatsRequest,
            window=windows(),
            group_by=group_bys(L.FeedbackGroupBy),
            caller=callers,
        ),
    ),
    "ExportOutcomes": (
        "ops",
        _message(L.ExportOutcomesRequest, window=windows(), caller=callers, with_evidence_only=st.booleans()),
    ),
    "CreateKey": (
        "ops",
        _message(
            L.CreateKeyRequest,
            name=callers,
            roles=st.lists(
                st.one_of(st.sampled_from(["caller", "admin", "service", "root", ""]), hostile.short_text),
                max_size=4,
            ),
            callers=st.lists(
                st.one_of(
                    st.sampled_from(["*", "team/*", "[", "[!]", "\x00", "a" * 300]), hostile.short_text
                ),
                max_size=3,
            ),
        ),
    ),
    "ListKeys": ("ops", st.just(L.ListKeysRequest())),
    "RevokeKey": ("ops", _message(L.RevokeKeyRequest, id=hostile.identifier())),
    "LookupKey": (
        "router",
        _message(
            L.LookupKeyRequest, id=hostile.identifier(), sha256=st.one_of(st.just("0" * 64), hostile.text())
        ),
    ),
}
STREAMS = {"WatchSpend", "ExportRecords", "ExportOutcomes"}


async def _call(world: World, rpc: str, request: Any, key: str) -> grpc.aio.AioRpcError | None:
    method = getattr(world.stub, rpc)
    try:
        if rpc == "WatchSpend":
            stream = method(request, metadata=world.auth(key), timeout=30)
            async for reply in stream:
                assert reply.HasField("totals")
                break  # the first snapshot comes at once; that is enough
            stream.cancel()
        elif rpc in STREAMS:
            async for _ in method(request, metadata=world.auth(key), timeout=30):
                pass
        else:
            await method(request, metadata=world.auth(key), timeout=30)
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def _still_serving(world: World) -> int:
    """Health SERVING and an all-time GetStats answering; returns its attempts."""
    await serving(world.channel)
    stats = await world.stub.GetStats(L.GetStatsRequest(), metadata=world.auth("ops"), timeout=30)
    return stats.totals.attempts


_examples = iter(range(10**9))


@fuzz(30)
@given(data=st.data())
def test_record_usage_stores_what_it_acknowledges_once(world: World, data: Any) -> None:
    example = next(_examples)
    request = data.draw(batches(example))
    key = data.draw(who)

    async def play() -> None:
        error = None
        try:
            reply = await world.stub.RecordUsage(
                request, metadata=world.auth("router" if key == "right" else key), timeout=30
            )
        except grpc.aio.AioRpcError as caught:
            error = caught
        event(f"RecordUsage: {error.code().name if error else 'OK'}")
        if error is None:
            new = {_key(r) for r in request.records} - world.stored
            assert reply.inserted == len(new), (reply, len(new))
            assert reply.inserted + reply.duplicates == len(request.records)
            world.stored |= new
        else:
            clear_status(error, ALLOWED)
        assert await _still_serving(world) == len(world.stored)

    world.loop.run(play())


@fuzz(45)
@given(data=st.data())
def test_every_other_rpc_gets_a_clear_status(world: World, data: Any) -> None:
    rpc = data.draw(st.sampled_from(sorted(REQUESTS)))
    role, requests = REQUESTS[rpc]
    request = data.draw(requests)
    key = data.draw(who)

    async def play() -> None:
        error = await _call(world, rpc, request, role if key == "right" else key)
        event(f"{rpc}: {error.code().name if error else 'OK'}")
        if error is not None:
            clear_status(error, ALLOWED)
        assert await _still_serving(world) == len(world.stored)  # reads and budgets record nothing

    world.loop.run(play())


def test_the_model_of_stored_records_can_fail(world: World) -> None:
    """A batch acknowledged twice is counted once: the check above would catch a ledger that did not."""

    async def play() -> None:
        request = L.RecordUsageRequest(records=[_valid_record(0, -1), _valid_record(1, -1)])
        first = await world.stub.RecordUsage(request, metadata=world.auth("router"), timeout=30)
        again = await world.stub.RecordUsage(request, metadata=world.auth("router"), timeout=30)
        world.stored |= {_key(r) for r in request.records}
        assert (first.inserted, again.inserted, again.duplicates) == (2, 0, 2)
        assert await _still_serving(world) == len(world.stored)

    world.loop.run(play())


# ---- regressions: bugs this fuzzing found ---------------------------------------------------------


def _record(request_id: str, **usage: Any) -> L.UsageRecord:
    record = L.UsageRecord(
        request_id=request_id, attempt=1, caller="c", model="m", usage=common_pb2.Usage(**usage)
    )
    record.time.FromSeconds(int(time.time()) - 60)
    return record


async def test_regression_sums_that_would_overflow_are_refused_per_record(backend: Backend) -> None:
    """Two records of 2^63-1 input tokens were stored, and from then on every GetStats over them failed
    with INTERNAL (the int64 sum overflowed); twelve records of $1e9 failed the batch with INTERNAL (its
    hour's rollup overflowed int64 nano-dollars), which the reporter retries for ever. Each record's
    tokens and money are now bounded far above any real provider call."""
    ledger = await start_ledger(backend.settings())
    try:
        for request in (
            L.RecordUsageRequest(records=[_record(f"t{i}", input_tokens=2**63 - 1) for i in range(2)]),
            L.RecordUsageRequest(records=[_record(f"c{i}", cost_usd=1e9) for i in range(12)]),
            L.RecordUsageRequest(records=[_record("d")], sender="s", sender_spool_depth=2**63 - 1),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await ledger.stub.RecordUsage(request, timeout=30)
            found = clear_status(raised.value, {grpc.StatusCode.INVALID_ARGUMENT})
            assert set(found.violations) <= {
                "records[0].usage.input_tokens",
                "records[1].usage.input_tokens",
                *(f"records[{i}].usage.cost_usd" for i in range(12)),
                "sender_spool_depth",
            }
        limits = L.RecordUsageRequest(
            records=[_record(f"ok{i}", input_tokens=10**9, cost_usd=10_000.0) for i in range(5)]
        )
        assert (await ledger.stub.RecordUsage(limits, timeout=30)).inserted == 5  # the bounds themselves
        totals = (await ledger.stub.GetStats(L.GetStatsRequest(), timeout=30)).totals
        assert (totals.attempts, totals.input_tokens, totals.cost_usd) == (5, 5 * 10**9, 50_000.0)
    finally:
        await stop_ledger(ledger)


async def test_regression_times_beyond_the_year_9999_are_refused(backend: Backend) -> None:
    """A window ending at 2^62 seconds overflowed the database's integers: GetStats, ExportRecords,
    ExportOutcomes and GetFeedbackStats answered INTERNAL. Timestamps past 9999-12-31 (the end of
    google.protobuf.Timestamp's range) are now a field violation; the last valid second works."""
    ledger = await start_ledger(backend.settings())
    far = L.TimeWindow(until=timestamp_pb2.Timestamp(seconds=2**62))
    last = L.TimeWindow(until=timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999))
    try:
        calls: dict[str, Callable[[L.TimeWindow], Awaitable[object]]] = {
            "GetStats": lambda w: ledger.stub.GetStats(L.GetStatsRequest(window=w), timeout=30),
            "GetFeedbackStats": lambda w: ledger.stub.GetFeedbackStats(
                L.GetFeedbackStatsRequest(window=w), timeout=30
            ),
            "ExportRecords": lambda w: _drain(ledger.stub.ExportRecords(L.ExportRecordsRequest(window=w))),
            "ExportOutcomes": lambda w: _drain(ledger.stub.ExportOutcomes(L.ExportOutcomesRequest(window=w))),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(far)
            found = clear_status(raised.value, {grpc.StatusCode.INVALID_ARGUMENT})
            assert found.violations == {
                "window.until": "must be a valid time between 1970-01-01 and 9999-12-31"
            }, name
            await call(last)
    finally:
        await stop_ledger(ledger)


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


METHODS = list(L.DESCRIPTOR.services_by_name["LedgerService"].methods)


@fuzz(15)
@given(data=st.data())
def test_any_bytes_as_a_request_get_a_clear_status(world: World, data: Any) -> None:
    """Bytes that are not the method's message were answered UNKNOWN by grpc (its parser's exception);
    now INVALID_ARGUMENT (MALFORMED_REQUEST). Bytes that happen to parse are a request like any other."""
    method = data.draw(st.sampled_from(METHODS))
    payload = data.draw(
        st.one_of(st.binary(max_size=64), st.sampled_from([b"\xff" * 8, b"\x0a\xff\xff\xff\xff\x0f"]))
    )
    role = "router" if method.name == "RecordUsage" else REQUESTS.get(method.name, ("ops",))[0]

    async def play() -> None:
        path = f"/{method.containing_service.full_name}/{method.name}"
        error = await raw_call(world.channel, path, payload, method.server_streaming, world.auth(role))
        event(f"{method.name}: {error.code().name if error else 'OK'}")
        if error is None:
            if method.name == "RecordUsage":
                world.stored |= {_key(r) for r in L.RecordUsageRequest.FromString(payload).records}
        else:
            found = clear_status(error, {*ALLOWED, grpc.StatusCode.ALREADY_EXISTS})
            if found.reason == "MALFORMED_REQUEST":
                assert found.violations == {
                    "request": "is not a valid protobuf message of this method's request type"
                }
        assert await _still_serving(world) == len(world.stored)

    world.loop.run(play())


async def test_regression_nul_characters_are_counted_or_refused_never_internal(backend: Backend) -> None:
    """On PostgreSQL (which cannot store NUL in text) a NUL in any text field answered INTERNAL:
    RecordUsage (which the router's reporter retries for ever, its spool stuck behind the record),
    RecordFeedback, ReserveBudget, RevokeKey and LookupKey. A record's text is now stored with U+FFFD
    in place of NUL, so its spend counts (and a re-delivery is still a duplicate); elsewhere NUL is a
    field violation. The same on SQLite."""
    ledger = await start_ledger(backend.settings())
    texts = ("request_id", "caller", "run_id", "model", "provider", "error", "classifier_version")
    try:
        record = _record("nul\x00id", cost_usd=0.5)
        for name in texts[1:]:
            setattr(record, name, f"x\x00{name}")
        request = L.RecordUsageRequest(records=[record])
        first = await ledger.stub.RecordUsage(request, timeout=30)
        again = await ledger.stub.RecordUsage(request, timeout=30)
        assert (first.inserted, again.inserted, again.duplicates) == (1, 0, 1)
        stats = await ledger.stub.GetStats(L.GetStatsRequest(group_by=[L.GROUP_BY_CALLER]), timeout=30)
        assert (stats.totals.attempts, stats.totals.cost_usd) == (1, 0.5)
        assert [g.key for g in stats.breakdowns[0].groups] == ["x\ufffdcaller"]
        refused: dict[str, Awaitable[object]] = {
            "RecordFeedback": ledger.stub.RecordFeedback(
                L.RecordFeedbackRequest(request_id="r\x00", caller="c", verdict=L.FEEDBACK_VERDICT_GOOD)
            ),
            "ReserveBudget": ledger.stub.ReserveBudget(
                L.ReserveBudgetRequest(caller="c", request_id="r\x00", amount_usd=1)
            ),
            "RevokeKey": ledger.stub.RevokeKey(L.RevokeKeyRequest(id="\x00")),
            "LookupKey": ledger.stub.LookupKey(L.LookupKeyRequest(id="k\x00", sha256="0" * 64)),
            "RecordUsage(sender)": ledger.stub.RecordUsage(L.RecordUsageRequest(sender="s\x00")),
        }
        for name, call in refused.items():
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            found = clear_status(raised.value, {grpc.StatusCode.INVALID_ARGUMENT})
            assert any("must not contain NUL" in d for d in found.violations.values()), name
    finally:
        await stop_ledger(ledger)
