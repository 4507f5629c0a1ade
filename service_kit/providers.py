"""Which environment variable holds each provider's API key: one table for the router (LiteLLM
provider names) and the classifier's LLM (pydantic-ai model prefixes), so "is a key set" means the
same in both, and in the router's choice to call the simulator instead."""

from __future__ import annotations

from collections.abc import Mapping

# The providers llmroute knows how to authenticate out of the box (LiteLLM names), and their variable.
PROVIDER_KEYS = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "groq": "GROQ_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}
# pydantic-ai model prefixes that name a LiteLLM provider differently.
_ALIASES = {"openai-chat": "openai", "openai-responses": "openai"}


def key_variable(provider: str) -> str | None:
    """The variable holding `provider`'s key (a LiteLLM provider name or a pydantic-ai prefix)."""
    return PROVIDER_KEYS.get(_ALIASES.get(provider, provider))


def has_key(provider: str, environ: Mapping[str, str]) -> bool:
    variable = key_variable(provider)
    return variable is not None and bool(environ.get(variable))


def any_key(environ: Mapping[str, str]) -> bool:
    """Whether any known provider's key is set (else, by default, the simulator serves every call)."""
    return any(environ.get(variable) for variable in PROVIDER_KEYS.values())
