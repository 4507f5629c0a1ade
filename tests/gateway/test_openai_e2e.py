"""The real `openai` SDK (sync, async, streaming) against the gateway in front of the real router,
classifier, ledger and simulator, each its own process, started as `make run` starts them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from jsonschema import validate
from openai.types.chat import ChatCompletionMessageParam

from devstack.stack import WITH_GATEWAY, Ports, Stack
from llmroute.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from service_kit.policy import DEFAULT_POLICY_PATH, load_policy
from service_kit.pricing import PriceBook
from service_kit.providers import PROVIDER_KEYS
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

POLICY = load_policy(DEFAULT_POLICY_PATH)
POLICY_MODELS = {spec.model for specs in POLICY.tiers.values() for spec in specs}
SPAM: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Is this spam? Answer yes or no: 'Claim your free cruise now!'"}
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(
        state_dir=tmp_path_factory.mktemp("gateway-stack"),
        ports=Ports.free(),
        extra_env={
            "SIMULATOR_LATENCY_SCALE": "0",
            "ROUTER_SIMULATOR": "always",  # never a real provider, whatever this machine's environment holds
            # An application that asks for gpt-4o is routed.
            "GATEWAY_MODEL_ALIASES": json.dumps({"gpt-4o": "llmroute/auto"}),
        },
    ) as stack:
        stack.start(WITH_GATEWAY)
        yield stack


def base_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.ports.gateway}/v1"


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url(stack), api_key="sk-llmroute-test", max_retries=0) as client:
        yield client


def get(stack: Stack, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.gateway}{path}", timeout=10) as reply:
        return json.loads(reply.read())


def simulator_calls(stack: Stack) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.simulator}/_sim/stats", timeout=10) as reply:
        return int(json.loads(reply.read())["totals"]["requests"])


def stats_when(stack: Stack, caller: str, requests: int) -> dict[str, Any]:
    """/stats for one caller, once the router's reports of `requests` requests have landed."""

    def landed() -> dict[str, Any] | None:
        stats: dict[str, Any] = get(stack, f"/stats?caller={caller}&group_by=model,tier")
        return stats if stats["totals"]["requests"] >= requests else None

    return wait_until(landed, f"{requests} requests of {caller} in the ledger", interval=0.2)


