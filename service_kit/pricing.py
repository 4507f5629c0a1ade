"""Prices per token from LiteLLM's bundled price map, with local overrides: the router's prices and the
LLM classifier's.

LITELLM_LOCAL_MODEL_COST_MAP=True is set before litellm is imported (service_kit/litellm_offline.py),
so the map is the one shipped in the installed wheel: no network at start. A model without a price is
reported as unpriced, never silently costed at $0.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class ModelPrice:
    input_per_token: float
    output_per_token: float
    cached_input_per_token: float
    reasoning_per_token: float
    max_input_tokens: int | None
    provider: str
    supports_json: bool
    supports_tools: bool
    supports_vision: bool


@dataclass(frozen=True, slots=True)
class Cost:
    usd: float
    known: bool


class PriceBook:
    """Immutable view of prices; `version` identifies the map plus overrides in ledger records."""

    def __init__(self, entries: dict[str, dict[str, Any]], version: str) -> None:
        self._entries = entries
        self.version = version
        self._cache: dict[str, ModelPrice | None] = {}

    @classmethod
    def from_litellm(
        cls,
        overrides_path: Path | None = None,
        base: dict[str, dict[str, Any]] | None = None,
        base_version: str = "",
    ) -> PriceBook:
        """LiteLLM's bundled map (or `base`, a map in the same format), then the local overrides."""
        if base is None:
            from service_kit.litellm_offline import litellm  # seconds to import: only when prices are read

            base = litellm.model_cost
        entries: dict[str, dict[str, Any]] = dict(base)
        overrides: dict[str, dict[str, Any]] = {}
        if overrides_path is not None:
            overrides = yaml.safe_load(Path(overrides_path).read_text()) or {}
            for model, fields in overrides.items():
                entries[model] = {**entries.get(model, {}), **fields}
        digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
        version = (base_version or f"litellm-{_litellm_version()}") + (
            f"+overrides-{digest}" if overrides else ""
        )
        return cls(entries, version)

    def lists(self, model: str) -> bool:
        """Whether the map has an entry under exactly this name (`price` also tries it without its
        provider prefix)."""
        return model in self._entries

    def price(self, model: str) -> ModelPrice | None:
        if model not in self._cache:
            if len(self._cache) >= 10_000:  # forced model names come from callers: stay bounded
                self._cache.clear()
            self._cache[model] = self._lookup(model)
        return self._cache[model]

    def _lookup(self, model: str) -> ModelPrice | None:
        entry = self._entries.get(model)
        if entry is None and "/" in model:
            entry = self._entries.get(model.split("/", 1)[1])
        if (
            not entry
            or entry.get("input_cost_per_token") is None
            or entry.get("output_cost_per_token") is None
        ):
            return None
        try:
            input_price = float(entry["input_cost_per_token"])
            output_price = float(entry["output_cost_per_token"])
        except (TypeError, ValueError):
            log.warning("price_malformed", model=model)
            return None
        return ModelPrice(
            input_per_token=input_price,
            output_per_token=output_price,
            cached_input_per_token=float(entry.get("cache_read_input_token_cost") or input_price),
            reasoning_per_token=float(entry.get("output_cost_per_reasoning_token") or output_price),
            max_input_tokens=entry.get("max_input_tokens"),
            provider=str(entry.get("litellm_provider", "")),
            supports_json=bool(entry.get("supports_response_schema")),
            supports_tools=bool(entry.get("supports_function_calling")),
            supports_vision=bool(entry.get("supports_vision")),
        )

    def cost(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> Cost:
        """Dollars for the tokens. Reasoning tokens are part of output_tokens, priced as the map says."""
        price = self.price(model)
        if price is None:
            return Cost(0.0, known=False)
        cached = min(cached_input_tokens, input_tokens)
        reasoning = min(reasoning_tokens, output_tokens)
        usd = (
            (input_tokens - cached) * price.input_per_token
            + cached * price.cached_input_per_token
            + (output_tokens - reasoning) * price.output_per_token
            + reasoning * price.reasoning_per_token
        )
        return Cost(usd, known=True)


def _litellm_version() -> str:
    from importlib.metadata import version

    return version("litellm")


class PriceSource:
    """The live price book: the bundled map at start, refreshed from a file or URL on a schedule.

    A refresh that fails (unreachable, not JSON, no usable prices) is logged and the current book stays.
    """

    def __init__(self, overrides_path: Path | None, refresh_from: str | None, refresh_seconds: float) -> None:
        self._overrides = overrides_path
        self._refresh_from = refresh_from
        self._refresh_seconds = refresh_seconds
        self._book = PriceBook.from_litellm(overrides_path)

    def current(self) -> PriceBook:
        return self._book

    async def refresh(self) -> bool:
        if not self._refresh_from:
            return False
        try:
            raw = await asyncio.to_thread(_read, self._refresh_from)
            data = json.loads(raw)
            if not isinstance(data, dict) or not any(
                isinstance(v, dict) and isinstance(v.get("input_cost_per_token"), int | float)
                for v in data.values()
            ):
                raise ValueError("no model with a numeric input_cost_per_token")
            version = "refreshed-" + hashlib.sha256(raw).hexdigest()[:8]
            book = PriceBook.from_litellm(self._overrides, base=data, base_version=version)
        except (OSError, ValueError, yaml.YAMLError) as error:
            log.warning("price_refresh_failed", source=self._refresh_from, error_type=type(error).__name__)
            return False
        self._book = book
        log.info("prices_refreshed", source=self._refresh_from, version=self._book.version, models=len(data))
        return True

    async def run(self) -> None:
        while self._refresh_from:
            await self.refresh()
            await asyncio.sleep(self._refresh_seconds)


def _read(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=30) as reply:
            return bytes(reply.read())
    return Path(source).read_bytes()
