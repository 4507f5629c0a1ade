"""The LLM simulator through the clients llmroute uses (LiteLLM, pydantic-ai) and over raw HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import jsonschema
import openai
import pydantic_ai.models
import pytest
from pydantic import BaseModel, Field
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from service_kit.litellm_offline import litellm
from simulator import tokens
from simulator.analysis import analyze
from simulator.completion import REFUSAL
from simulator.schema import generate

if TYPE_CHECKING:
    # Types only: pytest loads conftest itself, and a second import would make a second module.
    from tests.simulator.conftest import Sim, StartSim

REPO = Path(__file__).resolve().parents[2]
# The real o200k_base tiktoken encoding, loaded offline from the BPE file LiteLLM bundles.
O200K = tokens.encoding("o200k_base")
SENTIMENT = "Classify the sentiment of this review as positive, negative or neutral: I love this blender, it works great."
ESSAY = "Write a detailed essay explaining how distributed databases trade consistency for availability."
HARD = (
    "Design and implement a distributed, concurrent rate limiter in Python. Prove its correctness step by step, "
    "then analyze the trade-offs and the edge cases."
)


async def complete(sim: Sim, model: str, content: str = ESSAY, **kwargs: Any) -> Any:
    """One call the way llmroute's router makes it: LiteLLM's OpenAI provider pointed at the simulator."""
    return await litellm.acompletion(
        model=f"openai/{model}",
        api_base=sim.base_url,
        api_key="sim",
        messages=[{"role": "user", "content": content}],
        max_retries=0,
        **kwargs,
    )


def prompt_tokens(messages: list[dict[str, str]]) -> int:
    # OpenAI's chat accounting: 3 framing tokens per message, 3 to prime the reply.
    return 3 + sum(3 + len(O200K.encode(m["role"])) + len(O200K.encode(m["content"])) for m in messages)


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --- answers and usage -------------------------------------------------------------------------------


async def test_non_streaming_completion_has_real_token_counts_and_prices(sim: Sim) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Explain the CAP theorem in two sentences."},
    ]
    response = await litellm.acompletion(
        model="openai/gpt-4.1-mini", api_base=sim.base_url, api_key="sim", messages=messages, max_retries=0
    )

    content = response.choices[0].message.content
    assert content.startswith("[simulated gpt-4.1-mini] ")
    assert response.system_fingerprint == "llmroute-simulator"
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert (
        usage.prompt_tokens
        == prompt_tokens(messages)
        == litellm.token_counter(model="gpt-4.1-mini", messages=messages)
    )
    assert usage.completion_tokens == len(O200K.encode(content))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert usage.prompt_tokens_details.cached_tokens == 0
    # The real price map prices it, because the model name is the real one.
    prices = litellm.model_cost["gpt-4.1-mini"]
    expected_cost = (
        usage.prompt_tokens * prices["input_cost_per_token"]
        + usage.completion_tokens * prices["output_cost_per_token"]
    )
    assert response._hidden_params["response_cost"] == pytest.approx(expected_cost)


async def test_answers_fit_the_prompt_and_are_deterministic(sim: Sim) -> None:
    label = await complete(sim, "gpt-4.1-mini", SENTIMENT)
    essay = await complete(sim, "gpt-4.1-mini", ESSAY)
    again = await complete(sim, "gpt-4.1-mini", ESSAY)
    other_model = await complete(sim, "claude-haiku-4-5", ESSAY)

    assert label.choices[0].message.content == "[simulated gpt-4.1-mini] positive"
    assert essay.usage.completion_tokens > 150
    assert again.choices[0].message.content == essay.choices[0].message.content
    assert other_model.choices[0].message.content.startswith("[simulated claude-haiku-4-5] ")


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(sim: Sim) -> None:
    full = await complete(sim, "gpt-4.1-mini")
    cut = await complete(sim, "gpt-4.1-mini", max_tokens=12)

    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 12 == len(O200K.encode(cut.choices[0].message.content))
    assert full.choices[0].message.content.startswith(cut.choices[0].message.content)


async def test_reasoning_models_report_reasoning_tokens_inside_completion_tokens(sim: Sim) -> None:
    o3 = await complete(sim, "o3", HARD, reasoning_effort="high")
    o3_low = await complete(sim, "o3", HARD, reasoning_effort="low")

    details = o3.usage.completion_tokens_details
    assert details.reasoning_tokens > 0
    assert o3.usage.completion_tokens == details.reasoning_tokens + len(
        O200K.encode(o3.choices[0].message.content)
    )
    assert o3_low.usage.completion_tokens_details.reasoning_tokens < details.reasoning_tokens

    # Claude thinks only when asked to.
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": HARD}]}
    plain = await (await sim.chat(body)).json()
    thinking = await (await sim.chat({**body, "reasoning_effort": "medium"})).json()
    assert plain["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert thinking["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


async def test_streaming_sends_token_deltas_then_a_usage_chunk(sim: Sim) -> None:
    stream = await complete(sim, "gpt-5-mini", stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert text.startswith("[simulated gpt-5-mini] ")
    assert finish == ["stop"]
    assert len(chunks) > 20
    assert usage.completion_tokens_details.reasoning_tokens > 0
    assert usage.completion_tokens == usage.completion_tokens_details.reasoning_tokens + len(
        O200K.encode(text)
    )
    assert usage.prompt_tokens == prompt_tokens([{"role": "user", "content": ESSAY}])


async def test_stream_wire_format_matches_openai(sim: Sim) -> None:
    body = {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": "Hi there"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    reply = await sim.chat(body)
    events = [line.removeprefix("data: ") for line in (await reply.text()).split("\n\n") if line]

    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers["x-llmroute-simulated"] == "1"
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["usage"] is None
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert {c["system_fingerprint"] for c in chunks} == {"llmroute-simulator"}


async def test_latency_follows_the_model_profile_and_scale(start_sim: StartSim) -> None:
    sim = await start_sim(latency_scale=0.05)

    async def timed(model: str) -> tuple[float, Any]:
        started = time.perf_counter()
        response = await complete(sim, model, HARD, max_tokens=40)
        return time.perf_counter() - started, response

    fast, _ = await timed("gpt-5-nano")
    slow, o3 = await timed("o3")
    # o3: 1.5 s to first token and 40 tokens/s, times 0.05.
    assert slow >= 0.05 * (1.5 + o3.usage.completion_tokens / 40)
    assert fast < slow


async def test_stream_is_paced_at_the_token_rate(start_sim: StartSim) -> None:
    sim = await start_sim(latency_scale=0.2)
    body = {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": ESSAY}],
        "stream": True,
        "max_tokens": 60,
    }
    started = time.perf_counter()
    arrivals = []
    async with sim.http.post(f"{sim.base_url}/chat/completions", json=body) as reply:
        async for line in reply.content:
            if b'"content":"' in line:
                arrivals.append(time.perf_counter() - started)
    # 300 ms to first token and 150 tokens/s, times 0.2: ~60 ms, then 60 tokens over ~80 ms.
    assert arrivals[0] >= 0.05
    assert arrivals[-1] - arrivals[0] >= 0.04


# --- structured output -----------------------------------------------------------------------------


class Verdict(BaseModel):
    score: float = Field(ge=0, le=1)
    tier: Literal["simple", "moderate", "complex", "reasoning"]
    category: Literal["classification", "code", "math", "chat", "generation"]
    reason: str


async def test_pydantic_ai_output_tool_returns_a_valid_and_sensible_verdict(sim: Sim) -> None:
    model = OpenAIChatModel("claude-haiku-4-5", provider=OpenAIProvider(base_url=sim.base_url, api_key="sim"))
    agent = Agent(model, output_type=Verdict)

    with pydantic_ai.models.override_allow_model_requests(True):
        easy = (await agent.run(SENTIMENT)).output
        hard = (await agent.run(HARD)).output

    assert isinstance(easy, Verdict) and isinstance(hard, Verdict)
    assert easy.score < 0.35 and easy.tier == "simple" and easy.category == "classification"
    assert hard.score > 0.75 and hard.tier == "reasoning" and hard.category == "code"


async def test_pydantic_ai_agent_calls_a_tool_it_needs_then_answers(sim: Sim) -> None:
    model = OpenAIChatModel("gpt-4.1-mini", provider=OpenAIProvider(base_url=sim.base_url, api_key="sim"))
    agent = Agent(model)
    calls: list[str] = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        calls.append(city)
        return "sunny"

    with pydantic_ai.models.override_allow_model_requests(True):
        result = await agent.run("What is the weather in Paris today?")

    assert calls == ["simulated city"]
    assert result.output.startswith("[simulated gpt-4.1-mini] ")


class Node(BaseModel):
    name: str = Field(min_length=10, max_length=12)
    children: list[Node] = Field(default_factory=list)


class Everything(BaseModel):
    count: int = Field(ge=3, le=7)
    ratio: float = Field(gt=0, lt=1)
    level: Literal["low", "mid", "high"]
    optional: int | None = None
    either: int | str
    tags: list[str] = Field(min_length=2)
    pair: tuple[int, str]
    when: str = Field(json_schema_extra={"format": "date-time"})
    counts: dict[str, int]
    tree: Node
    flag: bool


def test_schema_generator_satisfies_refs_unions_bounds_and_recursion() -> None:
    schema = Everything.model_json_schema()
    value = generate(schema, analyze("anything"))

    jsonschema.Draft202012Validator(schema).validate(value)
    Everything.model_validate(value)


async def test_json_schema_response_format_is_valid_json(sim: Sim) -> None:
    response = await complete(sim, "gpt-5-mini", HARD, response_format=Verdict)
    schema_ok = Verdict.model_validate_json(response.choices[0].message.content)
    assert schema_ok.tier == "reasoning"

    raw = await sim.chat(
        {
            "model": "gpt-4.1",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"},
        }
    )
    content = (await raw.json())["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content), dict)


async def test_named_tool_choice_calls_that_tool_with_schema_valid_arguments(sim: Sim) -> None:
    schema = Everything.model_json_schema()
    tools = [
        {
            "type": "function",
            "function": {"name": "other", "parameters": {"type": "object", "properties": {}}},
        },
        {"type": "function", "function": {"name": "fill", "parameters": schema}},
    ]
    body = {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "go"}],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "fill"}},
    }
    reply = await (await sim.chat(body)).json()

    choice = reply["choices"][0]
    call = choice["message"]["tool_calls"][0]
    assert choice["finish_reason"] == "tool_calls" and call["function"]["name"] == "fill"
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (429, litellm.RateLimitError),
        (500, litellm.InternalServerError),
        (503, litellm.ServiceUnavailableError),
        (401, litellm.AuthenticationError),
    ],
)
async def test_status_fault_becomes_the_matching_litellm_exception(
    sim: Sim, status: int, exception: type[openai.APIStatusError]
) -> None:
    with pytest.raises(exception) as raised:
        await complete(sim, "gpt-5-mini", extra_headers={"x-sim-fault": f"status:{status}"})
    assert raised.value.status_code == status


async def test_status_fault_body_and_retry_after(sim: Sim) -> None:
    body = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]}
    reply = await sim.chat(body, headers={"x-sim-fault": "status:429,retry_after=2"})

    assert reply.status == 429
    assert reply.headers["retry-after"] == "2"
    assert reply.headers["x-llmroute-simulated"] == "1"
    error = (await reply.json())["error"]
    assert error["code"] == "rate_limit_exceeded" and error["message"]


async def test_delay_fault_waits_then_answers(sim: Sim) -> None:
    started = time.perf_counter()
    response = await complete(sim, "gpt-5-mini", extra_headers={"x-sim-fault": "delay:200"})
    assert time.perf_counter() - started >= 0.2
    assert response.choices[0].message.content


async def test_timeout_fault_hangs_until_the_client_gives_up(sim: Sim) -> None:
    started = time.perf_counter()
    with pytest.raises(litellm.Timeout):
        await complete(sim, "gpt-5-mini", extra_headers={"x-sim-fault": "timeout"}, timeout=0.3)
    assert time.perf_counter() - started < 10  # the client's timeout, far below the hang (300 s)

    async def cancelled() -> bool:
        stats = await sim.stats()
        return bool(stats["models"]["gpt-5-mini"]["cancelled"] == 1 and stats["in_flight"] == 0)

    await wait_for(cancelled)


async def test_malformed_fault_is_not_json(sim: Sim) -> None:
    reply = await sim.chat(
        {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]}, {"x-sim-fault": "malformed"}
    )
    assert reply.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(await reply.text())
    with pytest.raises(openai.APIError, match="Expecting value"):
        await complete(sim, "gpt-5-mini", extra_headers={"x-sim-fault": "malformed"})


async def test_cut_stream_fault_closes_the_stream_after_some_deltas(sim: Sim) -> None:
    stream = await complete(sim, "gpt-5-mini", stream=True, extra_headers={"x-sim-fault": "cut_stream:3"})
    received = []
    with pytest.raises(openai.APIError, match="Connection error"):
        async for chunk in stream:
            received.append(chunk)
    assert 1 <= len(received) <= 4
    assert not any(c.choices and c.choices[0].finish_reason for c in received)

    body = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with sim.http.post(
        f"{sim.base_url}/chat/completions", json=body, headers={"x-sim-fault": "cut_stream"}
    ) as r:
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_cut_stream_fault_on_a_non_streaming_call_closes_mid_body(sim: Sim) -> None:
    with pytest.raises(openai.APIError, match="Connection error"):
        await complete(sim, "gpt-5-mini", extra_headers={"x-sim-fault": "cut_stream"})


async def test_content_faults_empty_length_refusal(sim: Sim) -> None:
    full = await complete(sim, "gpt-4.1-mini")
    empty = await complete(sim, "gpt-4.1-mini", extra_headers={"x-sim-fault": "empty"})
    length = await complete(sim, "gpt-4.1-mini", extra_headers={"x-sim-fault": "length"})
    refusal = await complete(sim, "gpt-4.1-mini", extra_headers={"x-sim-fault": "refusal"})

    assert empty.choices[0].message.content in ("", None) and empty.usage.completion_tokens == 0
    assert length.choices[0].finish_reason == "length"
    assert length.usage.completion_tokens == full.usage.completion_tokens // 2
    assert full.choices[0].message.content.startswith(length.choices[0].message.content)
    assert refusal.choices[0].message.content == REFUSAL


async def test_bad_json_fault_breaks_requested_json(sim: Sim) -> None:
    response = await complete(
        sim, "gpt-5-mini", extra_headers={"x-sim-fault": "bad_json"}, response_format={"type": "json_object"}
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.choices[0].message.content)

    tools = [
        {"type": "function", "function": {"name": "final_result", "parameters": Verdict.model_json_schema()}}
    ]
    body = {
        "model": "gpt-5-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": tools,
        "tool_choice": "required",
    }
    reply = await (await sim.chat(body, {"x-sim-fault": "bad_json"})).json()
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])


async def test_directive_in_the_prompt_injects_a_fault(sim: Sim) -> None:
    with pytest.raises(litellm.ServiceUnavailableError):
        await complete(sim, "gpt-5-mini", "Is this spam? [[sim:fault=status:503]]")


async def test_an_invalid_fault_header_is_a_400_that_says_why(sim: Sim) -> None:
    with pytest.raises(litellm.BadRequestError, match="Invalid simulator fault"):
        await complete(sim, "gpt-5-mini", extra_headers={"x-sim-fault": "explode"})


async def test_rule_count_limits_how_many_requests_fail(sim: Sim) -> None:
    # LiteLLM sends the name after "openai/": the rule matches the real model name.
    rule = await sim.add_fault(model="groq/openai/gpt-oss-20b", fault="status", status=500, count=2)

    for _ in range(2):
        with pytest.raises(litellm.InternalServerError):
            await complete(sim, "groq/openai/gpt-oss-20b")
    assert (await complete(sim, "groq/openai/gpt-oss-20b")).choices[0].message.content
    assert (await complete(sim, "gpt-5-mini")).choices[0].message.content

    (listed,) = await sim.faults()
    assert listed["id"] == rule["id"] and listed["applied"] == 2 and listed["remaining"] == 0
    stats = await sim.stats()
    assert stats["models"]["groq/openai/gpt-oss-20b"]["faulted"] == 2
    assert stats["models"]["gpt-5-mini"]["faulted"] == 0


async def test_rules_match_patterns_and_honour_probability(sim: Sim) -> None:
    await sim.add_fault(model="*", fault="refusal", probability=0)
    await sim.add_fault(model="claude-*", fault="empty")

    assert (await complete(sim, "gpt-5-mini")).choices[0].message.content != REFUSAL
    assert not (await complete(sim, "claude-haiku-4-5")).choices[0].message.content
    assert [r["applied"] for r in await sim.faults()] == [0, 1]


async def test_admin_api_validates_deletes_and_resets(sim: Sim) -> None:
    bad = [{"model": "*", "fault": "empty"}, {"model": "*", "fault": "status", "status": 200}]
    async with sim.http.post(f"{sim.root}/_sim/faults", json=bad) as reply:
        assert reply.status == 400
        assert "status" in (await reply.json())["error"]["message"]
    assert await sim.faults() == []

    first = await sim.add_fault(fault="empty")
    await sim.add_fault(fault="refusal")
    async with sim.http.delete(f"{sim.root}/_sim/faults/{first['id']}") as reply:
        assert reply.status == 200
    assert [r["fault"] for r in await sim.faults()] == ["refusal"]

    await complete(sim, "gpt-5-mini")
    async with sim.http.post(f"{sim.root}/_sim/reset") as reply:
        assert reply.status == 200
    assert await sim.faults() == []
    assert (await sim.stats())["models"] == {}


# --- stats, cancellation, connections, process -------------------------------------------------


async def test_stats_count_requests_completions_faults_and_tokens(sim: Sim) -> None:
    ok = await complete(sim, "gpt-4.1-mini")
    with pytest.raises(litellm.InternalServerError):
        await complete(sim, "gpt-4.1-mini", extra_headers={"x-sim-fault": "status:500"})

    stats = await sim.stats()
    assert stats["models"]["gpt-4.1-mini"] == {
        "requests": 2,
        "completed": 2,
        "faulted": 1,
        "cancelled": 0,
        "prompt_tokens": ok.usage.prompt_tokens,
        "completion_tokens": ok.usage.completion_tokens,
    }
    assert stats["totals"]["requests"] == 2 and stats["in_flight"] == 0


async def test_a_cancelled_litellm_call_is_seen_as_cancelled(sim: Sim) -> None:
    call = asyncio.create_task(complete(sim, "o3", extra_headers={"x-sim-fault": "delay:10000"}))

    async def in_flight() -> bool:
        return bool((await sim.stats())["in_flight"] == 1)

    await wait_for(in_flight)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    async def cancelled() -> bool:
        stats = await sim.stats()
        return bool(stats["models"]["o3"]["cancelled"] == 1 and stats["in_flight"] == 0)

    await wait_for(cancelled)
    assert (await sim.stats())["models"]["o3"]["completed"] == 0


async def test_connect_delay_applies_to_the_first_request_of_each_connection(start_sim: StartSim) -> None:
    sim = await start_sim(connect_delay_ms=300)
    body = {"model": "gpt-5-nano", "messages": [{"role": "user", "content": "hi"}]}

    async def timed(session: aiohttp.ClientSession) -> float:
        started = time.perf_counter()
        async with session.post(f"{sim.base_url}/chat/completions", json=body) as reply:
            await reply.read()
        return time.perf_counter() - started

    async with aiohttp.ClientSession() as session:
        first, second = await timed(session), await timed(session)
    async with aiohttp.ClientSession() as session:
        fresh = await timed(session)

    assert first >= 0.3 and fresh >= 0.3
    assert second < 0.15
    assert (await sim.stats())["connections"] == 2


async def test_health_models_and_simulated_header(sim: Sim) -> None:
    async with sim.http.get(f"{sim.root}/health") as reply:
        assert reply.status == 200 and reply.headers["x-llmroute-simulated"] == "1"
    async with sim.http.get(f"{sim.base_url}/models") as reply:
        ids = [m["id"] for m in (await reply.json())["data"]]
        assert {"gpt-5-mini", "claude-haiku-4-5", "groq/openai/gpt-oss-20b", "o3"} <= set(ids)
    reply = await sim.chat({"model": "gpt-5-mini", "messages": "not a list"})
    assert reply.status == 400 and reply.headers["x-llmroute-simulated"] == "1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_python_m_simulator_serves_logs_no_secrets_and_stops_on_sigterm() -> None:
    port = _free_port()
    env = {**os.environ, "SIMULATOR_PORT": str(port), "SIMULATOR_LATENCY_SCALE": "0", "PYTHONPATH": str(REPO)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator", cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as reply:
                        return reply.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(healthy, timeout=15)
            secret_prompt = {
                "model": "gpt-5-mini",
                "messages": [{"role": "user", "content": "password hunter2zebra"}],
            }
            headers = {"Authorization": "Bearer sk-secret-key-42"}
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            async with http.post(url, json=secret_prompt, headers=headers) as reply:
                assert reply.status == 200
        process.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(process.communicate(), timeout=15))[0].decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    (logged,) = [line for line in lines if line["event"] == "sim_request"]
    assert logged["model"] == "gpt-5-mini" and logged["completion_tokens"] > 0 and "latency_ms" in logged
    assert "hunter2zebra" not in output and "sk-secret" not in output
    assert lines[-1]["event"] == "simulator_stopped"


async def test_fault_injection_is_off_unless_on_loopback_or_turned_on(start_sim: StartSim) -> None:
    """A simulator others can reach cannot be told to fail every model for everyone."""
    exposed = await start_sim(host="0.0.0.0")
    ruled = await exposed.http.post(
        f"{exposed.base_url.removesuffix('/v1')}/_sim/faults", json=[{"fault": "status"}]
    )
    assert ruled.status == 403 and "SIMULATOR_FAULTS" in (await ruled.json())["error"]["message"]
    body = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi [[sim:fault=status:500]]"}]}
    reply = await exposed.chat(body, headers={"x-sim-fault": "status:503"})
    assert reply.status == 200  # the header and the directive are ignored: an ordinary answer
    on = await start_sim(host="0.0.0.0", faults="on")
    assert (await on.chat(body)).status == 500
    local = await start_sim()  # 127.0.0.1: the dev stack and the tests
    assert (await local.chat(body)).status == 500
