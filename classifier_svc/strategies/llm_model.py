"""Which LLM classifies: the pydantic-ai model the settings name, whether it can be used (a base URL or
its provider's key), and what its tokens cost in LiteLLM's price map."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from pydantic_ai.models import Model, infer_model, parse_model_id

from classifier_svc.settings import ClassifierSettings
from service_kit.pricing import PriceBook
from service_kit.providers import has_key

__all__ = ["LLM_PROVIDERS", "Price", "build_llm_model", "litellm_price", "llm_configured"]

# The pydantic-ai providers whose clients are installed (pydantic-ai-slim's extras); their keys'
# variables are in service_kit.providers, shared with the router.
LLM_PROVIDERS = frozenset({"anthropic", "openai", "openai-chat", "openai-responses", "groq"})


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per token for one model, from LiteLLM's price map."""

    key: str
    input_usd_per_token: float
    output_usd_per_token: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens * self.input_usd_per_token + output_tokens * self.output_usd_per_token


def litellm_price(model: str) -> Price | None:
    """The price of a pydantic-ai model id ("anthropic:claude-haiku-4-5") in LiteLLM's bundled price map
    (the router's `PriceBook`, read on first use: importing litellm takes seconds), if any."""
    provider, name = parse_model_id(model)
    candidates = [name]
    if provider:
        candidates.insert(0, f"{provider.removesuffix('-chat').removesuffix('-responses')}/{name}")
    book = _price_book()
    for key in candidates:
        price = book.price(key) if book.lists(key) else None
        if price is not None:
            return Price(key, price.input_per_token, price.output_per_token)
    return None


@functools.cache
def _price_book() -> PriceBook:
    return PriceBook.from_litellm()


def llm_configured(settings: ClassifierSettings) -> bool:
    """Whether an LLM classifier can be used: a base URL is set, or the model's provider key is present."""
    if settings.llm_base_url:
        return True
    provider, _ = parse_model_id(settings.llm_model)
    return provider in LLM_PROVIDERS and has_key(provider, os.environ)


def build_llm_model(settings: ClassifierSettings) -> Model:
    """The pydantic-ai model the settings name: an OpenAI-compatible endpoint when a base URL is set."""
    if settings.llm_base_url:
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        _, name = parse_model_id(settings.llm_model)
        if settings.llm_api_key is not None:
            api_key = settings.llm_api_key.get_secret_value()
        else:
            # Local servers (the simulator, vLLM, Ollama) usually take any key; the client wants one.
            api_key = os.environ.get("OPENAI_API_KEY", "unused")
        provider = OpenAIProvider(base_url=settings.llm_base_url, api_key=api_key)
        return OpenAIChatModel(name, provider=provider)
    return infer_model(settings.llm_model)
