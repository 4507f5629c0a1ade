"""Shared test set-up: no real provider calls, ever; in-process servers on 127.0.0.1 port 0."""

from __future__ import annotations

import os

# A guard against real provider calls: no key reaches the code under test, so the router's "auto"
# mode sends every call to the simulator, and pydantic-ai refuses model requests it was not allowed.
from service_kit.providers import PROVIDER_KEYS

for _key in PROVIDER_KEYS.values():
    os.environ.pop(_key, None)

from collections.abc import AsyncIterator  # noqa: E402

import pydantic_ai.models  # noqa: E402
import pytest  # noqa: E402

from tests.doubles import RecordingSink  # noqa: E402

pydantic_ai.models.ALLOW_MODEL_REQUESTS = False


@pytest.fixture
def recording_sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def simulator_url() -> AsyncIterator[str]:
    """The bundled LLM simulator, in process, with no latency: its OpenAI-compatible base URL."""
    from simulator.server import start_simulator
    from simulator.settings import SimulatorSettings

    runner, port = await start_simulator(SimulatorSettings(host="127.0.0.1", port=0, latency_scale=0.0))
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The random order's seed (pytest-randomly), also under -q: the same order again with it."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.getoption("randomly_reorganize", True):
        terminalreporter.write_line(
            f"random order seed {seed}: `make test SEED={seed}` (or pytest --randomly-seed={seed})"
            " runs this order again; -p no:randomly runs the files' own order"
        )
