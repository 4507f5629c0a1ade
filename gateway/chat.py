"""OpenAI chat completions ↔ the router's Route / RouteStream messages, both ways.

Translation only: the request's fields become a RouteRequest (the model name a tier or a forced
model), the RouteResponse becomes a `chat.completion` (or `chat.completion.chunk`s). Every routing
decision is the router's; what the gateway cannot express in a RouteRequest it refuses (400) when it
would change the answer's shape (tools, n > 1, logprobs, audio), and otherwise ignores and reports
in `llmroute.ignored_params`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import invalid_request
from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from service_kit.policy import TIER_BY_NAME

# `model` values that let the router classify the prompt and pick the tier.
AUTO_MODELS = frozenset({"auto", "llmroute/auto"})
TIER_PREFIX = "llmroute/"
SOURCE_NAMES = {
    common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL: "local",
    common_pb2.CLASSIFIER_SOURCE_LLM: "llm",
    common_pb2.CLASSIFIER_SOURCE_CACHE: "cache",
    common_pb2.CLASSIFIER_SOURCE_OVERRIDE: "override",
    common_pb2.CLASSIFIER_SOURCE_DEFAULT: "default",
}
# OpenAI roles → the router's; "developer" is what newer OpenAI models call the system prompt.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# Parameters handled below (anything else is ignored and reported).
_HANDLED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "response_format",
        "user",
        "stream",
        "stream_options",
        "n",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "logprobs",
        "top_logprobs",
        "modalities",
        "audio",
        "llmroute",
    }
)


@dataclass(slots=True)
class ChatRequest:
    """A chat completion request, translated."""

    route: router_pb2.RouteRequest
    stream: bool
    include_usage: bool
    requested_model: str
    # Router field → the parameter it came from, where the names differ.
    params: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def param_for(self, name: str) -> str:
        return self.params.get(name, name)

    def stream_request(self) -> router_pb2.RouteStreamRequest:
        r = self.route
        return router_pb2.RouteStreamRequest(
            messages=r.messages, request_id=r.request_id, caller=r.caller, options=r.options
        )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse(body: Any, idempotency_key: str | None, aliases: Mapping[str, str] | None = None) -> ChatRequest:
    """Validate the shape of an OpenAI chat completion request and build its RouteRequest. Values the
    router checks itself (ranges, empty messages, caller format) are passed on, and its field
    violations come back under the request's own parameter names."""
    if not isinstance(body, dict):
        raise invalid_request(None, "the request body must be a JSON object")
    params = {
        "options.force_model": "model",
        "options.force_tier": "model",
        "caller": "user",
        "request_id": "Idempotency-Key",
        "options.json_schema": "response_format.json_schema.schema",
        "options.max_cost_usd": "llmroute.max_cost_usd",
        "options.buffered_stream": "llmroute.buffered_stream",
    }
    route = router_pb2.RouteRequest()
    options = route.options  # a reference: what is set on it is set on the request

    requested = body.get("model")
    if not isinstance(requested, str) or not requested:
        raise invalid_request("model", "is required: llmroute/auto, a tier (llmroute/simple ...) or a model")
    model = aliases.get(requested, requested) if aliases else requested
    if model not in AUTO_MODELS:
        if model.startswith(TIER_PREFIX):
            tier = TIER_BY_NAME.get(model.removeprefix(TIER_PREFIX))
            if tier is None:
                raise invalid_request(
                    "model",
                    f"unknown llmroute model {model[:80]!r}; expected llmroute/auto or one of "
                    + ", ".join(TIER_PREFIX + name for name in TIER_BY_NAME),
                    code="model_not_found",
                )
            options.force_tier = tier
        else:
            options.force_model = model

    messages = body.get("messages")
    if not isinstance(messages, list):
        raise invalid_request("messages", "must be a list of messages")
    for i, message in enumerate(messages):
        route.messages.append(_message(message, i))

    tokens_param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(tokens_param)
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise invalid_request(tokens_param, "must be an integer number of tokens")
        if not -(2**31) <= max_tokens < 2**31:
            raise invalid_request(tokens_param, "is out of range")
        options.max_output_tokens = max_tokens
        params["options.max_output_tokens"] = tokens_param
    temperature = body.get("temperature")
    if temperature is not None:
        if not _number(temperature):
            raise invalid_request("temperature", "must be a number between 0 and 2")
        options.temperature = float(temperature)
        params["options.temperature"] = "temperature"
    _response_format(body.get("response_format"), options)

    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise invalid_request("user", "must be a string")
        route.caller = user
    if idempotency_key is not None:
        route.request_id = idempotency_key

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid_request("stream", "must be a boolean")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise invalid_request("stream_options", "must be an object")
        include_usage = stream_options.get("include_usage") is True

    _refuse_unsupported(body)
    _extension(body.get("llmroute"), options)
    ignored = sorted(key for key in body if key not in _HANDLED)
    return ChatRequest(
        route=route,
        stream=bool(stream),
        include_usage=include_usage,
        requested_model=requested,
        params=params,
        ignored=ignored,
    )


