"""The simulator's HTTP app: routes, the admin API (/_sim/*), in-process start and `python -m simulator`."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from service_kit.logging import configure_logging
from simulator import tokens
from simulator.chat import chat_completions, error_response
from simulator.faults import FaultError
from simulator.profiles import KNOWN_MODELS
from simulator.settings import SimulatorSettings
from simulator.state import STATE, SimulatorState

log = structlog.get_logger()

SIMULATED_HEADER = "x-llmroute-simulated"
# Long conversations are legitimate input; OpenAI accepts far more than aiohttp's 1 MiB default.
_MAX_BODY_BYTES = 64 * 1024 * 1024


def create_app(settings: SimulatorSettings) -> web.Application:
    """The aiohttp application. Run it with `handler_cancellation=True` (as `start_simulator` does) so
    a client that disconnects cancels its request, which is what `cancelled` in /_sim/stats counts."""
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[STATE] = SimulatorState(settings=settings)
    app.on_startup.append(_load_tokenizers)
    app.on_response_prepare.append(_mark_simulated)
    app.router.add_post("/v1/chat/completions", chat_completions)
    # Some clients are configured with a base URL without /v1.
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/_sim/stats", _stats)
    app.router.add_post("/_sim/reset", _reset)
    if settings.faults_enabled:
        app.router.add_get("/_sim/faults", _list_faults)
        app.router.add_post("/_sim/faults", _add_faults)
        app.router.add_delete("/_sim/faults", _clear_faults)
        app.router.add_delete("/_sim/faults/{rule_id:\\d+}", _delete_fault)
    else:
        app.router.add_route("*", "/_sim/faults{rest:.*}", _faults_off)
    return app


async def _faults_off(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": "fault injection is off here (SIMULATOR_FAULTS=on enables it)",
                "type": "forbidden",
            }
        },
        status=403,
    )


async def start_simulator(settings: SimulatorSettings) -> tuple[web.AppRunner, int]:
    """Serve in this event loop; returns the runner (await `runner.cleanup()` to stop) and the bound port."""
    runner = web.AppRunner(
        create_app(settings),
        handler_cancellation=True,
        # Our own `sim_request` line replaces the access log (and carries the token counts).
        access_log=None,
        shutdown_timeout=settings.grace_seconds,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


async def serve(settings: SimulatorSettings) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting and give in-flight requests grace_seconds."""
    runner, port = await start_simulator(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info("simulator_started", host=settings.host, port=port, latency_scale=settings.latency_scale)
    await stopping.wait()
    log.info("simulator_stopping", grace_seconds=settings.grace_seconds)
    await runner.cleanup()
    log.info("simulator_stopped")


def main() -> None:
    settings = SimulatorSettings()
    configure_logging("simulator", settings.log_level, settings.log_json, settings.log_library_messages)
    asyncio.run(serve(settings))


async def _load_tokenizers(app: web.Application) -> None:
    # Loading a BPE file takes ~0.3 s; pay it at start-up rather than in the first request's latency.
    for name in tokens.ENCODINGS:
        tokens.encoding(name)


async def _mark_simulated(request: web.Request, response: web.StreamResponse) -> None:
    # Every answer says it is simulated, including errors, so no one mistakes it for a provider's.
    response.headers[SIMULATED_HEADER] = "1"


async def _models(request: web.Request) -> web.Response:
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "llmroute-simulator"}
        for name in KNOWN_MODELS
    ]
    return web.json_response({"object": "list", "data": data})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats.snapshot())


async def _reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.stats.reset()
    state.rules.clear()
    return web.json_response({"status": "reset"})


async def _list_faults(request: web.Request) -> web.Response:
    return web.json_response({"rules": request.app[STATE].rules.snapshot()})


async def _add_faults(request: web.Request) -> web.Response:
    """Body: one rule object, or a list of them. All are validated before any is added."""
    rules = request.app[STATE].rules
    try:
        payload = await request.json()
    except ValueError:
        return error_response(400, "The body must be a JSON rule object or a list of them.")
    items = payload if isinstance(payload, list) else [payload]
    if not all(isinstance(item, dict) for item in items):
        return error_response(400, "The body must be a JSON rule object or a list of them.")
    try:
        # Validate everything first so a bad rule in a list adds none of them.
        for item in items:
            rules.validate(item)
        added = [rules.add(item) for item in items]
    except FaultError as exc:
        return error_response(400, f"Invalid fault rule: {exc}")
    log.info(
        "sim_faults_added", rules=[{"model": r.model, "fault": r.fault, "count": r.count} for r in added]
    )
    return web.json_response({"rules": [rule.model_dump() for rule in added]}, status=201)


async def _clear_faults(request: web.Request) -> web.Response:
    rules = request.app[STATE].rules
    removed = len(rules.snapshot())
    rules.clear()
    return web.json_response({"removed": removed})


async def _delete_fault(request: web.Request) -> web.Response:
    if request.app[STATE].rules.remove(int(request.match_info["rule_id"])):
        return web.json_response({"removed": 1})
    return error_response(404, "No fault rule with that id.")
