"""`python -m gateway` as a container runs it: SIGTERM lets the request in flight finish, then exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx

from devstack.stack import ROOT, free_port
from tests.gateway.conftest import Harness, answer
from tests.waiting import eventually


async def test_sigterm_drains_the_request_in_flight_then_exits_0(harness: Harness) -> None:
    async def slow(request: object) -> object:
        await asyncio.sleep(1.0)
        return answer()

    harness.upstream.route = slow
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        cwd=ROOT,
        env={
            **os.environ,
            "GATEWAY_PORT": str(port),
            "GATEWAY_ROUTER_ADDRESS": harness.upstream_address,
            "GATEWAY_GRACE_SECONDS": "10",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            async def answering() -> bool:
                try:
                    await http.get("/healthz")
                except httpx.TransportError:
                    return False
                return True

            await eventually(answering, "the gateway answering", interval=0.1)
            body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
            in_flight = asyncio.create_task(http.post("/v1/chat/completions", json=body))
            await asyncio.wait_for(harness.upstream.called.wait(), timeout=10)
            process.send_signal(signal.SIGTERM)
            reply = await in_flight
        assert reply.status_code == 200 and reply.json()["model"] == "gpt-5-nano"
        output, _ = await asyncio.wait_for(process.communicate(), timeout=10)
        assert process.returncode == 0
        assert b'"gateway_stopped"' in output
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
