"""How the policy's thresholds route: operating points, the app prompts' tier confusion, the demo
workload, and whether identifiers change a tier. ``make eval-classifier`` prints these reports and the
tests in ``tests/classifier`` assert on the same functions.

- **Operating point** of one dataset at the thresholds: the share sent to the strong tiers (complex and
  reasoning: score >= ``complex``), the routed quality as a fraction of the strong model's, and, for
  comparison, the smallest share that reaches 95% with this score (``metrics.strong_share_at``).
- **Tier confusion** of the hand-labelled app prompts: hand label (rows) against routed tier.
- **Identifier invariance**: every prompt with identifiers appended, inserted and prefixed in several
  styles (``IDENTIFIER_STYLES``); a variant that lands on another tier is a change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from classifier_training import metrics
from service_kit.policy import NAME_BY_TIER, Thresholds

__all__ = [
    "DEMO_WORKLOAD_PATH",
    "IDENTIFIER_STYLES",
    "TIERS",
    "InvarianceResult",
    "Messages",
    "confusion",
    "confusion_rows",
    "demo_prompts",
    "identifier_variants",
    "invariance",
    "operating_point",
    "tier_of",
]

TIERS = ("simple", "moderate", "complex", "reasoning")
# The sample workload of `make demo` (read only).
DEMO_WORKLOAD_PATH = Path(__file__).resolve().parents[1] / "devstack" / "demo_workload.yaml"

# Identifier mentions as applications add them: order and ticket numbers, invoice codes, UUIDs, URLs,
# e-mail addresses, timestamps, dates, hashes, account numbers, phone numbers, opaque request ids.
IDENTIFIER_STYLES: tuple[tuple[str, str], ...] = (
    ("order and ticket", "(order #A-48213, ticket 99120)"),
    ("uuid", "[ref 3f2a9c1e-7b4d-4e8a-9c2f-1a2b3c4d5e6f]"),
    ("url", "(https://support.example.com/tickets/99120?src=app&lang=en)"),
    ("e-mail", "<anna.k.lopez@example.com>"),
    ("iso timestamp", "(2026-03-14T10:32:05Z)"),
    ("date and time", "[14/03/2026 10:32:05 UTC]"),
    ("git hash", "(commit 9fceb02d0ae598e95dc970b74767f19372d61af8)"),
    ("account number", "(account 004512339871)"),
    ("invoice code", "(Invoice INV-2026-04417)"),
    ("request id", "[req_8f3k2j9x7q1z]"),
    ("phone", "(tel +1 415-555-0199)"),
    ("labelled line", "Customer ID: CUST-778812 | Session: 01HZX3K8Q2VFJ8"),
)


def tier_of(thresholds: Thresholds, score: float) -> str:
    """The name of the tier a score lands on (``Thresholds.tier_for``, as the router cuts it)."""
    return NAME_BY_TIER[thresholds.tier_for(score)]


def operating_point(
    scores: np.ndarray, cheap: np.ndarray, strong: np.ndarray, thresholds: Thresholds
) -> dict[str, float]:
    """Strong-tier share and routed quality (as a fraction of the strong model's) at the thresholds."""
    strong_side = np.asarray(scores) >= thresholds.complex
    routed = np.where(strong_side, strong, cheap).mean()
    return {
        "n": float(len(scores)),
        "strong share at thresholds": float(strong_side.mean()),
        "quality vs strong at thresholds": float(routed / np.mean(strong)),
        "strong share for 95%": metrics.strong_share_at(scores, cheap, strong),
        "simple share": float((np.asarray(scores) < thresholds.moderate).mean()),
    }


def confusion(labels: Sequence[str], tiers: Sequence[str]) -> dict[str, dict[str, int]]:
    """Label -> routed tier -> count, for every tier name (zeros included)."""
    table = {label: dict.fromkeys(TIERS, 0) for label in TIERS}
    for label, tier in zip(labels, tiers, strict=True):
        table[label][tier] += 1
    return table


def demo_prompts(path: Path = DEMO_WORKLOAD_PATH) -> list[str]:
    return [item["prompt"] for item in yaml.safe_load(path.read_text())]


def identifier_variants(text: str) -> list[tuple[str, str]]:
    """(description, text) for every style in ``IDENTIFIER_STYLES``, appended at the end, inserted
    after the first sentence (or clause), and put in front of the prompt as its own line."""
    cut = _first_break(text)
    variants = []
    for name, mention in IDENTIFIER_STYLES:
        variants.append((f"{name}, appended", f"{text} {mention}"))
        variants.append((f"{name}, inserted", f"{text[:cut]} {mention}{text[cut:]}"))
        variants.append((f"{name}, first line", f"{mention}\n{text}"))
    return variants


def _first_break(text: str) -> int:
    """Where a mention can be inserted: after the first sentence end or colon, else after the first
    half of the first line's words."""
    marks = [at for mark in (". ", "? ", "! ", ": ") if 0 < (at := text.find(mark)) < len(text) - 2]
    if marks:
        return min(marks) + 1
    words = text.split("\n", 1)[0].split(" ")
    return len(" ".join(words[: max(1, len(words) // 2)]))


@dataclass
class InvarianceResult:
    prompts: int = 0
    variants: int = 0
    tier_changes: int = 0
    score_changes: int = 0
    # (style, original tier, variant tier, prompt start) of every tier change
    changes: list[tuple[str, str, str, str]] = field(default_factory=list)
    by_style: dict[str, list[int]] = field(default_factory=dict)  # style -> [variants, tier changes]


Messages = tuple[tuple[str, str], ...]  # (role, content), oldest first


def invariance(
    score: Callable[[Messages], float], conversations: Iterable[Messages], thresholds: Thresholds
) -> InvarianceResult:
    """Scores every conversation, then each identifier variant of its last user turn; counts the
    variants that land on another tier, and those whose score moved at all."""
    result = InvarianceResult()
    for messages in conversations:
        base = score(messages)
        base_tier = tier_of(thresholds, base)
        last = max(i for i, (role, _) in enumerate(messages) if role == "user")
        result.prompts += 1
        for style, variant in identifier_variants(messages[last][1]):
            value = score((*messages[:last], ("user", variant), *messages[last + 1 :]))
            tier = tier_of(thresholds, value)
            counts = result.by_style.setdefault(style.split(",")[0], [0, 0])
            counts[0] += 1
            result.variants += 1
            if value != base:
                result.score_changes += 1
            if tier != base_tier:
                counts[1] += 1
                result.tier_changes += 1
                result.changes.append((style, base_tier, tier, messages[last][1][:60]))
    return result


def confusion_rows(table: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, object]]:
    """A confusion table as report rows, with each label's count."""
    return {
        f"labelled {label}": {**{f"-> {tier}": row[tier] for tier in TIERS}, "prompts": sum(row.values())}
        for label, row in table.items()
    }
