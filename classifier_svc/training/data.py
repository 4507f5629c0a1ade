"""The labelled data: routing outcomes (MMLU, GSM8K), the app prompt set, and the fixed held-out split.

The split is part of the contract: whole MMLU subjects and a part of GSM8K are held out, chosen by a
seeded hash so that the choice never depends on library versions, row order or results. Training and
model selection only ever see the ``train`` part; ``make eval-classifier`` reports on ``test``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "APP_PROMPTS_PATH",
    "APP_TEST_FRACTION",
    "CHEAP_MODEL",
    "DIFFICULTY_TARGET",
    "GSM8K_TEST_FRACTION",
    "MMLU_TEST_FRACTION",
    "SPLIT_SEED",
    "STRONG_MODEL",
    "AppPrompt",
    "Outcome",
    "data_dir",
    "file_digest",
    "heldout_subjects",
    "load_app_prompts",
    "load_gsm8k",
    "load_mmlu",
    "load_outcomes",
    "split_app_prompts",
    "split_outcomes",
]

CHEAP_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_MODEL = "gpt-4-1106-preview"

# Fixed before any model was trained; changing either invalidates every reported number.
SPLIT_SEED = "llmroute-split-v1"
MMLU_TEST_FRACTION = 0.30
GSM8K_TEST_FRACTION = 0.30
APP_TEST_FRACTION = 0.25

DEFAULT_DATA_DIR = Path("/work/shared/data/routing")
APP_PROMPTS_PATH = Path(__file__).resolve().parent.parent / "data" / "app_prompts.jsonl"

# App prompts carry a hand-assigned tier; the head learns it as a soft "cheap model fails" target.
DIFFICULTY_TARGET = {"simple": 0.05, "moderate": 0.30, "complex": 0.65, "reasoning": 0.90}


def data_dir() -> Path:
    """Where the outcome CSVs live: ``$ROUTING_DATA_DIR`` or the shared data folder."""
    return Path(os.environ.get("ROUTING_DATA_DIR", DEFAULT_DATA_DIR))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One benchmark prompt and whether each model answered it correctly."""

    dataset: str  # "mmlu" or "gsm8k"
    group: str  # MMLU subject; for GSM8K the dataset name (rows are independent)
    prompt: str
    cheap_ok: bool
    strong_ok: bool


@dataclass(frozen=True, slots=True)
class AppPrompt:
    """A realistic application prompt with a hand-assigned difficulty (see docs/classifier.md)."""

    id: str
    category: str
    difficulty: str  # one of DIFFICULTY_TARGET
    label_source: str
    messages: tuple[tuple[str, str], ...]  # (role, content), oldest first
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def target(self) -> float:
        return DIFFICULTY_TARGET[self.difficulty]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flag(value: str) -> bool:
    if value not in ("True", "False"):
        raise ValueError(f"expected True/False, got {value!r}")
    return value == "True"


def load_mmlu(directory: Path | None = None) -> list[Outcome]:
    path = (directory or data_dir()) / "mmlu_outcomes.csv"
    with path.open(newline="") as handle:
        return [
            Outcome("mmlu", row["subject"], row["prompt"], _flag(row[CHEAP_MODEL]), _flag(row[STRONG_MODEL]))
            for row in csv.DictReader(handle)
        ]


def load_gsm8k(directory: Path | None = None) -> list[Outcome]:
    path = (directory or data_dir()) / "gsm8k_outcomes.csv"
    with path.open(newline="") as handle:
        return [
            Outcome("gsm8k", "gsm8k", row["prompt"], _flag(row[CHEAP_MODEL]), _flag(row[STRONG_MODEL]))
            for row in csv.DictReader(handle)
        ]


def load_outcomes(directory: Path | None = None) -> list[Outcome]:
    return load_mmlu(directory) + load_gsm8k(directory)


def _rank_key(text: str) -> str:
    return hashlib.sha256(f"{SPLIT_SEED}:{text}".encode()).hexdigest()


def _seeded_pick(keys: Iterable[str], fraction: float) -> set[str]:
    unique = sorted(set(keys))
    k = round(fraction * len(unique))
    return set(sorted(unique, key=_rank_key)[:k])


def heldout_subjects(subjects: Iterable[str]) -> list[str]:
    """The MMLU subjects held out for testing: the first 30% by seeded hash of the subject name."""
    return sorted(_seeded_pick(subjects, MMLU_TEST_FRACTION))


def split_outcomes(outcomes: Sequence[Outcome]) -> tuple[list[Outcome], list[Outcome]]:
    """(train, test): whole held-out MMLU subjects, and 30% of GSM8K prompts by seeded hash."""
    test_subjects = set(heldout_subjects(o.group for o in outcomes if o.dataset == "mmlu"))
    test_gsm8k = _seeded_pick((o.prompt for o in outcomes if o.dataset == "gsm8k"), GSM8K_TEST_FRACTION)
    train: list[Outcome] = []
    test: list[Outcome] = []
    for outcome in outcomes:
        held = outcome.group in test_subjects if outcome.dataset == "mmlu" else outcome.prompt in test_gsm8k
        (test if held else train).append(outcome)
    return train, test


def load_app_prompts(path: Path = APP_PROMPTS_PATH) -> list[AppPrompt]:
    prompts = []
    with path.open() as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            raw = json.loads(line)
            if raw["difficulty"] not in DIFFICULTY_TARGET:
                raise ValueError(f"{path}:{line_number}: unknown difficulty {raw['difficulty']!r}")
            messages = raw.get("messages") or [{"role": "user", "content": raw["prompt"]}]
            prompts.append(
                AppPrompt(
                    id=raw["id"],
                    category=raw["category"],
                    difficulty=raw["difficulty"],
                    label_source=raw["label_source"],
                    messages=tuple((m["role"], m["content"]) for m in messages),
                    notes=raw.get("notes", ""),
                    tags=tuple(raw.get("tags", ())),
                )
            )
    return prompts


def split_app_prompts(prompts: Sequence[AppPrompt]) -> tuple[list[AppPrompt], list[AppPrompt]]:
    """(train, test): 25% of the app prompts by seeded hash of their id."""
    test_ids = _seeded_pick((p.id for p in prompts), APP_TEST_FRACTION)
    return [p for p in prompts if p.id not in test_ids], [p for p in prompts if p.id in test_ids]
