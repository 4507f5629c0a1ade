"""The `slow_stream` fault: a provider that trickles its stream, one chunk at a time, far apart."""

from __future__ import annotations

import json
import time

import pytest

from simulator.faults import FaultError, parse_spec
from tests.simulator.conftest import Sim

BODY = {
    "model": "gpt-5-mini",
    "messages": [{"role": "user", "content": "Write a haiku about routers"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}


def test_the_value_is_the_interval_between_chunks() -> None:
    assert parse_spec("slow_stream:150").chunk_interval_ms == 150
    assert parse_spec("slow_stream").chunk_interval_ms == 200
    with pytest.raises(FaultError):
        parse_spec("slow_stream:-1")


async def test_a_slow_stream_sends_every_chunk_apart_and_ends_normally(sim: Sim) -> None:
    normal = await sim.chat(BODY)
    started = time.perf_counter()
    slow = await sim.chat(BODY, headers={"x-sim-fault": "slow_stream:30"})
    took = time.perf_counter() - started
    lines = [line for line in (await slow.text()).splitlines() if line.startswith("data: ")]
    # As many chunks as without the fault (the same answer), and a normal end: finish reason, usage, [DONE].
    assert len(lines) == len(
        [line for line in (await normal.text()).splitlines() if line.startswith("data: ")]
    )
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2][len("data: ") :])["usage"]
    content_chunks = len(lines) - 4  # the role chunk, the finish chunk, the usage chunk, [DONE]
    assert usage["completion_tokens"] >= content_chunks > 3
    assert took >= 0.03 * content_chunks
    stats = await sim.stats()
    assert stats["totals"]["faulted"] == 1 and stats["totals"]["completed"] == 2


async def test_a_non_streaming_request_is_answered_normally(sim: Sim) -> None:
    reply = await sim.chat({**BODY, "stream": False}, headers={"x-sim-fault": "slow_stream:1000"})
    assert reply.status == 200
    assert (await reply.json())["choices"][0]["message"]["content"]