def test_an_openai_app_routes_through_llmroute_changing_only_base_url_and_api_key(stack: Stack) -> None:
    env = {key: value for key, value in os.environ.items() if key not in PROVIDER_KEYS.values()}
    env |= {"OPENAI_BASE_URL": base_url(stack), "OPENAI_API_KEY": "sk-my-llmroute-key"}
    app = Path(__file__).with_name("openai_app.py")
    result = subprocess.run(
        [sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    completion, streamed = (json.loads(line) for line in result.stdout.splitlines())
    # It asked for gpt-4o; llmroute classified the prompt and a model of the policy answered.
    assert completion["model"] in POLICY_MODELS
    assert completion["content"] and streamed["streamed"]
    stats = stats_when(stack, "helpdesk", 2)
    assert stats["totals"]["requests"] == 2
    assert (
        stats["totals"]["cost_usd"] > 0 and stats["totals"]["baseline_cost_usd"] > stats["totals"]["cost_usd"]
    )


def test_sync_answers_carry_tier_and_cost_and_the_ledger_agrees(stack: Stack, sdk: openai.OpenAI) -> None:
    prompts = [
        "Translate to French: good morning",
        "Is this spam? 'You won a prize'",
        "Prove that the square root of 2 is irrational, step by step.",
    ]
    costs = []
    for prompt in prompts:
        raw = sdk.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": prompt}], user="e2e-sync"
        )
        completion = raw.parse()
        info = (completion.model_extra or {})["llmroute"]
        assert completion.model in POLICY_MODELS and completion.choices[0].message.content
        assert any(spec.model == completion.model for spec in POLICY.tiers[info["tier"]])
        assert raw.headers["x-llmroute-tier"] == info["tier"]
        assert float(raw.headers["x-llmroute-cost-usd"]) == pytest.approx(info["cost_usd"], rel=1e-6)
        assert float(raw.headers["x-llmroute-baseline-cost-usd"]) == pytest.approx(
            info["baseline_cost_usd"], rel=1e-6
        )
        assert 0 <= float(raw.headers["x-llmroute-score"]) <= 1
        assert raw.headers["x-llmroute-request-id"] == info["request_id"] == raw.request_id
        assert completion.usage is not None and completion.usage.total_tokens > 0
        assert info["simulated"] is True
        costs.append(info["cost_usd"])
    stats = stats_when(stack, "e2e-sync", len(prompts))
    assert stats["totals"]["requests"] == len(prompts)
    assert stats["totals"]["cost_usd"] == pytest.approx(sum(costs), rel=1e-6)
    by = {b["group_by"]: {g["key"] for g in b["groups"]} for b in stats["breakdowns"]}
    assert by["GROUP_BY_MODEL"] <= POLICY_MODELS


async def test_async_requests_and_streams_concurrently(stack: Stack) -> None:
    async with openai.AsyncOpenAI(base_url=base_url(stack), api_key="sk-test", max_retries=0) as client:

        async def plain(n: int) -> str:
            completion = await client.chat.completions.create(
                model="llmroute/auto",
                messages=[
                    {"role": "user", "content": f"Summarize in one line: ticket {n} is about a refund."}
                ],
                user="e2e-async",
            )
            assert completion.model in POLICY_MODELS
            return completion.choices[0].message.content or ""

        async def streamed(n: int) -> str:
            stream = await client.chat.completions.create(
                model="llmroute/simple",
                messages=[{"role": "user", "content": f"Say hello to customer {n}."}],
                user="e2e-async",
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            *_, finish, usage = chunks
            assert finish.choices[0].finish_reason and finish.model in {
                s.model for s in POLICY.tiers["simple"]
            }
            info = (finish.model_extra or {})["llmroute"]
            assert info["tier"] == "simple" and info["cost_usd"] > 0
            assert usage.usage is not None and usage.usage.completion_tokens > 0
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        answers = await asyncio.gather(*(plain(n) for n in range(4)), *(streamed(n) for n in range(4)))
    assert all(answers)


def test_sync_streaming(sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.create(
        model="llmroute/auto", messages=SPAM, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-2].model in POLICY_MODELS


def test_json_schema_tiers_and_forced_models(sdk: openai.OpenAI) -> None:
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"spam": {"type": "boolean"}, "reason": {"type": "string"}},
        "required": ["spam", "reason"],
    }
    completion = sdk.chat.completions.create(
        model="llmroute/auto",
        messages=SPAM,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}},
        max_completion_tokens=200,
        temperature=0,
    )
    validate(json.loads(completion.choices[0].message.content or ""), schema)

    complex_tier = sdk.chat.completions.create(model="llmroute/complex", messages=SPAM)
    assert (complex_tier.model_extra or {})["llmroute"]["tier"] == "complex"
    assert complex_tier.model in {spec.model for spec in POLICY.tiers["complex"]}

    forced = sdk.chat.completions.create(model="gpt-5-mini", messages=SPAM)
    assert forced.model == "gpt-5-mini"
    assert (forced.model_extra or {})["llmroute"]["classifier_source"] == "override"


