"""POST /v1/chat/completions: OpenAI's chat format, with simulated latency, streaming and faults."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from json.encoder import encode_basestring_ascii
from typing import Any

import structlog
from aiohttp import web

from simulator import faults, quality
from simulator.completion import Reply, build_reply, last_user_text, token_pieces
from simulator.faults import FaultError, FaultSpec
from simulator.profiles import ModelProfile, profile_for
from simulator.state import STATE, SimulatorState

log = structlog.get_logger()

FINGERPRINT = "llmroute-simulator"
# nginx's status for "the client closed the connection before the answer": what the log says then.
CLIENT_CLOSED = 499
# OpenAI's error `type` and `code` by status, so SDKs and LiteLLM map them to their usual exceptions.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Simulated bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Simulated: incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Simulated: access denied."),
    404: ("invalid_request_error", "model_not_found", "Simulated: the model does not exist."),
    408: ("timeout", None, "Simulated: request timed out."),
    429: ("requests", "rate_limit_exceeded", "Simulated: rate limit reached for requests."),
    500: ("server_error", None, "Simulated: the server had an error while processing your request."),
    502: ("server_error", None, "Simulated: bad gateway."),
    503: ("server_error", "overloaded", "Simulated: the engine is currently overloaded."),
    504: ("timeout", None, "Simulated: the upstream model did not answer in time."),
}


class _Cut(Exception):
    """The `cut_stream` fault closed the connection on purpose; not a client cancellation."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response)
        self.response = response


