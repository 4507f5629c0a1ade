"""Authenticated callers: API keys with roles across the router, the ledger and the classifier.

The probes of issue 13 (a Route charged to another team, a forged usage record, a budget set by anyone,
another team's stats) each refused with the right status; the router's own calls to the ledger and the
classifier carry its service key; a service bound beyond loopback with no keys refuses to start.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from classifier_svc.server import create_server as create_classifier
from classifier_svc.settings import ClassifierSettings
from ledger_client import LedgerReporter
from ledger_svc.settings import LedgerSettings
from llmroute.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2 as L
from llmroute.ledger.v1 import ledger_pb2_grpc
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.server import create_server as create_router
from service_kit import auth
from tests.ledger.conftest import start_ledger, stop_ledger
from tests.rich_status import details
from tests.router.conftest import router_settings
from tests.waiting import eventually

PROMPT = "Is this message spam? 'You won a free cruise, click here'"


@dataclass
class Stack:
    keys_file: Path
    keys: dict[str, str]  # who → key
    router: grpc.aio.Channel
    ledger_address: str
    classifier_address: str
    reporter: LedgerReporter
    simulator_url: str

    def route(self, who: str | None) -> router_pb2_grpc.RouterServiceAsyncStub:
        return router_pb2_grpc.RouterServiceStub(self.router)

    def as_(self, who: str | None) -> tuple[tuple[str, str], ...]:
        return ((auth.AUTHORIZATION, f"Bearer {self.keys[who]}"),) if who else ()

    def ledger(self) -> ledger_pb2_grpc.LedgerServiceAsyncStub:
        return ledger_pb2_grpc.LedgerServiceStub(grpc.aio.insecure_channel(self.ledger_address))


def request(caller: str = "") -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=PROMPT)], caller=caller
    )


@pytest.fixture
async def stack(tmp_path: Path, simulator_url: str) -> AsyncIterator[Stack]:
    keys_file = tmp_path / "keys.yaml"
    keys = {
        "admin": auth.create_key(keys_file, "ops", ["admin"])[1],
        "router": auth.create_key(keys_file, "router", ["service"])[1],
        "team-a": auth.create_key(keys_file, "team-a", ["caller"], callers=["team-a/*"])[1],
        "victim": auth.create_key(keys_file, "victim-team", ["caller"])[1],
    }
    ledger = await start_ledger(
        LedgerSettings(
            port=0,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}",
            keys_file=keys_file,
            key_cache_seconds=0.2,
        )
    )
    ledger_address = f"127.0.0.1:{ledger.running.port}"
    classifier = await create_classifier(
        ClassifierSettings(port=0, strategy="heuristic", cache_enabled=False, keys_file=keys_file)
    )
    classifier_address = f"127.0.0.1:{classifier.port}"
    reporter = LedgerReporter(ledger_address, tmp_path / "spool.db", flush_interval=0.01, key=keys["router"])
    settings = router_settings(
        classifier_address,
        simulator_url,
        tmp_path,
        ledger_address=ledger_address,
        budgets_enabled=True,
        budget_check_ttl_seconds=0.1,
        keys_file=keys_file,
        service_key=keys["router"],
        key_cache_seconds=0.2,
    )
    router = await create_router(settings, usage_sink=reporter)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    yield Stack(keys_file, keys, channel, ledger_address, classifier_address, reporter, simulator_url)
    await channel.close()
    await router.stop(0)
    await classifier.stop(0)
    await stop_ledger(ledger)


async def key_refused(
    router: router_pb2_grpc.RouterServiceAsyncStub, key: tuple[tuple[str, str], ...]
) -> bool:
    """Whether the router refuses this key now (as invalid: revoked), rather than routing with it."""
    try:
        await router.Route(request(), metadata=key)
    except grpc.aio.AioRpcError as error:
        found = details(error)
        assert (found.code, found.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
        return True
    return False


async def refused(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    found = details(raised.value)
    return found.code, found.reason, found.metadata


async def test_a_route_needs_a_key_and_is_charged_to_the_keys_principal(stack: Stack) -> None:
    stub = stack.route(None)
    code, reason, _ = await refused(stub.Route(request()))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    bad = ((auth.AUTHORIZATION, "Bearer lrk_0000_not-a-key"),)
    code, reason, _ = await refused(stub.Route(request(), metadata=bad))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")

    # No caller named: the key's own. Its sub-callers: allowed. Another team: PERMISSION_DENIED.
    own = await stub.Route(request(), metadata=stack.as_("team-a"))
    sub = await stub.Route(request("team-a/search"), metadata=stack.as_("team-a"))
    code, reason, meta = await refused(stub.Route(request("victim-team"), metadata=stack.as_("team-a")))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    assert meta["caller"] == "victim-team" and meta["principal"] == "team-a"
    assert own.content and sub.content
    assert await stack.reporter.flush(10)

    admin = stack.ledger()
    stats = await admin.GetStats(L.GetStatsRequest(group_by=[L.GROUP_BY_CALLER]), metadata=stack.as_("admin"))
    [by_caller] = stats.breakdowns
    assert {g.key: g.totals.requests for g in by_caller.groups} == {"team-a": 1, "team-a/search": 1}


async def test_a_caller_key_cannot_forge_records_set_budgets_or_read_others(stack: Stack) -> None:
    ledger = stack.ledger()
    as_team = stack.as_("team-a")
    forged = L.RecordUsageRequest(
        records=[L.UsageRecord(request_id="forged", caller="victim-team", attempt=1, final=True)]
    )
    code, reason, _ = await refused(ledger.RecordUsage(forged, metadata=as_team))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    budget = L.SetBudgetRequest(
        budget=L.Budget(caller="", period=L.BUDGET_PERIOD_DAILY, hard_limit_usd=0.000001)
    )
    code, reason, _ = await refused(ledger.SetBudget(budget, metadata=as_team))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    code, reason, _ = await refused(
        ledger.GetStats(L.GetStatsRequest(caller="victim-team"), metadata=as_team)
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    code, _, _ = await refused(anext(aiter(ledger.ExportRecords(L.ExportRecordsRequest(), metadata=as_team))))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # The classifier's LLM costs money: routers and admins only.
    classifier = classifier_pb2_grpc.ClassifierServiceStub(
        grpc.aio.insecure_channel(stack.classifier_address)
    )
    ask = classifier_pb2.ClassifyRequest(messages=[common_pb2.ChatMessage(role="user", content=PROMPT)])
    code, reason, _ = await refused(classifier.Classify(ask, metadata=as_team))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    assert (await classifier.Classify(ask, metadata=stack.as_("router"))).tier


async def test_a_caller_sees_its_own_figures_and_an_admin_sees_everyones(stack: Stack) -> None:
    router = stack.route(None)
    await router.Route(request(), metadata=stack.as_("team-a"))
    await router.Route(request(), metadata=stack.as_("victim"))
    assert await stack.reporter.flush(10)
    ledger = stack.ledger()
    mine = await ledger.GetStats(
        L.GetStatsRequest(group_by=[L.GROUP_BY_CALLER]), metadata=stack.as_("team-a")
    )
    assert {g.key for g in mine.breakdowns[0].groups} == {"team-a"}  # not everyone's: its own
    everyone = await ledger.GetStats(
        L.GetStatsRequest(group_by=[L.GROUP_BY_CALLER]), metadata=stack.as_("admin")
    )
    assert {g.key for g in everyone.breakdowns[0].groups} == {"team-a", "victim-team"}


async def test_a_budget_binds_the_principal_whatever_the_request_says(stack: Stack) -> None:
    ledger = stack.ledger()
    await ledger.SetBudget(
        L.SetBudgetRequest(
            budget=L.Budget(caller="victim-team", period=L.BUDGET_PERIOD_DAILY, hard_limit_usd=1e-9)
        ),
        metadata=stack.as_("admin"),
    )
    router = stack.route(None)

    async def budget_known() -> bool:  # within the router's budget cache TTL (0.1 s here)
        try:
            await router.Route(request(), metadata=stack.as_("victim"))
        except grpc.aio.AioRpcError as error:
            found = details(error)
            assert (found.code, found.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
            return True
        return False

    await eventually(budget_known, "the victim's spent budget refusing its requests")
    # Refused for budget, it cannot route again under another name.
    code, reason, _ = await refused(router.Route(request("team-a"), metadata=stack.as_("victim")))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")


async def test_a_revoked_key_stops_working_without_a_restart(stack: Stack) -> None:
    router = stack.route(None)
    await router.Route(request(), metadata=stack.as_("victim"))
    [entry] = [e for e in auth.read_keys(stack.keys_file) if e.name == "victim-team"]
    assert auth.revoke_key(stack.keys_file, entry.id)
    # The key ring checks the file at most once a second.
    await eventually(lambda: key_refused(router, stack.as_("victim")), "the revoked key refused")


def test_keys_are_stored_as_digests_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key_id, key = auth.create_key(path, "team-b", ["caller"])
    text = path.read_text()
    assert key not in text and key.split("_", 2)[2] not in text and auth.digest(key) in text
    assert key_id in text and (path.stat().st_mode & 0o777) == 0o600
    ring = auth.KeyRing(path)
    principal = ring.authenticate(key)
    assert principal is not None and principal.name == "team-b" and principal.roles == {"caller"}
    assert ring.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None


async def test_open_only_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(auth.AuthConfigError, match="CLASSIFIER_KEYS_FILE"):
        await create_classifier(ClassifierSettings(host="0.0.0.0", port=0, strategy="heuristic"))
    running = await create_classifier(
        ClassifierSettings(host="0.0.0.0", port=0, strategy="heuristic", allow_open=True)
    )
    await running.stop(0)


async def test_the_cli_manages_keys_and_sends_the_key_from_the_environment(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmroute_cli.commands import main

    keys_file = str(stack.keys_file)
    main(["keys", "create", "--keys-file", keys_file, "--name", "team-c", "--caller", "team-c/*"])
    key = capsys.readouterr().out.strip()
    main(["keys", "list", "--keys-file", keys_file])
    listed = capsys.readouterr().out
    assert "team-c  roles=caller callers=team-c/*" in listed and key not in listed

    ledger = ["--ledger", stack.ledger_address]
    monkeypatch.delenv("LLMROUTE_API_KEY", raising=False)
    with pytest.raises(SystemExit, match="UNAUTHENTICATED"):
        await asyncio.to_thread(main, [*ledger, "stats"])
    (tmp := stack.keys_file.parent / "key.txt").write_text(key + "\n")
    monkeypatch.setenv("LLMROUTE_API_KEY_FILE", str(tmp))

    async def stats_read() -> bool:  # the ledger's key ring looks at the file at most once a second
        try:
            await asyncio.to_thread(main, [*ledger, "stats"])
        except SystemExit as refusal:
            assert "UNAUTHENTICATED" in str(refusal)
            return False
        return True

    await eventually(stats_read, "the new key accepted by the ledger", interval=0.1)
    assert '"totals"' in capsys.readouterr().out
    with pytest.raises(SystemExit, match="PERMISSION_DENIED"):  # a caller key reads only its own
        await asyncio.to_thread(main, [*ledger, "stats", "--caller", "team-a"])
    [entry] = [e for e in auth.read_keys(stack.keys_file) if e.name == "team-c"]
    main(["keys", "revoke", entry.id, "--keys-file", keys_file])
    [revoked] = [e for e in auth.read_keys(stack.keys_file) if e.name == "team-c"]
    assert revoked.revoked
    with pytest.raises(SystemExit, match="no active key"):
        main(["keys", "revoke", entry.id, "--keys-file", keys_file])


async def test_one_principals_streams_cannot_take_the_ledger_from_the_others(
    stack: Stack, tmp_path: Path
) -> None:
    ledger = await start_ledger(
        LedgerSettings(
            port=0,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'limits.db'}",
            keys_file=stack.keys_file,
            max_streams_per_principal=2,
        )
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ledger.running.port}")
    stub = ledger_pb2_grpc.LedgerServiceStub(channel)
    watch = L.WatchSpendRequest(interval_seconds=60)
    try:
        held = []
        for _ in range(2):
            stream = stub.WatchSpend(watch, metadata=stack.as_("team-a"))
            await stream.read()
            held.append(stream)
        extra = stub.WatchSpend(watch, metadata=stack.as_("team-a"))
        code, reason, meta = await refused(extra.read())
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CONCURRENT_CALLS")
        assert meta == {"principal": "team-a", "limit": "2", "kind": "streams"}
        # Another principal is not affected; unary calls of the same one neither.
        other = stub.WatchSpend(watch, metadata=stack.as_("victim"))
        assert isinstance(await other.read(), L.WatchSpendResponse)  # a snapshot, not the end
        await stub.GetStats(L.GetStatsRequest(), metadata=stack.as_("team-a"))
        other.cancel()
        # A stream that ends gives its slot back.
        held.pop().cancel()
        opened: list[grpc.aio.UnaryStreamCall[L.WatchSpendRequest, L.WatchSpendResponse]] = []

        async def slot_released() -> bool:
            again = stub.WatchSpend(watch, metadata=stack.as_("team-a"))
            try:
                await again.read()
            except grpc.aio.AioRpcError as error:
                assert details(error).reason == "TOO_MANY_CONCURRENT_CALLS"
                return False
            opened.append(again)
            return True

        await eventually(slot_released, "the cancelled stream's slot released")
        opened[0].cancel()
        for stream in held:
            stream.cancel()
    finally:
        await channel.close()
        await stop_ledger(ledger)


async def test_keys_created_in_the_ledger_route_read_and_stop_when_revoked(stack: Stack) -> None:
    """An admin creates a key over CreateKey; the router learns it from the ledger (LookupKey, with
    its service key); the ledger keeps only its digest; a revocation reaches the router."""
    ledger = stack.ledger()
    admin = stack.as_("admin")
    code, reason, _ = await refused(
        ledger.CreateKey(L.CreateKeyRequest(name="team-d"), metadata=stack.as_("team-a"))
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    bad = await refused(ledger.CreateKey(L.CreateKeyRequest(name="x", roles=["root"]), metadata=admin))
    assert bad[0] == grpc.StatusCode.INVALID_ARGUMENT
    created = await ledger.CreateKey(L.CreateKeyRequest(name="team-d", callers=["team-d/*"]), metadata=admin)
    key = created.key
    assert key.startswith("lrk_" + created.info.id) and list(created.info.roles) == ["caller"]
    listed = await ledger.ListKeys(L.ListKeysRequest(), metadata=admin)
    assert key not in str(listed) and created.info.id in {k.id for k in listed.keys}
    # Only the router (service) may look keys up.
    code, _, _ = await refused(
        ledger.LookupKey(
            L.LookupKeyRequest(id=created.info.id, sha256=auth.digest(key)), metadata=stack.as_("team-a")
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED

    as_d = ((auth.AUTHORIZATION, f"Bearer {key}"),)
    router = stack.route(None)
    reply = await router.Route(request("team-d/search"), metadata=as_d)
    assert reply.content
    code, reason, _ = await refused(router.Route(request("team-a"), metadata=as_d))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    assert await stack.reporter.flush(10)
    mine = await ledger.GetStats(L.GetStatsRequest(caller="team-d/search"), metadata=as_d)
    assert mine.totals.requests == 1

    assert (await ledger.RevokeKey(L.RevokeKeyRequest(id=created.info.id), metadata=admin)).revoked
    # Both caches hold a key 0.2 s here (10 s by default).
    await eventually(lambda: key_refused(router, as_d), "the revoked key refused by the router")

    async def ledger_refuses() -> bool:
        try:
            await ledger.GetStats(L.GetStatsRequest(), metadata=as_d)
        except grpc.aio.AioRpcError as error:
            found = details(error)
            assert (found.code, found.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
            return True
        return False

    await eventually(ledger_refuses, "the revoked key refused by the ledger")


async def test_the_cli_manages_keys_in_the_ledger(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmroute_cli.commands import main

    ledger = ["--ledger", stack.ledger_address]
    monkeypatch.setenv("LLMROUTE_API_KEY", stack.keys["admin"])
    await asyncio.to_thread(main, [*ledger, "keys", "create", "--in-ledger", "--name", "team-e"])
    # The in-process ledger logs to stdout too: the key is the line the CLI printed.
    [key] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lrk_")]
    await asyncio.to_thread(main, [*ledger, "keys", "list", "--in-ledger"])
    listed = capsys.readouterr().out
    key_id = auth.key_id_of(key)
    assert f"{key_id}  team-e  roles=caller" in listed and "active" in listed and key not in listed
    await asyncio.to_thread(main, [*ledger, "keys", "revoke", key_id, "--in-ledger"])
    await asyncio.to_thread(main, [*ledger, "keys", "list", "--in-ledger"])
    assert "revoked" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no active key"):
        await asyncio.to_thread(main, [*ledger, "keys", "revoke", key_id, "--in-ledger"])
