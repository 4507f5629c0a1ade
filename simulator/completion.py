"""Turn a chat-completions request into the simulated reply: text, tool call or JSON, and its tokens.

Everything here is pure and deterministic given the request (and the fault, if any), so the HTTP layer
only has to time and serialize it.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

from simulator import tokens
from simulator.analysis import Analysis, analyze
from simulator.faults import FaultSpec
from simulator.profiles import REASONING_BUDGET, ModelProfile
from simulator.schema import generate

REFUSAL = "I'm sorry, but I can't help with that."
# pydantic-ai names the tools that carry an agent's structured output "final_result" (or
# "final_result_<Type>" for unions); calling one ends the agent run.
_OUTPUT_TOOL_PREFIX = "final_result"

_SENTENCES = (
    "This is a simulated answer about {topic}, produced without calling a real model.",
    "A production model would look at the details of {topic} before drawing a conclusion.",
    "The first step is to state the goal clearly and list the constraints that matter.",
    "Next, break the problem into smaller parts and handle each part on its own.",
    "It helps to check the assumptions against a concrete example before going further.",
    "Edge cases deserve attention, since they are where most mistakes hide.",
    "A simple approach is usually the right place to start, and it can be refined later.",
    "Trade-offs between cost, speed and quality depend on how the result will be used.",
    "In summary, {topic} can be handled with a careful, step-by-step approach.",
    "Measuring the outcome makes it possible to tell whether a change actually helped.",
    "Clear names and short functions make the result easier to read and maintain.",
    "When in doubt, prefer the option that is easiest to undo.",
)
_CODE = (
    "Here is a simulated implementation for {topic}:\n\n"
    "```python\n"
    "def solve(items: list[str]) -> list[str]:\n"
    '    """Simulated solution: keep the first occurrence of each item, in order."""\n'
    "    seen: set[str] = set()\n"
    "    result: list[str] = []\n"
    "    for item in items:\n"
    "        if item not in seen:\n"
    "            seen.add(item)\n"
    "            result.append(item)\n"
    "    return result\n"
    "```\n\n"
)
# Token targets for the visible answer by kind: (minimum, spread), picked with the prompt's seed.
_LENGTHS = {"label": (1, 0), "short": (25, 50), "long": (160, 240), "code": (40, 80)}
_SENTIMENT_WORDS = {
    "positive": re.compile(r"\b(love|great|excellent|good|happy|amazing|best|thanks?)\b", re.I),
    "negative": re.compile(r"\b(hate|terrible|awful|bad|broken|worst|angry|refund|disappoint\w*)\b", re.I),
}
_OPTIONS = re.compile(
    r"(?:one of|options?(?: are)?|choose from|categories|labels?)\s*[:\-]?\s*([^\n?]+)", re.IGNORECASE
)
_OPTION_SPLIT = re.compile(r"\s*(?:,|\||/|\bor\b)\s*")
_GENERIC_LABELS = ("general", "support", "billing", "technical", "other")


@dataclass(slots=True)
class Reply:
    """The assistant turn and its usage, before it is put on the wire."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    prompt_tokens: int
    # Visible completion tokens; usage.completion_tokens adds reasoning_tokens.
    completion_tokens: int
    reasoning_tokens: int
    refusal: str | None = None

    @property
    def usage(self) -> dict[str, Any]:
        completion = self.completion_tokens + self.reasoning_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": self.refusal}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return tokens.message_text(message)
    return ""


def build_reply(body: dict[str, Any], profile: ModelProfile, fault: FaultSpec | None, call_id: str) -> Reply:
    messages: list[dict[str, Any]] = body["messages"]
    encoding = profile.encoding
    text = last_user_text(messages)
    analysis = analyze(text, profile.model)
    kind = fault.fault if fault else None

    budget = body.get("max_completion_tokens") or body.get("max_tokens")
    reasoning = _reasoning_tokens(profile, body.get("reasoning_effort"), analysis, budget)
    visible_budget = None if budget is None else max(budget - reasoning, 0)

    reply = Reply(
        content=None,
        tool_calls=None,
        finish_reason="stop",
        prompt_tokens=tokens.count_prompt(messages, encoding, body.get("tools")),
        completion_tokens=0,
        reasoning_tokens=reasoning,
    )
    tool = _chosen_tool(body, text)
    schema = _response_schema(body.get("response_format"))
    wants_json = tool is not None or schema is not None

    if kind == "refusal":
        reply.content = REFUSAL
        if schema is not None:
            # Structured outputs report a refusal in its own field, as OpenAI does.
            reply.refusal = REFUSAL
    elif kind == "empty":
        reply.content = ""
    elif tool is not None:
        arguments = json.dumps(generate(tool.get("parameters") or {}, analysis))
        if kind == "bad_json":
            arguments = _break_json(arguments)
        arguments, used, cut = _fit(
            arguments, encoding, _length_budget(kind, arguments, encoding, visible_budget)
        )
        reply.tool_calls = [
            {"id": call_id, "type": "function", "function": {"name": tool["name"], "arguments": arguments}}
        ]
        reply.completion_tokens = used + tokens.count_text(tool["name"], encoding)
        reply.finish_reason = "length" if cut else "tool_calls"
        return reply
    elif wants_json:
        value = generate(schema, analysis) if schema else _json_object(profile.model, analysis)
        reply.content = json.dumps(value)
    else:
        reply.content = f"[simulated {profile.model}] {_text(text, analysis, encoding)}"

    if kind == "bad_json":
        reply.content = _break_json(reply.content or "{}")
    content, used, cut = _fit(
        reply.content or "", encoding, _length_budget(kind, reply.content or "", encoding, visible_budget)
    )
    reply.content = content
    reply.completion_tokens = used
    if cut:
        reply.finish_reason = "length"
    return reply


