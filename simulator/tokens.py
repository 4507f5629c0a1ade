"""Token counting with real tiktoken encodings, loaded offline from the files LiteLLM bundles."""

from __future__ import annotations

import importlib.util
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import tiktoken

# OpenAI's accounting for chat messages (the openai-cookbook "How to count tokens" recipe): every message
# costs a few framing tokens, and the reply is primed with three more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# Every encoding a model profile can name.
ENCODINGS = ("o200k_base", "cl100k_base")
# A low-detail image part; the simulator does not look at pixels.
TOKENS_PER_IMAGE = 85


def _bundled_tiktoken_dir() -> Path | None:
    """LiteLLM ships the tiktoken BPE files; find them without importing litellm (a 5 s import)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return folder if folder.is_dir() else None


@cache
def encoding(name: str) -> tiktoken.Encoding:
    """A cached encoder. tiktoken would otherwise download its BPE file, and there is no network."""
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        bundled = _bundled_tiktoken_dir()
        if bundled is not None:
            # The same setting LiteLLM makes when imported; tiktoken reads it at load time only.
            os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)
    return tiktoken.get_encoding(name)


def count_text(text: str, encoding_name: str) -> int:
    # encode_ordinary: user text that contains "<|endoftext|>" is counted as text, not refused.
    return len(encoding(encoding_name).encode_ordinary(text)) if text else 0


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message's content, whether a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def count_prompt(
    messages: list[dict[str, Any]], encoding_name: str, tools: list[dict[str, Any]] | None = None
) -> int:
    """prompt_tokens as OpenAI bills them for chat messages (plus tool definitions, approximately)."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += count_text(str(message.get("role", "")), encoding_name)
        total += count_text(message_text(message), encoding_name)
        content = message.get("content")
        if isinstance(content, list):
            total += TOKENS_PER_IMAGE * sum(
                1 for part in content if isinstance(part, dict) and part.get("type") == "image_url"
            )
        if message.get("name"):
            total += TOKENS_PER_NAME + count_text(str(message["name"]), encoding_name)
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += count_text(f"{function.get('name', '')}{function.get('arguments', '')}", encoding_name)
    if tools:
        # OpenAI renders tool definitions into a hidden system message; their JSON is a fair estimate.
        total += count_text(json.dumps(tools, separators=(",", ":")), encoding_name)
    return total
