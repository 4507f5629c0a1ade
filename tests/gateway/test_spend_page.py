"""The live spend page (`GET /` of the gateway) in headless Chromium, in front of the real services.

The services, the simulator and the gateway run as processes (as `make run` starts them); requests are
routed through the gateway; the page must show what the ledger has, and follow a new request without
a reload. Set SPEND_PAGE_SCREENSHOT=docs/img/spend-page.png to keep the screenshot (the README's).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import WITH_GATEWAY, Ports, Stack
from tests.gateway.webdriver import Browser, chromium, is_png, require_chromium

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

# Callers and prompts: a mix of tiers, as an application's traffic would be.
TRAFFIC = [
    ("support/triage", "Is this spam? Answer yes or no: 'Claim your free cruise now!'"),
    ("support/triage", "Classify the sentiment of: 'The update broke my login again.'"),
    ("support/triage", "Translate to French: good morning"),
    ("search/summaries", "Summarize in one sentence: the quarterly revenue rose 12% on cloud sales."),
    ("search/summaries", "Extract the city from: 'Ship to 12 Rue de Rivoli, Paris 75001'"),
    ("analytics/reports", "Explain step by step why the sum of two odd numbers is always even."),
    ("analytics/reports", "Prove that there are infinitely many primes, then give a short example."),
    ("support/triage", "Hello!"),
]
SECRET_PROMPT = "Reply with the word zebra-71c3 and nothing else"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_chromium()
    with Stack(
        state_dir=tmp_path_factory.mktemp("spend-page-stack"),
        ports=Ports.free(),
        extra_env={"SIMULATOR_LATENCY_SCALE": "0", "ROUTER_SIMULATOR": "always"},
    ) as stack:
        stack.start(WITH_GATEWAY)
        yield stack


def _url(stack: Stack, path: str) -> str:
    return f"http://127.0.0.1:{stack.ports.gateway}{path}"


def chat(stack: Stack, caller: str, prompt: str) -> dict[str, Any]:
    body = {"model": "llmroute/auto", "user": caller, "messages": [{"role": "user", "content": prompt}]}
    request = urllib.request.Request(
        _url(stack, "/v1/chat/completions"),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return dict(json.loads(reply.read()))


def ledger_today(stack: Stack) -> dict[str, Any]:
    """/stats over today (UTC), the page's window, by caller and tier."""
    midnight = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    query = urllib.parse.urlencode({"since": midnight.isoformat(), "group_by": "caller,tier"})
    with urllib.request.urlopen(_url(stack, f"/stats?{query}"), timeout=10) as reply:
        return dict(json.loads(reply.read()))


def ledger_with(stack: Stack, browser: Browser, requests: int) -> dict[str, Any]:
    """Today's stats once the router's reports of `requests` requests have landed."""
    return browser.wait_for(
        lambda: (found := ledger_today(stack))["totals"]["requests"] >= requests and found,
        what=f"{requests} requests in the ledger",
    )


def shown(browser: Browser, card: str) -> float:
    value = browser.attribute(f"#{card}", "data-value")
    return float(value) if value else math.nan


def usd(value: float) -> str:
    """The page's dollar format (spend.js `usd`), for non-negative amounts."""
    digits = 2 if value == 0 else 6 if value < 0.01 else 4 if value < 100 else 2
    return f"${value:.{digits}f}"


def column(browser: Browser, table: str, index: int = 0) -> list[str]:
    return list(
        browser.script(
            "return [...document.querySelectorAll(`#${arguments[0]} tbody tr`)]"
            ".map(r => r.children[arguments[1]].textContent);",
            table,
            index,
        )
    )


def test_the_page_shows_the_ledgers_numbers_and_follows_a_new_request(stack: Stack, tmp_path: Path) -> None:
    for caller, prompt in TRAFFIC:
        chat(stack, caller, prompt)
    with chromium() as browser:
        before = ledger_with(stack, browser, len(TRAFFIC))
        browser.get(_url(stack, "/"))
        browser.wait_for(lambda: browser.text("#status") == "live", what="the page's stream to connect")
        browser.wait_for(
            lambda: shown(browser, "requests") == before["totals"]["requests"], what="the request count"
        )
        totals = before["totals"]
        for card, field in [
            ("spend", "cost_usd"),
            ("baseline", "baseline_cost_usd"),
            ("gross", "gross_savings_usd"),
            ("net", "net_savings_usd"),
            ("escalation", "escalation_rate"),
        ]:
            assert shown(browser, card) == pytest.approx(totals[field], rel=1e-9, abs=1e-12), card
        assert totals["cost_usd"] > 0 and totals["baseline_cost_usd"] > totals["cost_usd"]
        assert browser.text("#spend") == usd(totals["cost_usd"])
        assert browser.text("#requests") == f"{totals['requests']:,}"
        # The tables are the ledger's breakdowns.
        callers = {
            g["key"] for b in before["breakdowns"] if b["group_by"] == "GROUP_BY_CALLER" for g in b["groups"]
        }
        assert set(column(browser, "callers")) == callers  # the router's warm-up call is one too
        assert callers >= {caller for caller, _ in TRAFFIC}
        tiers = {
            g["key"].removeprefix("TIER_").lower(): g["totals"]["requests"]
            for b in before["breakdowns"]
            if b["group_by"] == "GROUP_BY_TIER"
            for g in b["groups"]
        }
        assert (
            dict(zip(column(browser, "tiers"), map(int, column(browser, "tiers", 1)), strict=True)) == tiers
        )
        assert column(browser, "models"), "no model in the models table"
        assert browser.script("return document.querySelectorAll('#chart canvas').length;") >= 1

        # One more request, from a caller the page has not seen: the page follows without a reload.
        browser.script("window.__notReloaded = true;")
        reply = chat(stack, "billing/invoices", SECRET_PROMPT)
        after = ledger_with(stack, browser, before["totals"]["requests"] + 1)
        browser.wait_for(
            lambda: shown(browser, "requests") == after["totals"]["requests"], what="the page to update"
        )
        assert shown(browser, "spend") == pytest.approx(after["totals"]["cost_usd"], rel=1e-9)
        assert shown(browser, "spend") > totals["cost_usd"]
        assert reply["llmroute"]["cost_usd"] > 0
        browser.wait_for(
            lambda: "billing/invoices" in column(browser, "callers"), what="the new caller's row"
        )
        assert browser.script("return window.__notReloaded === true;")
        # Nothing of the prompts or the answers reaches the page.
        page_text = str(browser.script("return document.documentElement.outerHTML;"))
        assert SECRET_PROMPT not in page_text and TRAFFIC[0][1] not in page_text

        picture = browser.screenshot()
        keep = os.environ.get("SPEND_PAGE_SCREENSHOT")
        assert is_png(picture, Path(keep) if keep else tmp_path / "spend-page.png")


def test_the_page_and_its_files_are_served_with_a_strict_policy(stack: Stack) -> None:
    with urllib.request.urlopen(_url(stack, "/"), timeout=10) as reply:
        html = reply.read().decode()
        policy = reply.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "<script>" not in html  # no inline script: the policy would refuse it
    for path in (
        "/static/spend.js",
        "/static/vendor/uplot/uPlot.iife.min.js",
        "/static/vendor/uplot/LICENSE",
    ):
        with urllib.request.urlopen(_url(stack, path), timeout=10) as reply:
            assert reply.status == 200 and reply.read()
