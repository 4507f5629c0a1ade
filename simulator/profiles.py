"""Per-model behaviour chosen from the model name: latency, tokenizer, whether it reasons."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# What GET /v1/models lists: the models of config/policy.yaml plus a few common neighbours. Any other
# name is still answered (with the default profile), so a new model needs no change here.
KNOWN_MODELS: tuple[str, ...] = (
    "gpt-5-nano",
    "gpt-5-mini",
    "gpt-5",
    "gpt-5.1",
    "gpt-4.1-nano",
    "gpt-4.1-mini",
    "gpt-4.1",
    "gpt-4o-mini",
    "gpt-4o",
    "o3",
    "o3-mini",
    "o4-mini",
    "claude-haiku-4-5",
    "claude-sonnet-4-5",
    "claude-opus-4-5",
    "groq/openai/gpt-oss-20b",
    "groq/openai/gpt-oss-120b",
    "groq/llama-3.1-8b-instant",
)


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """How long a model takes: time to first token, then a steady output rate."""

    name: str
    ttft_ms: float
    tokens_per_second: float


# First matching pattern wins, so "o3-mini" is fast (mini) before it is slow (o3). Numbers are rough
# medians of public provider dashboards; what matters for routing experiments is their ordering.
_LATENCY_RULES: tuple[tuple[re.Pattern[str], LatencyProfile], ...] = (
    (re.compile(r"^groq/|cerebras"), LatencyProfile("groq", ttft_ms=150, tokens_per_second=500)),
    (re.compile(r"nano|mini|haiku|flash|instant|8b|20b"), LatencyProfile("fast", 300, 150)),
    (re.compile(r"opus|(^|/)o\d"), LatencyProfile("slow", 1500, 40)),
    (re.compile(r"sonnet|gpt-5|gpt-4|gpt-oss|llama|mistral|gemini"), LatencyProfile("medium", 600, 80)),
)
_DEFAULT_LATENCY = LatencyProfile("medium", 600, 80)

# Models that always think before answering (OpenAI o-series, gpt-5 and gpt-oss default to some effort).
_ALWAYS_REASONS = re.compile(r"(^|/)o[134](-|$)|(^|/)gpt-5(-|$)|gpt-oss")
# Models that think only when asked through `reasoning_effort` (gpt-5.1 defaults to "none"; Claude's
# extended thinking is opt-in).
_REASONS_ON_REQUEST = re.compile(r"gpt-5\.|claude-(opus|sonnet)|opus|sonnet")

# Hidden reasoning tokens per effort before the prompt's difficulty scales them.
REASONING_BUDGET: dict[str, int] = {"minimal": 24, "low": 96, "medium": 384, "high": 1280}

# tiktoken encodings: o200k for OpenAI's current families, cl100k for everything else (the usual
# stand-in for Claude, Llama..., and what LiteLLM uses as its default tokenizer).
_O200K = re.compile(r"gpt-4o|gpt-4\.1|gpt-5|(^|/)o[134](-|$)|gpt-oss|chatgpt")


@dataclass(frozen=True, slots=True)
class ModelProfile:
    model: str
    latency: LatencyProfile
    encoding: str
    always_reasons: bool
    reasons_on_request: bool

    def reasoning_effort(self, requested: str | None) -> str | None:
        """The effort this request reasons with, or None when the model does not reason."""
        if requested == "none":
            return None
        if requested in REASONING_BUDGET and (self.always_reasons or self.reasons_on_request):
            return requested
        return "medium" if self.always_reasons else None


@lru_cache(maxsize=1024)
def profile_for(model: str) -> ModelProfile:
    name = model.lower()
    latency = next((p for pattern, p in _LATENCY_RULES if pattern.search(name)), _DEFAULT_LATENCY)
    return ModelProfile(
        model=model,
        latency=latency,
        encoding="o200k_base" if _O200K.search(name) else "cl100k_base",
        always_reasons=bool(_ALWAYS_REASONS.search(name)),
        reasons_on_request=bool(_REASONS_ON_REQUEST.search(name)),
    )
