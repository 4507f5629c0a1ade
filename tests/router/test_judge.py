"""The optional LLM judge: its verdicts, its failures, and what the router does with them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2, router_pb2_grpc
from router_svc.judge import Judge
from router_svc.providers import Providers
from router_svc.server import create_server as create_router
from service_kit.pricing import PriceBook
from tests.doubles import RecordingSink
from tests.router.conftest import RouterHarness, router_settings

JUDGE = "gpt-4.1-nano"
PRICES = PriceBook.from_litellm()


def _reply(content: str, prompt_tokens: int = 300, completion_tokens: int = 12) -> Any:
    return SimpleNamespace(
        choices=[SimpleNamespace(message=SimpleNamespace(content=content))],
        usage=SimpleNamespace(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
    )


def _judge(acompletion: Any, **overrides: Any) -> Judge:
    values: dict[str, Any] = {
        "model": JUDGE,
        "tiers": frozenset({common_pb2.TIER_SIMPLE}),
        "providers": Providers("always", "http://127.0.0.1:1/v1"),
        "timeout_seconds": 0.5,
        "max_chars": 1000,
        "acompletion": acompletion,
        **overrides,
    }
    return Judge(**values)


CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 2+2?"}]


@pytest.mark.parametrize(("content", "passed"), [('{"verdict": "pass"}', True), ('{"verdict": "fail", "reason": "wrong"}', False), ('```json\n{"verdict": "pass"}\n```', True)])  # fmt: skip
async def test_a_verdict_is_read_and_its_call_priced(content: str, passed: bool) -> None:
    sent: list[dict[str, Any]] = []

    async def acompletion(**kwargs: Any) -> Any:
        sent.append(kwargs)
        return _reply(content)

    grade = await _judge(acompletion).grade(CHAT, "5", PRICES)
    assert grade.passed is passed
    assert grade.cost_usd == pytest.approx(PRICES.cost(JUDGE, 300, 12).usd) and grade.cost_usd > 0
    # The judge sees the whole request (system instructions too) and the answer, and answers in the schema.
    [call] = sent
    exhibit = call["messages"][1]["content"]
    assert (
        "What is 2+2?" in exhibit and "<answer>\n5\n</answer>" in exhibit and "[system]\nbe brief" in exhibit
    )
    assert call["response_format"]["json_schema"]["schema"]["properties"]["verdict"]["enum"] == [
        "pass",
        "fail",
    ]
    assert call["model"] == f"openai/{JUDGE}"  # the simulator serves it here, under its real name


async def test_long_requests_and_answers_are_cut_for_the_judge() -> None:
    seen: list[str] = []

    async def acompletion(**kwargs: Any) -> Any:
        seen.append(kwargs["messages"][1]["content"])
        return _reply('{"verdict": "pass"}')

    chat = [{"role": "user", "content": "early " * 1000 + "LATEST QUESTION"}]
    await _judge(acompletion, max_chars=300).grade(chat, "A" * 5000, PRICES)
    assert "LATEST QUESTION" in seen[0] and "A" * 301 not in seen[0] and len(seen[0]) < 800


async def test_an_unusable_verdict_leaves_the_answer_standing_and_is_still_charged() -> None:
    async def acompletion(**kwargs: Any) -> Any:
        return _reply('{"verdict": "maybe"}')

    grade = await _judge(acompletion).grade(CHAT, "4", PRICES)
    assert grade.passed is None and grade.problem == "unparseable_verdict" and grade.cost_usd > 0


async def test_a_failing_or_slow_judge_gives_no_verdict() -> None:
    async def broken(**kwargs: Any) -> Any:
        raise ConnectionError("down")

    async def slow(**kwargs: Any) -> Any:
        await asyncio.sleep(5)

    failed = await _judge(broken).grade(CHAT, "4", PRICES)
    assert (failed.passed, failed.cost_usd, failed.problem) == (None, 0.0, "ConnectionError")
    timed_out = await _judge(slow, timeout_seconds=0.05).grade(CHAT, "4", PRICES)
    assert timed_out.passed is None and timed_out.problem == "TimeoutError"


async def test_a_judge_without_credentials_is_not_called() -> None:
    async def acompletion(**kwargs: Any) -> Any:
        raise AssertionError("must not be called")

    judge = _judge(acompletion, providers=Providers("never", "http://127.0.0.1:1/v1", environ={}))
    grade = await judge.grade(CHAT, "4", PRICES)
    assert grade.passed is None and grade.problem == "no_credentials"


# ---- the router with a judge, against the simulator over HTTP -----------------------------------


@pytest.fixture
async def judged_router(
    classifier_address: str, simulator_url: str, tmp_path: Path, recording_sink: RecordingSink
) -> AsyncIterator[RouterHarness]:
    settings = router_settings(
        classifier_address, simulator_url, tmp_path, judge_model=JUDGE, judge_tiers=["simple", "moderate"]
    )
    running = await create_router(settings, usage_sink=recording_sink)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield RouterHarness(
            router_pb2_grpc.RouterServiceStub(channel), running, recording_sink, simulator_url, settings
        )
    await running.stop(0)


PROMPTS = [
    f"Is this message spam? Answer yes or no: 'You won prize number {n}, click here.'" for n in range(10)
]


async def test_the_judge_grades_cheap_answers_and_its_fail_escalates(judged_router: RouterHarness) -> None:
    seen = set()
    for prompt in PROMPTS:
        request = router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content=prompt)])
        response = await judged_router.stub.Route(request)
        records = {r.attempt: r for r in judged_router.sink.records if r.request_id == response.request_id}
        for number, attempt in enumerate(response.attempts, start=1):
            judged = attempt.tier in (common_pb2.TIER_SIMPLE, common_pb2.TIER_MODERATE)
            # Every graded answer carries what grading it cost; the ledger gets the same figure.
            assert (attempt.judge_cost_usd > 0) is judged
            assert records[number].judge_cost_usd == attempt.judge_cost_usd
            if attempt.outcome == common_pb2.ATTEMPT_OUTCOME_ESCALATED:
                assert (
                    attempt.error == "judge_rejected" and response.attempts[number].tier == attempt.tier + 1
                )
                seen.add("fail")
            elif judged:
                assert attempt.outcome == common_pb2.ATTEMPT_OUTCOME_OK and number == len(response.attempts)
                seen.add("pass")
        assert response.content and not any(w.startswith("judge_unavailable") for w in response.warnings)
    assert seen == {"pass", "fail"}  # the simulator's verdicts differ by prompt: both paths ran


async def test_a_judge_outage_leaves_answers_standing(judged_router: RouterHarness) -> None:
    await judged_router.fault(model=JUDGE, fault="status", status=500)
    request = router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content=PROMPTS[0])])
    response = await judged_router.stub.Route(request)
    assert [a.outcome for a in response.attempts] == [common_pb2.ATTEMPT_OUTCOME_OK]
    assert response.attempts[0].judge_cost_usd == 0
    assert response.warnings == ["judge_unavailable:InternalServerError"]