def error_response(
    status: int, message: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    kind, code, default = _ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Simulated error.")
    )
    body = {"error": {"message": message or default, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    settings = state.settings
    if state.is_new_connection(request) and settings.connect_delay_ms:
        await asyncio.sleep(settings.connect_delay_ms / 1000)
    started = time.perf_counter()
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "We could not parse the JSON body of your request.")
    problem = _invalid(body)
    if problem:
        return error_response(400, problem)
    model: str = body["model"]
    try:
        fault = _fault_for(request, body, state)
    except FaultError as exc:
        return error_response(400, f"Invalid simulator fault: {exc}")

    state.stats.started(model, faulted=fault is not None)
    try:
        response, status, reply = await _answer(request, body, state, fault)
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client disconnects (handler_cancellation=True).
        _finish(state, model, started, "cancelled", fault, None, CLIENT_CLOSED)
        raise
    except ConnectionResetError:
        # A streaming write found the client gone.
        _finish(state, model, started, "cancelled", fault, None, CLIENT_CLOSED)
        return web.Response(status=CLIENT_CLOSED)
    except _Cut as cut:
        _finish(state, model, started, "completed", fault, None, 200)
        return cut.response
    _finish(state, model, started, "completed", fault, reply, status)
    return response


def _finish(
    state: SimulatorState,
    model: str,
    started: float,
    outcome: str,
    fault: FaultSpec | None,
    reply: Reply | None,
    status: int,
) -> None:
    if outcome == "cancelled":
        state.stats.cancelled(model)
    else:
        prompt = reply.prompt_tokens if reply else 0
        completion = reply.usage["completion_tokens"] if reply else 0
        state.stats.completed(model, prompt, completion)
    # Never the prompt, the answer or headers: prompts and keys stay out of logs.
    log.info(
        "sim_request",
        model=model,
        outcome=outcome,
        status=status,
        fault=fault.fault if fault else None,
        prompt_tokens=reply.prompt_tokens if reply else None,
        completion_tokens=reply.usage["completion_tokens"] if reply else None,
        latency_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def _invalid(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "'messages' must be a non-empty array of message objects."
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"Invalid '{key}': integer below minimum value 1."
    return None


def _fault_for(request: web.Request, body: dict[str, Any], state: SimulatorState) -> FaultSpec | None:
    if not state.settings.faults_enabled:
        if state.settings.weak_model_failures and not body.get("tools"):
            return quality.silent_failure(body["model"], last_user_text(body["messages"]))
        return None
    header = request.headers.get(faults.HEADER)
    if header:
        return faults.parse_spec(header)
    directive = faults.directive_in(last_user_text(body["messages"]))
    if directive:
        return faults.parse_spec(directive)
    rule = state.rules.pick(body["model"])
    if rule is None and state.settings.weak_model_failures and not body.get("tools"):
        return quality.silent_failure(body["model"], last_user_text(body["messages"]))
    return rule


async def _answer(
    request: web.Request, body: dict[str, Any], state: SimulatorState, fault: FaultSpec | None
) -> tuple[web.StreamResponse, int, Reply | None]:
    stream = bool(body.get("stream"))
    kind = fault.fault if fault else None
    if fault and kind == "status":
        headers = {}
        if fault.status in (429, 503):
            headers["retry-after"] = f"{fault.retry_after:g}"
        return error_response(fault.status, fault.message, headers), fault.status, None
    if fault and kind == "timeout":
        # Hang as a stuck provider would; the client's timeout (or a cancel) ends it first.
        await _sleep(
            min(fault.hang_seconds or state.settings.max_hang_seconds, state.settings.max_hang_seconds)
        )
        return error_response(504), 504, None
    if fault and kind == "malformed":
        text = "data: {this is not json\n\n" if stream else "<html>simulated malformed response {"
        content_type = "text/event-stream" if stream else "application/json"
        return web.Response(status=200, text=text, content_type=content_type), 200, None
    if fault and kind == "delay":
        await _sleep(fault.delay_ms / 1000)

    profile = profile_for(body["model"])
    call_id = f"call_sim{uuid.uuid4().hex[:20]}"
    reply = build_reply(body, profile, fault, call_id)
    completion = _Completion(body, profile, reply, state.settings.latency_scale)
    if stream:
        slow = fault.chunk_interval_ms / 1000 if fault and kind == "slow_stream" else None
        return await completion.stream(request, fault if kind == "cut_stream" else None, slow), 200, reply
    await _sleep(completion.total_seconds())
    payload = completion.body()
    if kind == "cut_stream":
        raise _Cut(await _cut_body(request, payload))
    return web.Response(body=payload, content_type="application/json"), 200, reply


class _Completion:
    """One reply on the wire: a chat.completion body, or chat.completion.chunk events."""

    def __init__(
        self, body: dict[str, Any], profile: ModelProfile, reply: Reply, latency_scale: float
    ) -> None:
        self.model = body["model"]
        self.profile = profile
        self.reply = reply
        self.scale = latency_scale
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        self.id = f"chatcmpl-sim{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        head = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }
        # Every chunk: `data: {<head>,"choices":[<choice>]<usage>}`.
        self._prefix = b"data: " + _dumps(head)[:-1] + b',"choices":['
        # OpenAI sends "usage": null on every chunk but the last when usage was asked for.
        self._usage_null = b',"usage":null' if self.include_usage else b""

    def first_token_seconds(self) -> float:
        # Hidden reasoning is generated before the first visible token.
        latency = self.profile.latency
        return self.scale * (latency.ttft_ms / 1000 + self.reply.reasoning_tokens / latency.tokens_per_second)

    def total_seconds(self) -> float:
        rate = self.profile.latency.tokens_per_second
        return self.first_token_seconds() + self.scale * self.reply.completion_tokens / rate

    def body(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": self.reply.message(),
                        "logprobs": None,
                        "finish_reason": self.reply.finish_reason,
                    }
                ],
                "usage": self.reply.usage,
                "service_tier": "default",
            }
        ).encode()

    def events(self) -> list[bytes]:
        """The chunks after the first (role) chunk, one per token, as OpenAI streams them."""
        reply = self.reply
        encoding = self.profile.encoding
        if reply.tool_calls:
            call = reply.tool_calls[0]
            head = {
                "index": 0,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            first = self._event(_dumps({"tool_calls": [head]}))
            pieces = token_pieces(call["function"]["arguments"], encoding)
            return [first] + [
                self._event(b'{"tool_calls":[{"index":0,"function":{"arguments":%s}}]}' % _string(p))
                for p in pieces
            ]
        return [
            self._event(b'{"content":%s}' % _string(p)) for p in token_pieces(reply.content or "", encoding)
        ]

    def first_event(self) -> bytes:
        return self._event(b'{"role":"assistant","content":"","refusal":null}')

    def final_events(self) -> bytes:
        out = self._event(b"{}", _dumps(self.reply.finish_reason))
        if self.include_usage:
            out += b"%s]%s}\n\n" % (self._prefix, b',"usage":' + _dumps(self.reply.usage))
        return out + b"data: [DONE]\n\n"

    def _event(self, delta: bytes, finish_reason: bytes = b"null") -> bytes:
        # Chunks differ only in their delta, so they are spliced from bytes rather than each
        # serialized whole: a long stream has hundreds of them, and json.dumps was most of its cost.
        return b'%s{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]%s}\n\n' % (
            self._prefix,
            delta,
            finish_reason,
            self._usage_null,
        )

    async def stream(
        self, request: web.Request, cut: FaultSpec | None, slow: float | None = None
    ) -> web.StreamResponse:
        """`cut`: the cut_stream fault; `slow`: seconds between chunks (the slow_stream fault)."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await _sleep(self.first_token_seconds())
        events = self.events()
        if cut is not None:
            await response.write(self.first_event() + b"".join(events[: cut.after_chunks]))
            raise _Cut(_close(request, response))
        per_token = self.scale / self.profile.latency.tokens_per_second
        if slow is not None:
            # A provider that trickles: every chunk on its own, `slow` seconds apart.
            await response.write(self.first_event())
            for event in events:
                await asyncio.sleep(slow)
                await response.write(event)
            await response.write(self.final_events())
        elif per_token == 0:
            # No pacing: one write is much cheaper than hundreds, and the client still sees every event.
            await response.write(self.first_event() + b"".join(events) + self.final_events())
        else:
            await self._paced(response, events, per_token)
        await response.write_eof()
        return response

    async def _paced(self, response: web.StreamResponse, events: list[bytes], per_token: float) -> None:
        # Sleeping per token would cost more than the token takes for fast models; write in batches of
        # at least ~15 ms, against a fixed schedule so rounding does not accumulate.
        batch = max(1, round(0.015 / per_token))
        loop = asyncio.get_running_loop()
        start = loop.time()
        await response.write(self.first_event())
        for index in range(0, len(events), batch):
            await asyncio.sleep(max(0.0, start + (index + batch) * per_token - loop.time()))
            await response.write(b"".join(events[index : index + batch]))
        await response.write(self.final_events())


async def _sleep(seconds: float) -> None:
    # With latency_scale 0, skip even the event-loop round trip that sleep(0) costs.
    if seconds > 0:
        await asyncio.sleep(seconds)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _string(text: str) -> bytes:
    # The C encoder json.dumps uses for a str, without its per-call set-up.
    return encode_basestring_ascii(text).encode()


async def _cut_body(request: web.Request, payload: bytes) -> web.StreamResponse:
    # Promise the whole body, send half, then hang up: the client sees an incomplete read.
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(payload)
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    return _close(request, response)


def _close(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    # close() flushes what was written, then sends FIN; aiohttp's final write_eof then finds the
    # connection closed and gives up quietly.
    if request.transport is not None:
        request.transport.close()
    return response
