"""The labelled data: routing outcomes (MMLU, GSM8K, multimodel), the app prompts, and the fixed held-out split.

The split is part of the contract: whole MMLU subjects and a part of GSM8K are held out, chosen by a
seeded hash so that the choice never depends on library versions, row order or results. Training and
model selection only ever see the ``train`` part; ``make eval-classifier`` reports on ``test``.

The multimodel outcomes (LLMRouter, 14 tasks) were added later with a split of their own
(``MULTIMODEL_SPLIT_SEED``), fixed before they were first trained on; the MMLU, GSM8K and app splits
did not change, so their held-out numbers stay comparable.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "APP_PROMPTS_2_PATH",
    "APP_PROMPTS_PATH",
    "APP_TEST_FRACTION",
    "CHEAP_MODEL",
    "DIFFICULTY_TARGET",
    "GSM8K_TEST_FRACTION",
    "MMLU_TEST_FRACTION",
    "MULTIMODEL_CHEAP_MODEL",
    "MULTIMODEL_FILE",
    "MULTIMODEL_SPLIT_SEED",
    "MULTIMODEL_STRONG_MODEL",
    "MULTIMODEL_TEST_FRACTION",
    "OUTCOMES_SPLIT_SEED",
    "OUTCOMES_TEST_FRACTION",
    "SPLIT_SEED",
    "STRONG_MODEL",
    "AppPrompt",
    "DeploymentOutcome",
    "Outcome",
    "data_dir",
    "file_digest",
    "heldout_subjects",
    "load_app_prompts",
    "load_deployment_outcomes",
    "load_gsm8k",
    "load_mmlu",
    "load_multimodel",
    "load_outcomes",
    "outcome_held_out",
    "split_app_prompts",
    "split_deployment_outcomes",
    "split_multimodel",
    "split_outcomes",
]

CHEAP_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_MODEL = "gpt-4-1106-preview"

# Fixed before any model was trained; changing either invalidates every reported number.
SPLIT_SEED = "llmroute-split-v1"
MMLU_TEST_FRACTION = 0.30
GSM8K_TEST_FRACTION = 0.30
APP_TEST_FRACTION = 0.25

# The multimodel outcomes: their own seed, so the split above is untouched.
MULTIMODEL_FILE = "multimodel_outcomes.csv"
MULTIMODEL_SPLIT_SEED = "llmroute-multimodel-split-v1"
MULTIMODEL_TEST_FRACTION = 0.30
# The pair the file names in its cheap_model / strong_model columns.
MULTIMODEL_CHEAP_MODEL = "llama-3.1-8b-instruct"
MULTIMODEL_STRONG_MODEL = "llama-3.1-nemotron-51b-instruct"

# Outcomes of routed requests (``train --outcomes``): a part is held out by a hash of the request id.
OUTCOMES_SPLIT_SEED = "llmroute-outcomes-split-v1"
OUTCOMES_TEST_FRACTION = 0.25

DEFAULT_DATA_DIR = Path("/work/shared/data/routing")
APP_PROMPTS_PATH = Path(__file__).resolve().parent / "data" / "app_prompts.jsonl"
# A second batch, written later with the same rubric (see docs/classifier.md): evaluation only, never
# trained on.
APP_PROMPTS_2_PATH = APP_PROMPTS_PATH.with_name("app_prompts_2.jsonl")

# App prompts carry a hand-assigned tier; the head learns it as a soft target: P(the cheapest tier
# fails where the strong one succeeds). Simple and moderate are set so that sending exactly the complex
# and reasoning prompts of this file to the strong tiers keeps 95% of the strong quality, which is what
# the rubric's tiers mean under a 95% target (109 x 0.03 + 86 x 0.12 = 13.6, 5% of 267 prompts). The
# first values (0.05 / 0.30) needed half of this file on the strong side (132 of 267 prompts) for 95%.
DIFFICULTY_TARGET = {"simple": 0.03, "moderate": 0.12, "complex": 0.65, "reasoning": 0.90}


def data_dir() -> Path:
    """Where the outcome CSVs live: ``$ROUTING_DATA_DIR`` or the shared data folder."""
    return Path(os.environ.get("ROUTING_DATA_DIR", DEFAULT_DATA_DIR))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One benchmark prompt and how well each model answered it."""

    dataset: str  # "mmlu", "gsm8k" or "multimodel"
    group: str  # MMLU subject; the multimodel task name; for GSM8K the dataset name (rows are independent)
    prompt: str
    # Whether the answer was right (MMLU, GSM8K), or the task's own metric in [0, 1] (multimodel:
    # exact match, pass@1, F1, coverage), so a mean over prompts is the model's quality.
    cheap_ok: float
    strong_ok: float


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


def _score(value: str) -> float:
    score = float(value)
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"expected a score in [0, 1], got {value!r}")
    return score


def load_multimodel(directory: Path | None = None) -> list[Outcome]:
    """The LLMRouter outcomes: 14 tasks, the score of llama-3.1-8b (cheap) and nemotron-51b (strong)."""
    path = (directory or data_dir()) / MULTIMODEL_FILE
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    pairs = {(row["cheap_model"], row["strong_model"]) for row in rows}
    if pairs != {(MULTIMODEL_CHEAP_MODEL, MULTIMODEL_STRONG_MODEL)}:
        raise ValueError(f"{path}: unexpected model pair(s) {sorted(pairs)}")
    return [
        Outcome(
            "multimodel",
            row["task_name"],
            row["prompt"],
            _score(row["cheap_score"]),
            _score(row["strong_score"]),
        )
        for row in rows
    ]


