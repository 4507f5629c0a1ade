"""A service freezes its start-up heap once serving (service_kit.server.freeze_heap), unless its
settings say not to (`<PREFIX>_GC_FREEZE=false`). What it saves is measured by
`python -m benchmarks.overhead_bench` (docs/reliability.md), not here."""

from __future__ import annotations

import gc
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from service_kit import server
from service_kit.settings import ServiceSettings


class _Settings(ServiceSettings):
    port: int = 0


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_freeze_heap_moves_the_live_objects_out_of_the_collectors_reach(unfrozen: None) -> None:
    before = len(gc.get_objects())
    server.freeze_heap()
    assert gc.get_freeze_count() >= before // 2
    assert len(gc.get_objects()) < before // 2


@pytest.mark.parametrize("freeze", [True, False])
def test_a_service_freezes_once_it_has_started_unless_told_not_to(
    freeze: bool, unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []

    async def create_server(settings: Any) -> Any:
        events.append("started")
        return object()

    async def serve_forever(running: Any, grace: float, stopping: Any = None) -> None:
        events.append("serving")

    monkeypatch.setattr(server, "serve_forever", serve_forever)
    monkeypatch.setattr(server, "freeze_heap", lambda: events.append("frozen"))
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    monkeypatch.setattr(server, "configure_logging", lambda *args: None)
    server.run_service("test", _Settings(gc_freeze=freeze, log_json=False), create_server)
    assert events == (["started", "frozen", "serving"] if freeze else ["started", "serving"])