def token_pieces(text: str, encoding_name: str) -> list[str]:
    """`text` split at token boundaries, for streaming one delta per token as real providers do."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    encoder = tokens.encoding(encoding_name)
    pieces = []
    for chunk in encoder.decode_tokens_bytes(encoder.encode_ordinary(text)):
        # A multi-byte character can span tokens; hold bytes back until they decode.
        piece = decoder.decode(chunk)
        if piece:
            pieces.append(piece)
    return pieces


def _reasoning_tokens(profile: ModelProfile, requested: Any, analysis: Analysis, budget: int | None) -> int:
    effort = profile.reasoning_effort(requested if isinstance(requested, str) else None)
    if effort is None:
        return 0
    # Harder prompts think longer; the same prompt always thinks the same amount.
    count = round(REASONING_BUDGET[effort] * (0.5 + analysis.score)) + analysis.seed % 17
    if budget is not None:
        # max_completion_tokens covers reasoning too; leave half for the answer so it is not always empty.
        count = min(count, budget // 2)
    return max(count, 1)


def _length_budget(kind: str | None, text: str, encoding: str, budget: int | None) -> int | None:
    if kind != "length":
        return budget
    # The `length` fault: stop at half the answer (at least one token), as if max_tokens were hit.
    half = max(tokens.count_text(text, encoding) // 2, 1)
    return half if budget is None else min(half, budget)


def _fit(text: str, encoding_name: str, budget: int | None) -> tuple[str, int, bool]:
    """Cut `text` to `budget` tokens; returns (text, its token count, whether it was cut)."""
    encoder = tokens.encoding(encoding_name)
    ids = encoder.encode_ordinary(text)
    if budget is None or len(ids) <= budget:
        return text, len(ids), False
    cut = encoder.decode(ids[:budget])
    # Re-count: a decoded prefix can re-encode differently at its last token, and usage must match it.
    return cut, tokens.count_text(cut, encoding_name), True


def _chosen_tool(body: dict[str, Any], user_text: str) -> dict[str, Any] | None:
    """The function the model calls, or None to answer in text (OpenAI tool_choice semantics)."""
    functions: list[dict[str, Any]] = [
        t["function"] for t in body.get("tools") or () if t.get("type") == "function" and "function" in t
    ]
    if not functions:
        return None
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") == "allowed_tools":
            allowed = choice.get("allowed_tools") or {}
            names = {t.get("function", {}).get("name") for t in allowed.get("tools") or ()}
            functions = [f for f in functions if f.get("name") in names] or functions
            choice = allowed.get("mode", "auto")
        else:
            name = (choice.get("function") or {}).get("name")
            return next((f for f in functions if f.get("name") == name), None)
    if choice == "none":
        return None
    mentioned = [f for f in functions if _mentions(user_text, f.get("name", ""))]
    if choice == "required":
        output = [f for f in functions if f.get("name", "").startswith(_OUTPUT_TOOL_PREFIX)]
        return (output or mentioned or functions)[0]
    # "auto": call a tool only when the user asks for what it does, and not when answering a tool result.
    last_role = (body.get("messages") or [{}])[-1].get("role")
    return mentioned[0] if mentioned and last_role != "tool" else None


def _mentions(text: str, tool_name: str) -> bool:
    words = [
        w for w in re.split(r"[_\W]+", tool_name.lower()) if len(w) >= 4 and w not in ("final", "result")
    ]
    lower = text.lower()
    return bool(words) and all(word in lower for word in words)


def _response_schema(response_format: Any) -> dict[str, Any] | None:
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
    if response_format.get("type") == "json_object":
        return {}
    return None


def _json_object(model: str, analysis: Analysis) -> dict[str, Any]:
    return {
        "simulated": True,
        "model": model,
        "category": analysis.category,
        "answer": f"A simulated answer about {analysis.topic}.",
    }


def _break_json(text: str) -> str:
    # Cut before the end and leave a dangling key: any JSON parser rejects it.
    return text[: max(len(text) - 1, 1)].rstrip("}") + ', "simulated'


def _text(prompt: str, analysis: Analysis, encoding: str) -> str:
    if analysis.kind == "label":
        return _label(prompt, analysis)
    low, spread = _LENGTHS[analysis.kind]
    target = low + (analysis.seed % spread if spread else 0)
    parts: list[str] = [_CODE.format(topic=analysis.topic)] if analysis.kind == "code" else []
    used = 0
    start = analysis.seed % len(_SENTENCES)
    index = 0
    while used < target:
        sentence = _SENTENCES[(start + index) % len(_SENTENCES)].format(topic=analysis.topic)
        parts.append(sentence if not parts or parts[-1].endswith("\n") else " " + sentence)
        used += tokens.count_text(parts[-1], encoding)
        index += 1
    return "".join(parts)


def _label(prompt: str, analysis: Analysis) -> str:
    lower = prompt.lower()
    if "yes or no" in lower:
        return ("yes", "no")[analysis.seed % 2]
    if "true or false" in lower:
        return ("true", "false")[analysis.seed % 2]
    if "sentiment" in lower:
        hits = {label: len(pattern.findall(prompt)) for label, pattern in _SENTIMENT_WORDS.items()}
        best = max(hits, key=hits.__getitem__)
        return best if hits[best] else "neutral"
    match = _OPTIONS.search(prompt)
    if match:
        options = [o.strip(" .:'\"`*") for o in _OPTION_SPLIT.split(match.group(1))]
        options = [o for o in options if o and len(o) <= 40]
        if len(options) >= 2:
            return options[analysis.seed % len(options)]
    return _GENERIC_LABELS[analysis.seed % len(_GENERIC_LABELS)]
