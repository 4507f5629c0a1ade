"""Where the router's CPU goes, in one process against the simulator: a bare `litellm.acompletion`
loop, then `Router.route()` called directly (no gRPC) with its parts swapped one at a time.

    bare litellm           what the router's provider call costs on its own
    route()                the router's work and the provider call, as served (learned classifier,
                           durable spool), minus the gRPC server
    route(), canned call   the same with the provider call replaced by a finished response:
                           the router's own work alone
      ... no spool         usage records dropped instead of written to the SQLite spool
      ... heuristic        keyword rules instead of the learned classifier

CPU milliseconds per request of this process (getrusage), at concurrency 32. Run:
`python -m benchmarks.router_parts` (part of `make bench`).
"""

from __future__ import annotations

import asyncio
import os
import resource
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.router_bench import PROMPTS, _load, bare_call, bench_stack

CONCURRENCY, TOTAL = 32, int(os.environ.get("BENCH_PARTS_N", 1500))


class _DroppedRecords:
    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def submit(self, records: Sequence[Any]) -> None:
        pass

    def accepting(self) -> bool:
        return True


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _cpu_ms_per_request(one: Callable[[], Awaitable[None]]) -> float:
    before = _cpu_seconds()
    await _load(one, CONCURRENCY, TOTAL)
    return (_cpu_seconds() - before) * 1000 / (TOTAL + min(20, TOTAL))


async def _run(simulator_url: str, state: Path) -> None:
    from difficulty import HeuristicStrategy
    from ledger_client import LedgerReporter
    from llmroute.common.v1 import common_pb2
    from router_svc.classification import Classification
    from router_svc.cooldown import Cooldowns
    from router_svc.providers import Providers
    from router_svc.request import RouteInput
    from router_svc.router import Router
    from router_svc.settings import RouterSettings
    from service_kit.logging import configure_logging
    from service_kit.policy_source import PolicySource
    from service_kit.pricing import PriceSource

    settings = RouterSettings(
        simulator="always", simulator_url=simulator_url, classifier_mode="local", budgets_enabled=False
    )
    configure_logging("router_parts", "WARNING", True, False)
    prompts = iter(PROMPTS * 100)
    canned = await bare_call(simulator_url, "hi")

    async def canned_call(**kwargs: Any) -> Any:
        kwargs["logger_fn"]({})  # as LiteLLM does just before it sends the request
        await asyncio.sleep(0)  # a provider call yields to the loop at least once
        return canned

    async def router(*, canned_provider: bool, spool: bool, learned: bool) -> Callable[[], Awaitable[None]]:
        classification = Classification.from_settings(settings) if learned else None
        if classification is None:
            classification = Classification(local=HeuristicStrategy(), remote=None)
        await classification.warm_up()
        sink = (
            LedgerReporter("127.0.0.1:1", state / f"spool-{uuid.uuid4().hex}.db")
            if spool
            else _DroppedRecords()
        )
        routing = Router(
            settings=settings,
            policy=PolicySource(settings.policy_path).current,
            prices=PriceSource(None, None, 3600).current,
            providers=Providers(settings.simulator, simulator_url),
            classifier=classification,
            usage_sink=sink,
            cooldowns=Cooldowns(settings.cooldown_after_failures, settings.cooldown_seconds),
            acompletion=canned_call if canned_provider else None,
        )

        async def one() -> None:
            message = common_pb2.ChatMessage(role="user", content=next(prompts))
            await routing.route(
                RouteInput(messages=(message,), request_id=uuid.uuid4().hex, caller="b"), None
            )

        return one

    async def bare() -> None:
        await bare_call(simulator_url, next(prompts))

    loads = {
        "bare litellm": bare,
        "route()": await router(canned_provider=False, spool=True, learned=True),
        "route(), canned call": await router(canned_provider=True, spool=True, learned=True),
        "  ... no spool": await router(canned_provider=True, spool=False, learned=True),
        "  ... heuristic": await router(canned_provider=True, spool=False, learned=False),
    }
    # As the services log (their INFO lines aside). Configured once everything is loaded: wordllama
    # calls logging.basicConfig(level=INFO) when imported.
    configure_logging("router_parts", "WARNING", True, False)
    print(f"\nRouter CPU per request, one process, concurrency {CONCURRENCY} (ms; two rounds)")
    results: dict[str, list[float]] = {name: [] for name in loads}
    for _ in range(2):
        for name, one in loads.items():
            results[name].append(await _cpu_ms_per_request(one))
    for name, values in results.items():
        print(f"  {name:<22} {'  '.join(f'{v:5.2f}' for v in values)}")


def main() -> None:
    with bench_stack() as stack:
        stack.start(services=("simulator",))
        asyncio.run(_run(f"http://127.0.0.1:{stack.ports.simulator}/v1", stack.state_dir))


if __name__ == "__main__":
    main()