def _message(message: Any, i: int) -> common_pb2.ChatMessage:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise invalid_request(where, "must be an object with a role and content")
    role = message.get("role")
    if not isinstance(role, str):
        raise invalid_request(f"{where}.role", "must be a string")
    if message.get("tool_calls") or message.get("function_call"):
        raise invalid_request(
            f"{where}.tool_calls", "tool calling is not supported by llmroute", code="unsupported_parameter"
        )
    content = message.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise invalid_request(
                    f"{where}.content[{j}]",
                    "only text content parts are supported",
                    code="unsupported_value",
                )
            parts.append(part["text"])
        text = "\n".join(parts)
    else:
        raise invalid_request(f"{where}.content", "must be a string or a list of text parts")
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid_request(f"{where}.name", "must be a string")
    # An unknown role goes through as it is: the router's field violation names it.
    return common_pb2.ChatMessage(role=ROLES.get(role, role), content=text, name=name or "")


def _response_format(value: Any, options: router_pb2.RouteOptions) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        options.json_output = True
        return
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise invalid_request("response_format.json_schema.schema", "must be a JSON Schema object")
        options.json_output = True
        options.json_schema = json.dumps(schema)
        return
    raise invalid_request("response_format", "type must be text, json_object or json_schema")


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Parameters whose answer the router cannot give: refused rather than silently dropped."""
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid_request("n", "only one choice (n=1) is supported", code="unsupported_value")
    for name in ("tools", "functions"):
        if body.get(name):
            raise invalid_request(
                name, "tool calling is not supported by llmroute", code="unsupported_parameter"
            )
    if body.get("logprobs"):
        raise invalid_request("logprobs", "log probabilities are not supported", code="unsupported_parameter")
    modalities = body.get("modalities")
    if body.get("audio") or (isinstance(modalities, list) and "audio" in modalities):
        raise invalid_request("audio", "audio output is not supported", code="unsupported_parameter")


def _extension(value: Any, options: router_pb2.RouteOptions) -> None:
    """`llmroute`: the router's options OpenAI has no parameter for (an SDK sends it in `extra_body`)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid_request("llmroute", "must be an object")
    max_cost = value.get("max_cost_usd")
    if max_cost is not None:
        if not _number(max_cost) or not math.isfinite(max_cost):
            raise invalid_request("llmroute.max_cost_usd", "must be a number of US dollars")
        options.max_cost_usd = float(max_cost)
    buffered = value.get("buffered_stream")
    if buffered is not None:
        if not isinstance(buffered, bool):
            raise invalid_request("llmroute.buffered_stream", "must be a boolean")
        options.buffered_stream = buffered
    unknown = sorted(set(value) - {"max_cost_usd", "buffered_stream"})
    if unknown:
        raise invalid_request(
            f"llmroute.{unknown[0]}", "unknown option; expected max_cost_usd, buffered_stream"
        )


# ---- responses ------------------------------------------------------------------------------------
