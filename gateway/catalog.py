"""GET /v1/models: the routing policy's tiers and models, with their prices per million tokens.

Read from the same sources the router prices with: the policy file, LiteLLM's bundled price map (the
JSON file in the installed wheel, read without importing LiteLLM) and the router's price overrides
file when it has one (`GATEWAY_PRICE_OVERRIDES_PATH`, set to `ROUTER_PRICE_OVERRIDES_PATH`'s file).
The policy and the overrides are re-read when their files change, so the list follows a reloaded
policy. A price map the router refreshes from a URL (`ROUTER_PRICE_REFRESH_FROM`) is not seen here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

import structlog
import yaml

from gateway.chat import TIER_PREFIX
from service_kit.policy import TIER_NAMES, Policy, PolicyError, load_policy

log = structlog.get_logger()
PER_MILLION = 1_000_000


def _bundled_price_map() -> tuple[dict[str, dict[str, Any]], str]:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}, "none"
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("price_map_unreadable", path=str(path))
        return {}, "none"
    return entries, f"litellm-{importlib.metadata.version('litellm')}"


def _mtime(path: Path | None) -> float | None:
    try:
        return path.stat().st_mtime if path is not None else None
    except OSError:
        return None


class Catalog:
    """The models list, rebuilt when the policy or the overrides file changes."""

    def __init__(self, policy_path: Path, overrides_path: Path | None = None) -> None:
        self._policy_path = policy_path
        self._overrides_path = overrides_path
        self._prices, self._version = _bundled_price_map()
        self._stamp: tuple[float | None, float | None] | None = None
        self._listing: dict[str, Any] = {"object": "list", "data": []}

    def listing(self) -> dict[str, Any]:
        stamp = (_mtime(self._policy_path), _mtime(self._overrides_path))
        if stamp != self._stamp:
            try:
                policy = load_policy(self._policy_path)
            except PolicyError as error:
                # As the router does with a bad file: the previous list stays.
                log.error("policy_invalid", error=str(error))
            else:
                self._listing = self._build(policy)
                self._stamp = stamp
        return self._listing

    def model(self, model_id: str) -> dict[str, Any] | None:
        return next((m for m in self.listing()["data"] if m["id"] == model_id), None)

    def _overrides(self) -> dict[str, dict[str, Any]]:
        if self._overrides_path is None:
            return {}
        try:
            loaded = yaml.safe_load(self._overrides_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            log.error("price_overrides_unreadable", error=str(error))
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def _price(self, model: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The model's prices as the router looks them up (the full name, else without its provider
        prefix), overrides on top."""
        entry = self._prices.get(model)
        if entry is None and "/" in model:
            entry = self._prices.get(model.split("/", 1)[1])
        entry = {**(entry or {}), **overrides.get(model, {})}
        known = (
            entry.get("input_cost_per_token") is not None and entry.get("output_cost_per_token") is not None
        )

        def per_million(key: str) -> float | None:
            value = entry.get(key)
            return round(float(value) * PER_MILLION, 6) if isinstance(value, int | float) else None

        return {
            "price_known": known,
            "input_usd_per_million_tokens": per_million("input_cost_per_token"),
            "output_usd_per_million_tokens": per_million("output_cost_per_token"),
            "cached_input_usd_per_million_tokens": per_million("cache_read_input_token_cost"),
            "max_input_tokens": entry.get("max_input_tokens"),
            "provider": entry.get("litellm_provider") or (model.split("/", 1)[0] if "/" in model else ""),
        }

    def _build(self, policy: Policy) -> dict[str, Any]:
        overrides = self._overrides()
        version = self._version + ("+overrides" if overrides else "")
        tiers_of: dict[str, list[str]] = {}
        for tier in TIER_NAMES:
            for spec in policy.tiers[tier]:
                tiers_of.setdefault(spec.model, []).append(tier)
        data: list[dict[str, Any]] = [
            {
                "id": TIER_PREFIX + "auto",
                "object": "model",
                "created": 0,
                "owned_by": "llmroute",
                "llmroute": {
                    "kind": "auto",
                    "tiers": list(TIER_NAMES),
                    "baseline_model": policy.baseline_model,
                    "policy_version": policy.version_id,
                },
            }
        ]
        for tier in TIER_NAMES:
            data.append(
                {
                    "id": TIER_PREFIX + tier,
                    "object": "model",
                    "created": 0,
                    "owned_by": "llmroute",
                    "llmroute": {"kind": "tier", "models": [spec.model for spec in policy.tiers[tier]]},
                }
            )
        for model, tiers in tiers_of.items():
            price = self._price(model, overrides)
            data.append(
                {
                    "id": model,
                    "object": "model",
                    "created": 0,
                    "owned_by": price["provider"] or "unknown",
                    "llmroute": {"kind": "model", "tiers": tiers, **price, "price_map_version": version},
                }
            )
        return {"object": "list", "data": data}
