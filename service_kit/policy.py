"""The routing policy (one YAML file): tiers → ordered candidate models, score thresholds, baseline.

Read by the router (selection) and the classifier (score → tier). Validated with pydantic so a bad
file is rejected with a clear error and the previous policy stays in force.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmroute.common.v1 import common_pb2

TIER_NAMES = ("simple", "moderate", "complex", "reasoning")
TierName = Literal["simple", "moderate", "complex", "reasoning"]
TIER_BY_NAME = {
    "simple": common_pb2.TIER_SIMPLE,
    "moderate": common_pb2.TIER_MODERATE,
    "complex": common_pb2.TIER_COMPLEX,
    "reasoning": common_pb2.TIER_REASONING,
}
# Keyed by int: a tier read from a message or computed (an escalation) looks its name up alike.
NAME_BY_TIER: dict[int, str] = {v: k for k, v in TIER_BY_NAME.items()}
# The tiers cheapest first, as the protos number them (TIER_NAMES are their names in the policy).
TIERS = tuple(TIER_BY_NAME[name] for name in TIER_NAMES)
# The policy the services start with when none is configured: shipped inside the package (a wheel holds
# the file; in a checkout it is a link to config/policy.yaml, the one copy to edit).
DEFAULT_POLICY_PATH = Path(str(importlib.resources.files("service_kit") / "default_policy.yaml"))


class PolicyError(ValueError):
    """The policy file is missing, not YAML, or does not validate."""


class ModelSpec(BaseModel):
    """One candidate model. Extra keys in `params` are passed to litellm.acompletion as they are."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1, description="LiteLLM model name, e.g. gpt-5-mini or groq/openai/gpt-oss-20b"
    )
    params: dict[str, Any] = Field(default_factory=dict)
    # For OpenAI-compatible endpoints (vLLM, Ollama...): base URL and the env var holding the key.
    api_base: str | None = None
    api_key_env: str | None = None


class Thresholds(BaseModel):
    """Score cut points: a score at or above `reasoning` is REASONING, and so on down to SIMPLE."""

    model_config = ConfigDict(extra="forbid")

    moderate: float = Field(ge=0, le=1)
    complex: float = Field(ge=0, le=1)
    reasoning: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.moderate <= self.complex <= self.reasoning:
            raise ValueError("thresholds must satisfy moderate <= complex <= reasoning")
        return self

    def tier_for(self, score: float, shift: float = 0.0) -> common_pb2.Tier.ValueType:
        """The tier for a score; `shift` raises every threshold (budget pressure sends traffic cheaper)."""
        if score >= self.reasoning + shift:
            return common_pb2.TIER_REASONING
        if score >= self.complex + shift:
            return common_pb2.TIER_COMPLEX
        if score >= self.moderate + shift:
            return common_pb2.TIER_MODERATE
        return common_pb2.TIER_SIMPLE


def category_name(category: int) -> str:
    """A Category as the policy names it: CATEGORY_CODE -> "code" ("" for unknown values)."""
    try:
        return (
            common_pb2.Category.Name(common_pb2.Category.ValueType(category))
            .removeprefix("CATEGORY_")
            .lower()
        )
    except ValueError:
        return ""


