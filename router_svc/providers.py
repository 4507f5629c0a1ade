"""Where a model's calls go: the real provider (with its key) or the bundled simulator."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service_kit.litellm_offline import litellm
from service_kit.policy import ModelSpec
from service_kit.providers import any_key, has_key

# Providers that run locally and need no key.
KEYLESS = frozenset({"ollama", "ollama_chat", "hosted_vllm", "lm_studio", "llamafile"})


@dataclass(frozen=True, slots=True)
class Route:
    """How to call one model: litellm keyword arguments, and whether the simulator serves it."""

    provider: str
    kwargs: Mapping[str, Any]
    simulated: bool


def provider_of(model: str) -> str:
    try:
        # litellm serves its functions through a lazy module __getattr__, typed Any.
        provider: str = litellm.get_llm_provider(model)[1]
        return provider
    except Exception:  # litellm raises several types for unknown models; the prefix is the best guess
        return model.split("/", 1)[0] if "/" in model else "unknown"


class Providers:
    """Resolves a model spec to a call route, given the environment's keys and the simulator mode."""

    def __init__(self, mode: str, simulator_url: str, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._simulator_url = simulator_url
        self.simulate_all = mode == "always" or (mode == "auto" and not any_key(self._environ))

    def resolve(self, spec: ModelSpec) -> Route | None:
        """The route for this model, or None when it has no credentials (the router skips it)."""
        provider = provider_of(spec.model)
        if self.simulate_all:
            simulated = {
                "model": f"openai/{spec.model}",
                "api_base": self._simulator_url,
                "api_key": "simulated",
            }
            return Route(provider, simulated, simulated=True)
        kwargs: dict[str, Any] = {"model": spec.model}
        if spec.api_base:
            kwargs["api_base"] = spec.api_base
        if spec.api_key_env:
            key = self._environ.get(spec.api_key_env)
            if not key:
                return None
            kwargs["api_key"] = key
        elif provider not in KEYLESS and not spec.api_base and not has_key(provider, self._environ):
            return None
        return Route(provider, kwargs, simulated=False)