def _rank_key(text: str, seed: str = SPLIT_SEED) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def _seeded_pick(keys: Iterable[str], fraction: float, seed: str = SPLIT_SEED) -> set[str]:
    unique = sorted(set(keys))
    k = round(fraction * len(unique))
    return set(sorted(unique, key=lambda key: _rank_key(key, seed))[:k])


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


def _same_prompt_key(text: str) -> str:
    """Words only, lower case, first 150 characters: MGSM repeats GSM8K problems with an instruction added."""
    return " ".join(re.findall(r"\w+", text.lower()))[:150]


def split_multimodel(
    rows: Sequence[Outcome], routellm: Sequence[Outcome] = ()
) -> tuple[list[Outcome], list[Outcome]]:
    """(train, test) of the multimodel outcomes: within each task, 30% of the prompts by seeded hash.

    Row level, like the data's own held-back test split (the same 14 tasks). A prompt that is also
    in ``routellm`` (the MMLU and GSM8K outcomes; 117 MGSM rows repeat GSM8K problems) goes to the
    side its RouteLLM copy is on, so no prompt is trained on in one file and tested in the other.
    """
    train_rll, test_rll = split_outcomes(routellm)
    # By key length, so that a multimodel prompt that starts with a (short) RouteLLM one matches too.
    side: dict[int, dict[str, str]] = {}
    for part, name in ((train_rll, "train"), (test_rll, "test")):
        for o in part:
            key = _same_prompt_key(o.prompt)
            side.setdefault(len(key), {})[key] = name
    test_prompts: set[str] = set()
    for task in sorted({row.group for row in rows}):
        prompts = [row.prompt for row in rows if row.group == task]
        test_prompts |= _seeded_pick(prompts, MULTIMODEL_TEST_FRACTION, MULTIMODEL_SPLIT_SEED)
    train: list[Outcome] = []
    test: list[Outcome] = []
    for row in rows:
        key = _same_prompt_key(row.prompt)
        forced = next((keys[key[:n]] for n, keys in side.items() if key[:n] in keys), None)
        held = forced == "test" if forced else row.prompt in test_prompts
        (test if held else train).append(row)
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


def _hash_position(key: str, seed: str) -> float:
    """Where ``key`` falls in [0, 1) under the seeded hash."""
    return int(_rank_key(key, seed)[:16], 16) / 16**16


@dataclass(frozen=True, slots=True)
class DeploymentOutcome:
    """A routed request whose outcome is known: was the cheapest tier's answer adequate?"""

    id: str
    messages: tuple[tuple[str, str], ...]  # (role, content), oldest first
    cheap_ok: bool
    weight: float = 1.0


def _outcome_row(raw: object, where: str) -> DeploymentOutcome:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object")
    rid, messages, cheap_ok = raw.get("id"), raw.get("messages"), raw.get("cheap_ok")
    weight = raw.get("weight", 1.0)
    if not isinstance(rid, str) or not rid:
        raise ValueError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list")
    pairs = []
    for message in messages:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise ValueError(f"{where}: every message needs a string 'role' and 'content'")
        pairs.append((message["role"], message["content"]))
    if not isinstance(cheap_ok, bool):
        raise ValueError(f"{where}: 'cheap_ok' must be true or false")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < float("inf"):
        raise ValueError(f"{where}: 'weight' must be a positive number")
    return DeploymentOutcome(rid, tuple(pairs), cheap_ok, float(weight))


def load_deployment_outcomes(paths: Iterable[Path]) -> list[DeploymentOutcome]:
    """Rows of JSON lines ``{"id", "messages": [{"role", "content"}], "cheap_ok": bool, "weight"?}``.

    An id may appear only once over all the files: a request has one outcome.
    """
    rows: list[DeploymentOutcome] = []
    seen: dict[str, str] = {}
    for path in paths:
        with Path(path).open() as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{line_number}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{where}: not JSON ({error.msg})") from error
                row = _outcome_row(raw, where)
                if row.id in seen:
                    raise ValueError(f"{where}: outcome id {row.id!r} already given at {seen[row.id]}")
                seen[row.id] = where
                rows.append(row)
    return rows


def split_deployment_outcomes(
    rows: Sequence[DeploymentOutcome],
) -> tuple[list[DeploymentOutcome], list[DeploymentOutcome]]:
    """(train, test): a request is held out when the hash of its id falls in the first 25% of the hash
    range. Each id decides alone, so adding outcomes never moves a held-out request into training."""
    train: list[DeploymentOutcome] = []
    test: list[DeploymentOutcome] = []
    for row in rows:
        (test if outcome_held_out(row.id) else train).append(row)
    return train, test


def outcome_held_out(request_id: str) -> bool:
    """Whether a deployment outcome with this id is held out (never trained on)."""
    return _hash_position(request_id, OUTCOMES_SPLIT_SEED) < OUTCOMES_TEST_FRACTION
