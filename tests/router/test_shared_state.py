"""Two router replicas sharing Redis (127.0.0.1:6379, as on the development and CI machines): one
idempotency contract across replicas, cooldowns learned once, and a Redis outage that changes nothing
but the sharing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.server import create_server
from router_svc.shared import HEALTH_COMPONENT, idempotency_key
from service_kit import health_rpc
from tests.doubles import RecordingSink
from tests.rich_status import details
from tests.router.conftest import RouterHarness, router_settings
from tests.waiting import NotYet, eventually

REDIS = "redis://127.0.0.1:6379/0"
PROMPT = "Summarize in one line: the quarterly review moved to Thursday."


@dataclass
class Pair:
    a: RouterHarness
    b: RouterHarness
    prefix: str


async def start(
    classifier_address: str, simulator_url: str, tmp: Path, url: str, prefix: str
) -> RouterHarness:
    sink = RecordingSink()
    settings = router_settings(
        classifier_address, simulator_url, tmp, redis_url=url, redis_prefix=prefix, cooldown_after_failures=2
    )
    running = await create_server(settings, usage_sink=sink)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return RouterHarness(router_pb2_grpc.RouterServiceStub(channel), running, sink, simulator_url, settings)


async def stop(*harnesses: RouterHarness) -> None:
    for harness in harnesses:
        await harness.server.stop(0)


@pytest.fixture
async def pair(classifier_address: str, simulator_url: str, tmp_path: Path) -> AsyncIterator[Pair]:
    prefix = f"llmroute-test-{uuid.uuid4().hex}:"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = await start(classifier_address, simulator_url, tmp_path / "a", REDIS, prefix)
    b = await start(classifier_address, simulator_url, tmp_path / "b", REDIS, prefix)
    yield Pair(a, b, prefix)
    await stop(a, b)
    client = aioredis.from_url(REDIS)
    async for key in client.scan_iter(f"{prefix}*"):
        await client.delete(key)
    await client.aclose()


def route(text: str = PROMPT, request_id: str = "", **options: object) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=text)],
        request_id=request_id,
        caller="app",
        options=router_pb2.RouteOptions(**options),  # type: ignore[arg-type]
    )


async def calls(harness: RouterHarness) -> int:
    return int((await harness.simulator_stats())["totals"]["requests"])


async def in_flight(harness: RouterHarness) -> int:
    return int((await harness.simulator_stats())["in_flight"])


async def test_a_retry_on_the_other_replica_is_replayed_not_called_again(pair: Pair) -> None:
    first = await pair.a.stub.Route(route(request_id="order-1"))
    before = await calls(pair.a)
    again = await pair.b.stub.Route(route(request_id="order-1"))
    assert again.replayed and again.run_id == first.run_id and again.content == first.content
    assert await calls(pair.a) == before and pair.b.sink.records == []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pair.b.stub.Route(route("Another prompt altogether.", request_id="order-1"))
    found = details(raised.value)
    assert (found.code, found.reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


async def test_a_retry_while_the_run_is_in_flight_on_the_other_replica_waits_for_it(pair: Pair) -> None:
    await pair.a.fault(model="*", fault="delay", delay_ms=400, count=1)

    async def slow() -> router_pb2.RouteResponse:
        return await pair.a.stub.Route(route(request_id="slow-1"), timeout=10)

    first = asyncio.create_task(slow())
    await eventually(lambda: in_flight(pair.a), "the first call at the provider")
    second = await pair.b.stub.Route(route(request_id="slow-1"), timeout=10)
    assert second.replayed and second.run_id == (await first).run_id
    assert await calls(pair.a) == 1


async def test_a_cooldown_learned_on_one_replica_holds_on_the_other(pair: Pair) -> None:
    cheapest = "groq/openai/gpt-oss-20b"
    await pair.a.fault(model=cheapest, fault="status", status=503, retry_after=0)
    for _ in range(2):  # two failures open its breaker on replica a
        await pair.a.stub.Route(route(force_tier=common_pb2.TIER_SIMPLE))

    async def skipped_on_b() -> router_pb2.RouteResponse | None:
        response = await pair.b.stub.Route(route(force_tier=common_pb2.TIER_SIMPLE))
        skipped = {c.model for c in response.candidates if c.skipped_reason == "cooldown"}
        return response if cheapest in skipped else None

    response = await eventually(skipped_on_b, "the cooldown learned on replica b", interval=0.2)
    assert all(a.model != cheapest for a in response.attempts)


async def test_a_crashed_owners_run_is_taken_over_when_its_lease_lapses(pair: Pair) -> None:
    from router_svc.idempotency import fingerprint

    request = route(request_id="orphan-1")
    client = aioredis.from_url(REDIS)
    key = idempotency_key(pair.prefix, ("app", "orphan-1"))  # a replica claimed it, then died
    digest = fingerprint(request.messages, request.options).hex()
    past = int(time.time() * 1000) - 1000
    await client.hset(key, mapping={"fp": digest, "state": "running", "owner": "gone", "lease": past})
    await client.pexpire(key, 60_000)
    await client.aclose()
    response = await pair.b.stub.Route(request, timeout=10)
    assert not response.replayed and response.content


async def test_redis_down_changes_nothing_but_the_sharing(
    classifier_address: str, simulator_url: str, tmp_path: Path
) -> None:
    errors_before = REGISTRY.get_sample_value("llmroute_router_shared_state_errors_total") or 0
    harness = await start(classifier_address, simulator_url, tmp_path, "redis://127.0.0.1:1/0", "down:")
    try:
        first = await harness.stub.Route(route(request_id="local-1"))
        again = await harness.stub.Route(route(request_id="local-1"))
        assert "shared_state_unavailable" in first.warnings
        assert again.replayed and again.run_id == first.run_id  # this replica's own memory still binds it
        assert await calls(harness) == 1
        # Said in health (the router serves; its shared state does not), and in metrics.
        assert await health(harness) == "SERVING"
        assert await health(harness, HEALTH_COMPONENT, until="NOT_SERVING") == "NOT_SERVING"
        assert REGISTRY.get_sample_value("llmroute_router_shared_state_up") == 0
        assert (REGISTRY.get_sample_value("llmroute_router_shared_state_errors_total") or 0) > errors_before
    finally:
        await stop(harness)


async def health(harness: RouterHarness, component: str = "", until: str = "") -> str:
    """The health status of the router (or of one of its components); with `until`, waits for that
    status (a component's status follows Redis within half a second) and returns the last seen."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{harness.server.port}")
    seen = ""

    async def reached() -> bool:
        nonlocal seen
        reply = await health_rpc.check_async(channel)(
            health_pb2.HealthCheckRequest(service=component), timeout=2
        )
        seen = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return seen == until or not until

    try:
        await eventually(reached, f"health {component or 'of the router'} {until}", timeout=10)
    except NotYet:
        pass  # the caller's assertion names what was seen instead
    finally:
        await channel.close()
    return seen


async def test_only_one_replica_runs_a_key_claimed_on_both_at_once(pair: Pair) -> None:
    await pair.a.fault(model="*", fault="delay", delay_ms=200, count=2)
    results = await asyncio.gather(
        pair.a.stub.Route(route(request_id="race-1"), timeout=10),
        pair.b.stub.Route(route(request_id="race-1"), timeout=10),
    )
    assert sorted(r.replayed for r in results) == [False, True] and results[0].run_id == results[1].run_id
    assert await calls(pair.a) == 1


async def test_redis_killed_under_load_and_restarted_loses_and_doubles_nothing(
    classifier_address: str, simulator_url: str, tmp_path: Path
) -> None:
    """A private Redis (redis-server on a free port), killed with SIGKILL while two routers serve, then
    restarted: every request is answered, every provider call is recorded once, sharing resumes."""
    import shutil
    import signal
    import socket

    server = shutil.which("redis-server")
    assert server, "redis-server is needed (Debian's redis-server package, as on the CI machines)"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    redis_process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = aioredis.from_url(url)

    async def answers() -> bool:
        try:
            return bool(await client.ping())
        except redis.exceptions.ConnectionError:
            return False

    await eventually(answers, "the private Redis answering")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = await start(classifier_address, simulator_url, tmp_path / "a", url, "kill:")
    b = await start(classifier_address, simulator_url, tmp_path / "b", url, "kill:")
    try:
        answered = 0

        async def burst(tag: str, n: int) -> None:
            nonlocal answered
            replies = await asyncio.gather(
                *((a, b)[i % 2].stub.Route(route(request_id=f"{tag}-{i}"), timeout=20) for i in range(n))
            )
            answered += sum(1 for r in replies if r.content)

        await burst("before", 20)
        redis_process.send_signal(signal.SIGKILL)
        await redis_process.wait()
        await burst("during", 20)  # both routers on their own memory now
        assert await health(a, HEALTH_COMPONENT, until="NOT_SERVING") == "NOT_SERVING"
        assert await health(a) == "SERVING"
        redis_process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
        await eventually(answers, "the restarted Redis answering")
        for harness in (a, b):  # each router finds Redis again on its own (a try at most once a second)
            assert await health(harness, HEALTH_COMPONENT, until="SERVING") == "SERVING"
        await burst("after", 20)
        assert await health(a, HEALTH_COMPONENT, until="SERVING") == "SERVING"
        assert await health(b, HEALTH_COMPONENT, until="SERVING") == "SERVING"
        assert answered == 60
        records = len(a.sink.records) + len(b.sink.records)
        assert records == await calls(a) == 60  # every call recorded, once
        first = await a.stub.Route(route(request_id="shared-again"))
        again = await b.stub.Route(route(request_id="shared-again"))
        assert (
            again.replayed
            and again.run_id == first.run_id
            and "shared_state_unavailable" not in first.warnings
        )
    finally:
        await stop(a, b)
        await client.aclose()
        redis_process.kill()
        await redis_process.wait()
