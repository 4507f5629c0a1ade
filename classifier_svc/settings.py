"""classifier_svc configuration, from CLASSIFIER_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from difficulty import DEFAULT_ARTIFACT_DIR
from service_kit.policy import DEFAULT_POLICY_PATH
from service_kit.settings import ServiceSettings


class ClassifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLASSIFIER_")

    port: int = Field(default=50052, ge=0, le=65535)
    # Routing policy: the thresholds that cut the score into tiers.
    policy_path: Path = DEFAULT_POLICY_PATH
    # cascade: local model, then the LLM when unsure (if one is configured); local: learned model only;
    # heuristic: keyword rules only; llm: the LLM classifier only (falls back to local on failure).
    strategy: Literal["cascade", "local", "heuristic", "llm"] = "cascade"
    # Directory of the learned model artifact (committed in difficulty/artifacts; see docs/classifier.md).
    artifact_dir: Path = DEFAULT_ARTIFACT_DIR
    # LLM classifier: a pydantic-ai model name ("anthropic:claude-haiku-4-5", "openai:gpt-5-nano", ...).
    llm_model: str = "anthropic:claude-haiku-4-5"
    # OpenAI-compatible base URL for the LLM classifier (the simulator, vLLM, Ollama...). When set,
    # llm_model's name is sent there. When neither this nor the provider's key is set, no LLM is used.
    llm_base_url: str | None = None
    # API key for llm_base_url (defaults to OPENAI_API_KEY, or a placeholder for keyless local servers).
    llm_api_key: SecretStr | None = None
    # Per attempt; a timed-out attempt is retried once, then the local model answers.
    # Per LLM attempt (two at most). Keep 2x this under the router's ROUTER_CLASSIFY_TIMEOUT_SECONDS,
    # or the router gives up first and uses its default tier.
    llm_timeout_seconds: float = Field(default=1.2, gt=0)
    # The conversation sent to the LLM is cut to this many characters (the latest turns are kept).
    llm_max_input_chars: int = Field(default=12_000, ge=500)
    # Cascade: ask the LLM when the local model's confidence is below this.
    cascade_min_confidence: float = Field(default=0.6, ge=0, le=1)
    # Semantic cache in front of the strategy.
    cache_enabled: bool = True
    cache_max_entries: int = Field(default=10_000, ge=1)
    cache_ttl_seconds: float = Field(default=3600.0, gt=0)
    cache_min_similarity: float = Field(default=0.97, gt=0, le=1)
    # Refuse a similar entry whose negations, numbers, names, task or language differ (see docs).
    cache_guard: bool = True
    # The cache's exact entries shared by classifier replicas (classifier_svc/shared_cache.py), in
    # Redis (redis://host:6379/0); empty: each replica's own.
    redis_url: str = ""
    redis_prefix: str = "llmroute:"
    # Conversations longer than this (characters, all messages) are refused with INVALID_ARGUMENT.
    max_prompt_chars: int = Field(default=400_000, ge=1)
