"""A fake `litellm.acompletion` for unit tests of the route's steps: scripted answers and errors,
LiteLLM's own response types, and the `logger_fn` hook LiteLLM calls when a request goes out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from service_kit.litellm_offline import litellm


@dataclass
class Script:
    """What one call does: raise `error` (after sending, unless `before_send`), or answer `content`
    (streamed in `chunks` pieces, cut by `cut_after` chunks with `error`)."""

    content: str = "fine answer"
    error: Exception | None = None
    before_send: bool = False
    cut_after: int | None = None
    finish_reason: str = "stop"
    prompt_tokens: int = 12
    completion_tokens: int = 7
    delay: float = 0.0


@dataclass
class FakeProvider:
    scripts: list[Script] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    sent: asyncio.Event = field(default_factory=asyncio.Event)  # set once a request has gone out

    def script(self) -> Script:
        return self.scripts.pop(0) if self.scripts else Script()

    async def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        script = self.script()
        if script.error is not None and script.before_send:
            raise script.error
        kwargs["logger_fn"]({})  # the request goes out
        self.sent.set()
        if script.delay:
            await asyncio.sleep(script.delay)
        if kwargs.get("stream"):
            return self._stream(script)
        if script.error is not None:
            raise script.error
        return litellm.ModelResponse(
            model=kwargs["model"],
            choices=[
                {
                    "message": {"role": "assistant", "content": script.content},
                    "finish_reason": script.finish_reason,
                }
            ],
            usage={"prompt_tokens": script.prompt_tokens, "completion_tokens": script.completion_tokens},
        )

    async def _stream(self, script: Script) -> AsyncIterator[Any]:
        words = script.content.split(" ")
        for index, word in enumerate(words):
            if script.cut_after is not None and index == script.cut_after:
                assert script.error is not None
                raise script.error
            yield litellm.ModelResponseStream(choices=[{"delta": {"content": word + " "}, "index": 0}])
            await asyncio.sleep(0)
        if script.error is not None and script.cut_after is None:
            raise script.error
        yield litellm.ModelResponseStream(
            choices=[{"delta": {}, "finish_reason": script.finish_reason, "index": 0}],
            usage={"prompt_tokens": script.prompt_tokens, "completion_tokens": script.completion_tokens},
        )


def rate_limited(retry_after: str | None = None, header: str = "retry-after") -> Exception:
    """A 429; with `retry_after`, the header a provider sends with it (as the OpenAI SDK's error
    carries the response)."""
    if retry_after is None:
        return litellm.RateLimitError("slow down", llm_provider="openai", model="m")
    request = httpx.Request("POST", "http://provider.invalid/v1/chat/completions")
    response = httpx.Response(429, headers={header: retry_after}, request=request)
    return litellm.RateLimitError("slow down", llm_provider="openai", model="m", response=response)


def bad_request() -> Exception:
    return litellm.BadRequestError("no", llm_provider="openai", model="m")


def server_error() -> Exception:
    return litellm.InternalServerError("boom", llm_provider="openai", model="m")


def timed_out() -> Exception:
    return litellm.Timeout("late", llm_provider="openai", model="m")