class Offsets(BaseModel):
    """Added to the score before the thresholds cut it, per prompt family (the classifier's, e.g.
    "open", "multiple_choice") and per category ("code", "extraction"...): positive routes up. Fitted
    by `llmroute tune` where the outcomes support them."""

    model_config = ConfigDict(extra="forbid")

    family: dict[str, float] = Field(default_factory=dict)
    category: dict[str, float] = Field(default_factory=dict)

    @field_validator("family", "category")
    @classmethod
    def _bounded(cls, values: dict[str, float]) -> dict[str, float]:
        for key, value in values.items():
            if not -1.0 <= value <= 1.0:
                raise ValueError(f"offset {key}: {value} is outside [-1, 1]")
        return values


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    baseline_model: str = Field(min_length=1)
    # Whether the baseline model reasons, and how hard: savings are measured against it, so its
    # counterfactual cost includes reasoning tokens only when it is set (see docs/router.md#baseline).
    baseline_reasoning_effort: Literal["low", "medium", "high"] | None = None
    default_tier: str = "moderate"
    thresholds: Thresholds
    offsets: Offsets = Field(default_factory=Offsets)
    tiers: dict[str, list[ModelSpec]]
    # Expected output tokens per category, when the request sets no max_output_tokens.
    output_token_estimates: dict[str, Annotated[int, Field(ge=0, le=10_000_000)]] = Field(
        default_factory=dict
    )

    @field_validator("tiers")
    @classmethod
    def _known_tiers(cls, tiers: dict[str, list[ModelSpec]]) -> dict[str, list[ModelSpec]]:
        unknown = set(tiers) - set(TIER_NAMES)
        if unknown:
            raise ValueError(f"unknown tiers {sorted(unknown)}; expected {list(TIER_NAMES)}")
        missing = [t for t in TIER_NAMES if not tiers.get(t)]
        if missing:
            raise ValueError(f"tiers without candidate models: {missing}")
        return tiers

    @field_validator("default_tier")
    @classmethod
    def _known_default(cls, tier: str) -> str:
        if tier not in TIER_NAMES:
            raise ValueError(f"default_tier must be one of {list(TIER_NAMES)}")
        return tier

    def candidates(self, tier: int) -> list[ModelSpec]:
        return self.tiers[NAME_BY_TIER[tier]]

    def lists(self, model: str) -> bool:
        """Whether `model` is one of the policy's candidates (only those may be forced)."""
        return any(spec.model == model for specs in self.tiers.values() for spec in specs)

    def tier_for(
        self, score: float, family: str = "", category: int = 0, shift: float = 0.0
    ) -> common_pb2.Tier.ValueType:
        """The tier for a classification: its score plus the family's and the category's offsets, cut
        by the thresholds (raised by `shift` under budget pressure)."""
        offset = self.offsets.family.get(family, 0.0) + self.offsets.category.get(
            category_name(category), 0.0
        )
        return self.thresholds.tier_for(score + offset, shift)

    @functools.cached_property
    def version_id(self) -> str:
        """`v<version>-<digest of the content>`: records carry it, so any edit (thresholds, models) is a
        new version to compare before and after, even when nobody bumps `version`."""
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:10]
        return f"v{self.version}-{digest}"


# A policy is a few kilobytes; these bounds keep a malformed one (deep nesting, YAML aliases that
# expand a billion-fold) from exhausting the stack or the memory of the service that reads it.
MAX_POLICY_BYTES = 1 << 20
MAX_POLICY_NODES = 100_000


def load_policy(path: str | Path) -> Policy:
    try:
        data = Path(path).read_bytes()
        if len(data) > MAX_POLICY_BYTES:
            raise PolicyError(f"policy {path} is {len(data)} bytes; at most {MAX_POLICY_BYTES}")
        raw = yaml.safe_load(data.decode())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise PolicyError(f"cannot read policy {path}: {error}") from error
    except RecursionError:
        raise PolicyError(f"cannot read policy {path}: nested too deeply") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"policy {path} must be a YAML mapping")
    if _nodes(raw) > MAX_POLICY_NODES:
        raise PolicyError(f"policy {path} has more than {MAX_POLICY_NODES} values (once YAML aliases expand)")
    try:
        return Policy.model_validate(raw)
    except ValueError as error:
        raise PolicyError(f"invalid policy {path}: {error}") from error


def _nodes(root: object) -> int:
    """How many values the document holds, aliases counted each time they are used; counting stops
    just past the limit (a self-referencing alias never ends)."""
    count, stack = 0, [root]
    while stack and count <= MAX_POLICY_NODES:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count
