"""router_svc configuration, from ROUTER_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from difficulty import DEFAULT_ARTIFACT_DIR
from service_kit.policy import DEFAULT_POLICY_PATH, TierName
from service_kit.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTER_")

    port: int = Field(default=50051, ge=0, le=65535)
    # Processes serving Route on the port (one event loop, one core each); each has its own spool
    # (spool_path with "-w<n>" added) and warm-up. 1: this process serves.
    workers: int = Field(default=1, ge=1, le=64)
    policy_path: Path = DEFAULT_POLICY_PATH
    classifier_address: str = "127.0.0.1:50052"
    # Where classification runs (router_svc/classification.py): local_first (default) runs the learned
    # model in this process and asks classifier_svc only when that service's cascade would ask its
    # LLM classifier (it says so through its Describe RPC; until it has, below this confidence);
    # remote asks classifier_svc for every request; local never asks it.
    classifier_mode: Literal["local_first", "remote", "local"] = "local_first"
    classify_remote_below_confidence: float = Field(default=0.6, ge=0, le=1)
    # The learned model's artifact for in-process classification (the classifier's, by default).
    classifier_artifact_dir: Path = DEFAULT_ARTIFACT_DIR
    ledger_address: str = "127.0.0.1:50053"
    # This router's API key (role `service`) for its calls to the ledger and the classifier, when they
    # require keys (docs/security.md).
    service_key: SecretStr | None = None
    # TLS to the ledger and the classifier (service_kit/tls.py): the CA that signed their certificates;
    # the router presents its own (tls_cert_file, tls_key_file) for mutual TLS. Unset: plaintext.
    peer_ca_file: Path | None = None
    # Classification gets at most this long; then the policy's default tier is used.
    # (Room for the classifier's LLM: two attempts of CLASSIFIER_LLM_TIMEOUT_SECONDS, 1.2 s each.)
    classify_timeout_seconds: float = Field(default=3.0, gt=0)
    # auto: the simulator serves every call when no provider key (OPENAI/ANTHROPIC/GROQ_API_KEY) is set,
    # else real providers only; always: every call goes to the simulator; never: real providers only.
    simulator: Literal["auto", "always", "never"] = "auto"
    simulator_url: str = "http://127.0.0.1:8089/v1"
    # Per provider call, when the client set no deadline.
    provider_timeout_seconds: float = Field(default=120.0, gt=0)
    # Retries of one model on transient errors (429, 5xx, timeouts) before the next candidate.
    retries_per_model: int = Field(default=1, ge=0, le=5)
    retry_backoff_seconds: float = Field(default=0.2, ge=0)
    # A provider's retry-after (429, 503) up to this long is waited out before the retry on the same
    # model; a longer one sends the request to its next candidate at once. Either way, no request calls
    # that model again before the retry-after has passed.
    max_retry_after_wait_seconds: float = Field(default=1.0, ge=0)
    # Circuit breaker: this many consecutive failures put a model in cooldown for cooldown_seconds.
    cooldown_after_failures: int = Field(default=3, ge=1)
    cooldown_seconds: float = Field(default=30.0, gt=0)
    # Escalate one tier up when a validator rejects the output.
    escalate_on_validation_failure: bool = True
    # Optional LLM judge (router_svc/judge.py): a LiteLLM model name (e.g. "openai/gpt-5-nano") that
    # grades the answers of judge_tiers after the rule-based validators; empty = no judge.
    judge_model: str = ""
    judge_tiers: list[TierName] = Field(default_factory=lambda: list[TierName](["simple", "moderate"]))
    judge_timeout_seconds: float = Field(default=10.0, gt=0)
    # Request and answer are each cut to this many characters for the judge.
    judge_max_chars: int = Field(default=8_000, ge=200)
    # Exploration (router_svc/exploration.py): this share of answered requests is also answered by the
    # next tier down, in the background, and the judge (required) compares the two answers: the
    # evidence that a cheaper tier would have done. Off by default; capped per UTC day in dollars.
    exploration_rate: float = Field(default=0.0, ge=0, le=1)
    exploration_daily_budget_usd: float = Field(default=1.0, ge=0)
    exploration_timeout_seconds: float = Field(default=60.0, gt=0)
    # Seed of the exploration draw, for reproducible replays and tests; unset: a fresh random one.
    exploration_seed: int | None = None
    # Budgets (kept by the ledger): a caller's state is cached this long; the check fails open.
    budgets_enabled: bool = True
    budget_check_ttl_seconds: float = Field(default=2.0, gt=0)
    budget_check_timeout_seconds: float = Field(default=0.3, gt=0)
    # A hold (ReserveBudget, before a provider call of a caller with a hard budget) waits longer than
    # a check: concurrent holds of one budget queue in the ledger, and giving up fails open or closed.
    budget_hold_timeout_seconds: float = Field(default=3.0, gt=0)
    # Near a soft limit every threshold rises by this much, shifting traffic to cheaper tiers.
    budget_soft_limit_shift: float = Field(default=0.03, ge=0, le=1)
    # When CheckBudget cannot answer: "open" routes on the last known state, with a
    # budget_check_unavailable warning; "closed" refuses callers whose state was never read.
    budget_fail_mode: Literal["open", "closed"] = "open"
    # Before SERVING, call these models once. Default: the models that answered most requests in the
    # last day (this many, from the ledger's stats), plus the cheapest eligible model of each tier.
    warm_up: bool = True
    warm_up_models: list[str] = Field(default_factory=list)
    warm_up_from_ledger_top: int = Field(default=4, ge=0)
    warm_up_timeout_seconds: float = Field(default=10.0, gt=0)
    max_prompt_chars: int = Field(default=400_000, ge=1)
    # Limits checked before anything is paid for (INVALID_ARGUMENT): messages per request, the
    # max_output_tokens a caller may ask for, and the size of options.json_schema (router_svc/schemas.py).
    max_messages: int = Field(default=1000, ge=1)
    max_output_tokens: int = Field(default=128_000, ge=1)
    max_json_schema_bytes: int = Field(default=64 * 1024, ge=64)
    default_caller: str = "anonymous"
    # Local JSON/YAML file of {model: {input_cost_per_token: ..., output_cost_per_token: ...}} overrides.
    price_overrides_path: Path | None = None
    # Optional refresh of the whole price map (LiteLLM's JSON format) from a file or http(s) URL.
    price_refresh_from: str | None = None
    price_refresh_seconds: float = Field(default=3600.0, gt=0)
    # Durable spool of usage records waiting for the ledger.
    spool_path: Path = Path("var/router-spool.db")
    # fsync each Route's records before answering: survives power loss, ~0.4 ms per request here.
    # Off: a killed router process still loses nothing; a power loss can lose the last second.
    spool_fsync: bool = False
    # The spool's size cap: over it, the router reports NOT_SERVING and refuses new paid work
    # (UNAVAILABLE, USAGE_NOT_RECORDABLE) rather than drop records; records older than the age are
    # an alert in the log (`ledger_spool_stale`): the ledger has not taken them.
    spool_max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    spool_max_age_seconds: float = Field(default=3600.0, gt=0)
    # Identifies this replica to the ledger (spool depth reporting).
    replica_id: str = ""
    # Remember finished responses by request_id this long, so a retried Route is not routed twice.
    idempotency_ttl_seconds: float = Field(default=600.0, ge=0)
    idempotency_max_entries: int = Field(default=10_000, ge=0)
    # ...and the bytes of the answers it keeps for replay (serialized RouteResponses).
    idempotency_max_bytes: int = Field(default=256 << 20, ge=0)
    # Shared state across router replicas (router_svc/shared.py): bound idempotency keys and their
    # runs, and cooldowns, in Redis (redis://host:6379/0). Empty: each replica keeps them in memory.
    redis_url: str = ""
    redis_prefix: str = "llmroute:"
