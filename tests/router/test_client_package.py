"""llmroute-client installs on its own (`clients/python`): a wheel with the client and the stubs it
needs, none of the services, into a fresh virtualenv, which then routes a prompt through a real router."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.router.conftest import RouterHarness

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


async def run(*command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, out.decode()[-2000:]
    return out.decode()


async def test_the_client_installs_alone_and_routes(router: RouterHarness, tmp_path: Path) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert uv, "uv is installed in the project's virtualenv by make install"
    await run(
        uv,
        "build",
        "-q",
        "--wheel",
        "-o",
        str(tmp_path / "dist"),
        str(ROOT / "clients" / "python"),
        cwd=tmp_path,
    )
    [wheel] = (tmp_path / "dist").glob("llmroute_client-*.whl")
    venv = tmp_path / "venv"
    await run(uv, "venv", "-q", "-p", sys.executable, str(venv), cwd=tmp_path)
    python = str(venv / "bin" / "python")
    await run(uv, "pip", "install", "-q", "--python", python, str(wheel), cwd=tmp_path)
    script = (
        "import importlib.util, llmroute_client\n"
        "assert importlib.util.find_spec('router_svc') is None  # no service came with it\n"
        "reply = llmroute_client.route(\"Is this spam? 'free cruise'\", caller='packaged')\n"
        "print('ANSWER', reply.model, bool(reply.content))\n"
    )
    env = {"PATH": os.environ["PATH"], "LLMROUTE_ADDRESS": f"127.0.0.1:{router.server.port}"}
    out = await run(python, "-c", script, cwd=tmp_path, env=env)
    assert "ANSWER" in out and out.strip().endswith("True")
