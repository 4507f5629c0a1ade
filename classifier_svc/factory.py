"""Builds the configured classification strategy from settings.

    heuristic  keyword rules
    local      the learned model (the heuristic when its artifact is missing)
    llm        the LLM classifier, the local model when it fails
    cascade    the local model, and the LLM classifier when the local model is unsure (if one is configured)

Each is wrapped in the semantic cache when `cache_enabled`. The caller awaits `warm_up()` once before
serving: it loads the model and embeddings and classifies a few fixed prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from classifier_svc.cache import CachedStrategy
from classifier_svc.settings import ClassifierSettings
from difficulty import HeuristicStrategy, Strategy, Verdict, load_local_model
from service_kit.policy import Thresholds

if TYPE_CHECKING:
    from classifier_svc.strategies.llm import LLMStrategy

__all__ = ["LLMNotConfiguredError", "build_local_strategy", "build_strategy"]

log = structlog.get_logger()


class LLMNotConfiguredError(ValueError):
    """strategy=llm, but neither llm_base_url nor the model provider's API key is set."""


def build_strategy(settings: ClassifierSettings, thresholds: Callable[[], Thresholds]) -> Strategy:
    """The configured strategy. `thresholds` gives the policy's current thresholds, which place the LLM
    classifier's verdicts (the server's live policy: the policy file is read in one place)."""
    strategy = _build_uncached(settings, thresholds)
    if not settings.cache_enabled:
        return strategy
    should_store: Callable[[Verdict], bool] = _always
    if settings.strategy in ("llm", "cascade"):
        from classifier_svc.strategies.llm import is_llm_fallback

        # The local answer given because the LLM failed is not stored: the next similar request
        # should get another chance at the LLM rather than the fallback for a whole TTL.
        def should_store(verdict: Verdict) -> bool:
            return not is_llm_fallback(verdict)

    shared = None
    if settings.redis_url:
        from classifier_svc.shared_cache import SharedVerdicts

        shared = SharedVerdicts(settings.redis_url, settings.redis_prefix, settings.cache_ttl_seconds)
    return CachedStrategy(
        strategy,
        max_entries=settings.cache_max_entries,
        ttl_seconds=settings.cache_ttl_seconds,
        min_similarity=settings.cache_min_similarity,
        guard=settings.cache_guard,
        should_store=should_store,
        shared=shared,
    )


def build_local_strategy(settings: ClassifierSettings) -> Strategy:
    """The in-process model of the configured strategy: the keyword rules, or the learned model (the
    keyword rules when there is no artifact)."""
    if settings.strategy == "heuristic":
        return HeuristicStrategy()
    return load_local_model(settings.artifact_dir)


def _build_uncached(settings: ClassifierSettings, thresholds: Callable[[], Thresholds]) -> Strategy:
    local = build_local_strategy(settings)
    if settings.strategy in ("heuristic", "local"):
        return local
    # Imported here: pydantic-ai takes seconds to import, and only these two strategies need it.
    from classifier_svc.strategies.cascade import CascadeStrategy
    from classifier_svc.strategies.llm_model import llm_configured

    configured = llm_configured(settings)
    if settings.strategy == "llm":
        if not configured:
            raise LLMNotConfiguredError(
                f"strategy=llm needs CLASSIFIER_LLM_BASE_URL or the API key of {settings.llm_model}'s provider"
            )
        return _build_llm(settings, local, thresholds)
    if not configured:
        log.info("llm_classifier_not_configured", model=settings.llm_model, strategy="cascade")
    return CascadeStrategy(
        local,
        _build_llm(settings, local, thresholds) if configured else None,
        min_confidence=settings.cascade_min_confidence,
    )


def _build_llm(
    settings: ClassifierSettings, local: Strategy, thresholds: Callable[[], Thresholds]
) -> LLMStrategy:
    from classifier_svc.strategies.llm import LLMStrategy
    from classifier_svc.strategies.llm_model import build_llm_model

    return LLMStrategy(
        build_llm_model(settings),
        fallback=local,
        model_id=settings.llm_model,
        timeout_seconds=settings.llm_timeout_seconds,
        max_input_chars=settings.llm_max_input_chars,
        thresholds=thresholds,
    )


def _always(verdict: Verdict) -> bool:
    return True
