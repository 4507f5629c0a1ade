"""API keys through the gateway, against the real services with a keys file: the HTTP `Authorization`
header is what the router and the ledger authenticate, unchanged."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from devstack.stack import WITH_GATEWAY, Ports, Stack
from service_kit import auth
from tests.gateway.webdriver import chromium, require_chromium

pytestmark = pytest.mark.e2e
SPAM = [{"role": "user", "content": "Is this spam? 'Claim your prize'"}]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    state = tmp_path_factory.mktemp("gateway-keys")
    keys = state / "keys.yaml"
    _, service_key = auth.create_key(keys, "router", ["service"])
    _, team_key = auth.create_key(keys, "search-team", ["caller"], ["search-team/*"])
    with Stack(
        state_dir=state,
        ports=Ports.free(),
        extra_env={
            "SIMULATOR_LATENCY_SCALE": "0",
            "ROUTER_SIMULATOR": "always",
            **{f"{prefix}_KEYS_FILE": str(keys) for prefix in ("ROUTER", "LEDGER", "CLASSIFIER")},
            "ROUTER_SERVICE_KEY": service_key,
        },
    ) as stack:
        stack.start(WITH_GATEWAY)
        yield stack, team_key


def sdk(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.ports.gateway}/v1", api_key=key, max_retries=0)


def test_the_key_is_the_routers_to_check(keyed: tuple[Stack, str]) -> None:
    stack, key = keyed
    with sdk(stack, key) as client:
        completion = client.chat.completions.create(model="llmroute/auto", messages=SPAM)  # type: ignore[arg-type]
        assert completion.choices[0].message.content
        # A sub-caller the key allows, and one it does not.
        client.chat.completions.create(model="llmroute/auto", messages=SPAM, user="search-team/autocomplete")  # type: ignore[arg-type]
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client.chat.completions.create(model="llmroute/auto", messages=SPAM, user="billing")  # type: ignore[arg-type]
        assert denied.value.body["code"] == "caller_not_allowed"  # type: ignore[index]
    with (
        sdk(stack, "lrk_000000000000_not-a-key") as client,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        client.chat.completions.create(model="llmroute/auto", messages=SPAM, stream=True)  # type: ignore[arg-type]
    assert refused.value.body["code"] == "api_key_invalid"  # type: ignore[index]


def test_stats_with_and_without_a_key(keyed: tuple[Stack, str]) -> None:
    stack, key = keyed
    url = f"http://127.0.0.1:{stack.ports.gateway}/stats"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url, timeout=10)
    assert missing.value.code == 401
    assert json.loads(missing.value.read())["error"]["code"] == "api_key_missing"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert "totals" in json.loads(reply.read())


def test_models_and_health_need_no_key(keyed: tuple[Stack, str]) -> None:
    stack, _ = keyed
    base = f"http://127.0.0.1:{stack.ports.gateway}"
    for path in ("/healthz", "/readyz", "/v1/models"):
        with urllib.request.urlopen(base + path, timeout=10) as reply:
            assert reply.status == 200


def test_the_spend_page_asks_for_a_key_and_sends_it_as_a_header(keyed: tuple[Stack, str]) -> None:
    require_chromium()
    stack, key = keyed
    base = f"http://127.0.0.1:{stack.ports.gateway}"
    with sdk(stack, key) as client:  # the key's own numbers, whichever tests ran before this one
        client.chat.completions.create(model="llmroute/auto", messages=SPAM)  # type: ignore[arg-type]

    def ledger_requests() -> str:  # re-read each time: reports may still be landing
        request = urllib.request.Request(
            base + "/stats?last_minutes=1440", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return str(json.loads(reply.read())["totals"]["requests"])

    with chromium() as browser:
        browser.get(base + "/")
        browser.wait_for(lambda: browser.text("#status") == "an API key is needed", what="the key prompt")
        assert browser.attribute("#requests", "data-value") == ""
        browser.script(
            "document.getElementById('key').value = arguments[0];"
            "document.getElementById('key-form').requestSubmit();",
            key,
        )
        browser.wait_for(lambda: browser.text("#status") == "live", what="the stream with the key")
        browser.wait_for(
            lambda: browser.attribute("#requests", "data-value") == ledger_requests() != "0",
            what="the key's numbers",
        )
        # The key went in a header: not in the address, not in the page.
        assert key not in str(browser.script("return location.href + document.documentElement.outerHTML;"))
