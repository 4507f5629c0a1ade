"""The router's answer as OpenAI returns it: a `chat.completion`, or `chat.completion.chunk` events for a
stream, with the routing decision in `llmroute` fields and `x-llmroute-*` headers."""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.chat import SOURCE_NAMES, ChatRequest
from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from service_kit.policy import NAME_BY_TIER


def summary(reply: router_pb2.RouteResponse, chat: ChatRequest) -> dict[str, Any]:
    """The `llmroute` field: how the request was routed and what it cost."""
    usage = reply.usage
    info: dict[str, Any] = {
        "request_id": reply.request_id,
        "run_id": reply.run_id,
        "tier": NAME_BY_TIER.get(reply.tier, ""),
        "score": round(reply.decision.score, 4),
        "category": common_pb2.Category.Name(reply.decision.category).removeprefix("CATEGORY_").lower(),
        "classifier_source": SOURCE_NAMES.get(reply.decision.source, ""),
        "cost_usd": usage.cost_usd,
        "baseline_cost_usd": usage.baseline_cost_usd,
        "savings_usd": usage.baseline_cost_usd - usage.cost_usd,
        "replayed": reply.replayed,
        "simulated": reply.simulated,
        "attempts": [
            {
                "model": a.model,
                "tier": NAME_BY_TIER.get(a.tier, ""),
                "outcome": common_pb2.AttemptOutcome.Name(a.outcome).removeprefix("ATTEMPT_OUTCOME_").lower(),
                "cost_usd": a.usage.cost_usd,
            }
            for a in reply.attempts
        ],
        "warnings": list(reply.warnings),
        "price_map_version": reply.price_map_version,
    }
    if chat.ignored:
        info["ignored_params"] = chat.ignored
    return info


def headers(reply: router_pb2.RouteResponse) -> dict[str, str]:
    """`x-llmroute-*` response headers (and `x-request-id`, which the OpenAI SDKs expose)."""
    return {
        "x-llmroute-request-id": reply.request_id,
        "x-llmroute-run-id": reply.run_id,
        "x-llmroute-model": reply.model,
        "x-llmroute-tier": NAME_BY_TIER.get(reply.tier, ""),
        "x-llmroute-score": f"{reply.decision.score:.4f}",
        "x-llmroute-cost-usd": f"{reply.usage.cost_usd:.10f}",
        "x-llmroute-baseline-cost-usd": f"{reply.usage.baseline_cost_usd:.10f}",
        "x-llmroute-replayed": "true" if reply.replayed else "false",
        "x-request-id": reply.request_id,
    }


def usage(reply: router_pb2.RouteResponse) -> dict[str, Any]:
    u = reply.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def completion_id(reply: router_pb2.RouteResponse) -> str:
    # The request id: a replayed answer keeps the id it was first given.
    return f"chatcmpl-{reply.request_id}"


def completion(reply: router_pb2.RouteResponse, chat: ChatRequest) -> dict[str, Any]:
    """A `chat.completion` object for a Route answer."""
    return {
        "id": completion_id(reply),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content, "refusal": None},
                "finish_reason": reply.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": usage(reply),
        "system_fingerprint": None,
        "llmroute": summary(reply, chat),
    }


class ChunkWriter:
    """`chat.completion.chunk` server-sent events for one RouteStream."""

    def __init__(self, chat: ChatRequest, stream_id: str) -> None:
        self._chat = chat
        # Every chunk of a stream carries the same id: the Idempotency-Key when there is one (the
        # router's request id, known to the client), else one drawn by the gateway for the stream.
        self._id = f"chatcmpl-{stream_id}"
        self._created = int(time.time())
        self._first = True

    def _event(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    def delta(self, text: str) -> bytes:
        delta: dict[str, Any] = {"content": text}
        if self._first:
            delta["role"] = "assistant"
            self._first = False
        # The answering model is known once the stream ends: until then, the model asked for.
        return self._event(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))

    def finish(self, reply: router_pb2.RouteResponse) -> bytes:
        """The last chunks: finish reason and llmroute's summary, then (when asked for with
        `stream_options.include_usage`, as OpenAI does) the usage chunk, then `[DONE]`."""
        out = b""
        if self._first:  # an empty answer still opens with the assistant's role
            out += self.delta("")
        last = self._chunk(
            [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason or "stop"}], model=reply.model
        )
        last["llmroute"] = summary(reply, self._chat)
        out += self._event(last)
        if self._chat.include_usage:
            out += self._event({**self._chunk([], model=reply.model), "usage": usage(reply)})
        return out + b"data: [DONE]\n\n"

    def error(self, body: dict[str, Any]) -> bytes:
        """An error after the stream started: OpenAI's SDKs raise APIError on it."""
        return self._event(body)

    def _chunk(self, choices: list[dict[str, Any]], model: str | None = None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": model or self._chat.requested_model,
            "choices": choices,
        }