def test_an_idempotency_key_replays_the_answer_with_no_second_provider_call(
    stack: Stack, sdk: openai.OpenAI
) -> None:
    key = {"Idempotency-Key": "e2e-order-1234"}
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Write a two-line poem about invoices."}
    ]
    calls = simulator_calls(stack)
    first = sdk.chat.completions.create(model="llmroute/auto", messages=messages, extra_headers=key)
    assert simulator_calls(stack) == calls + 1
    again = sdk.chat.completions.create(model="llmroute/auto", messages=messages, extra_headers=key)
    streamed = sdk.chat.completions.create(
        model="llmroute/auto",
        messages=messages,
        extra_headers=key,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed)
    assert simulator_calls(stack) == calls + 1  # no second provider call
    assert again.choices[0].message.content == first.choices[0].message.content == text
    assert again.id == first.id and again.model == first.model
    assert (first.model_extra or {})["llmroute"]["replayed"] is False
    assert (again.model_extra or {})["llmroute"]["replayed"] is True

    # The same key with another request: refused, and not retried by the SDK.
    retrying = sdk.with_options(max_retries=2)
    with pytest.raises(openai.ConflictError) as raised:
        retrying.chat.completions.create(
            model="llmroute/auto",
            messages=[{"role": "user", "content": "Something else entirely."}],
            extra_headers=key,
        )
    assert raised.value.body["code"] == "idempotency_key_reused"  # type: ignore[index]
    assert raised.value.body["param"] == "Idempotency-Key"  # type: ignore[index]
    assert simulator_calls(stack) == calls + 1


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -5}, "max_completion_tokens"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"user": "has spaces in it"}, "user"),
    ],
)
def test_bad_input_is_400_with_the_parameter(sdk: openai.OpenAI, changes: dict[str, Any], param: str) -> None:
    request = {"model": "llmroute/auto", "messages": SPAM, **changes}
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(**request)
    body = raised.value.body
    assert isinstance(body, dict) and body["param"] == param
    assert body["llmroute"]["grpc_code"] == "INVALID_ARGUMENT"  # the router's verdict, translated
    assert param in body["message"]


def test_a_forced_model_the_policy_does_not_list_is_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model="gpt-2-imaginary", messages=SPAM)
    assert raised.value.body["code"] == "model_not_found" and raised.value.body["param"] == "model"  # type: ignore[index]


def test_a_spent_budget_is_429_insufficient_quota(stack: Stack, sdk: openai.OpenAI) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.ledger}") as channel:
        ledger_pb2_grpc.LedgerServiceStub(channel).SetBudget(
            ledger_pb2.SetBudgetRequest(
                budget=ledger_pb2.Budget(
                    caller="e2e-broke", period=ledger_pb2.BUDGET_PERIOD_DAILY, hard_limit_usd=1e-8
                )
            ),
            timeout=10,
        )
    calls = simulator_calls(stack)
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as raised:
            result = sdk.chat.completions.create(
                model="llmroute/auto", messages=SPAM, user="e2e-broke", stream=stream
            )
            list(result) if stream else None
        body = raised.value.body
        assert isinstance(body, dict) and body["code"] == "insufficient_quota"
        assert body["llmroute"]["reason"] == "BUDGET_EXCEEDED"
        assert raised.value.response.headers["x-should-retry"] == "false"
    assert simulator_calls(stack) == calls  # refused before any provider call


def test_models_lists_the_policy_with_the_routers_prices(sdk: openai.OpenAI) -> None:
    models = {m.id: m for m in sdk.models.list()}
    assert {"llmroute/auto", "llmroute/simple", "llmroute/reasoning"} <= set(models)
    assert set(models) >= POLICY_MODELS
    prices = PriceBook.from_litellm()  # what the router costs requests with
    for name in POLICY_MODELS:
        info = (models[name].model_extra or {})["llmroute"]
        price = prices.price(name)
        assert price is not None and info["price_known"]
        assert info["input_usd_per_million_tokens"] == pytest.approx(price.input_per_token * 1e6)
        assert info["output_usd_per_million_tokens"] == pytest.approx(price.output_per_token * 1e6)
        assert set(info["tiers"]) == {
            t for t, specs in POLICY.tiers.items() if any(s.model == name for s in specs)
        }
    simple = (models["llmroute/simple"].model_extra or {})["llmroute"]
    assert simple["models"] == [spec.model for spec in POLICY.tiers["simple"]]
    assert sdk.models.retrieve("gpt-5-mini").id == "gpt-5-mini"


def test_health_and_readiness(stack: Stack) -> None:
    assert get(stack, "/healthz") == {"status": "ok"}
    assert get(stack, "/readyz") == {"status": "ready", "router": "SERVING"}
