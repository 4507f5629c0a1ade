"""Retraining on a deployment's outcomes, promoted only when a replay on held-out outcomes shows no
regression: `llmroute retrain`.

1. The ledger's outcomes (`ExportOutcomes`, runs with evidence) are joined with the prompts, which
   llmroute never stores: the operator gives them as JSON lines `{"request_id", "caller", "messages"}`
   from the application's own logs (`--prompts`). A run whose evidence says whether the cheapest tier
   was good enough becomes a training row (`cheap_ok`); the others are left out.
2. `make train-classifier`'s recipe trains a candidate artifact on the shipped data plus those rows
   (`classifier_training.train.train_artifact`, reproducible, versioned); a fixed hash of each
   request's id holds 25% of them out of training.
3. The replay: the current artifact and the candidate score the held-out rows; the candidate is
   promoted only if it ranks them no worse (concordance: the chance that a request the cheap tier
   failed scores above one it handled), and decides them no worse at the policy's thresholds (the
   share whose cheapest-tier-or-not decision matches the evidence). The report prints both, and the
   artifacts' versions.
4. Promotion copies the candidate's files into `--promote-to` (atomically, file by file, after writing
   them next to it); routers and classifiers load it when they start (a rolling restart).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmroute.ledger.v1 import ledger_pb2
from service_kit.policy import Policy

SIMPLE = 1
Scorer = Callable[[Path, Sequence[tuple[tuple[str, str], ...]]], np.ndarray]
Trainer = Callable[[Path, Sequence[Path]], "Candidate"]
TOLERANCE = 0.005  # what "no regression" allows: noise on a few hundred held-out rows is larger


@dataclass(frozen=True)
class Candidate:
    artifact_dir: Path
    version: str
    heldout_ids: tuple[str, ...]


@dataclass(frozen=True)
class Comparison:
    rows: int
    current_concordance: float
    candidate_concordance: float
    current_decided_right: float
    candidate_decided_right: float

    @property
    def regression(self) -> bool:
        return (
            self.candidate_concordance < self.current_concordance - TOLERANCE
            or self.candidate_decided_right < self.current_decided_right - TOLERANCE
        )


def training_rows(
    outcomes: Iterable[ledger_pb2.Outcome], prompts: dict[tuple[str, str], list[dict[str, str]]]
) -> list[dict[str, object]]:
    """Outcome rows for training: runs whose evidence settles whether the cheapest tier was enough,
    with the prompt the operator logged for them."""
    rows = []
    for outcome in outcomes:
        messages = prompts.get((outcome.caller, outcome.request_id))
        if messages is None or not outcome.consistent:
            continue
        if outcome.needed_at_most == SIMPLE:
            cheap_ok = True
        elif outcome.needed_at_least > SIMPLE:
            cheap_ok = False
        else:
            continue
        rows.append(
            {
                "id": f"{outcome.caller}/{outcome.request_id}/{outcome.run_id}",
                "messages": messages,
                "cheap_ok": cheap_ok,
            }
        )
    return rows


def load_prompts(path: Path) -> dict[tuple[str, str], list[dict[str, str]]]:
    """The operator's prompt log: JSON lines {"request_id", "caller", "messages": [{"role", "content"}]}."""
    found: dict[tuple[str, str], list[dict[str, str]]] = {}
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
                raise ValueError(f"{path}:{number}: expected {{'request_id', 'caller', 'messages': [...]}}")
            found[(str(row.get("caller", "")), str(row["request_id"]))] = row["messages"]
    return found


def concordance(scores: np.ndarray, failed: np.ndarray) -> float:
    """P(a request the cheap tier failed scores above one it handled), ties counting half."""
    bad, good = scores[failed], scores[~failed]
    if len(bad) == 0 or len(good) == 0:
        return float("nan")
    order = np.sort(good)
    below = np.searchsorted(order, bad, side="left")
    equal = np.searchsorted(order, bad, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(bad) * len(good)))


def decided_right(scores: np.ndarray, failed: np.ndarray, policy: Policy) -> float:
    """The share of requests for which the cheapest-tier-or-not decision at the policy's thresholds
    matches the evidence (over-routing and under-routing both count as wrong)."""
    cheap = scores < policy.thresholds.moderate
    return float(np.mean(cheap == ~failed))


def compare(
    current: Path, candidate: Path, held: Sequence[dict[str, object]], policy: Policy, scorer: Scorer
) -> Comparison:
    conversations = [tuple((m["role"], m["content"]) for m in row["messages"]) for row in held]  # type: ignore[attr-defined]
    failed = np.array([not row["cheap_ok"] for row in held])
    before, after = scorer(current, conversations), scorer(candidate, conversations)
    return Comparison(
        rows=len(held),
        current_concordance=concordance(before, failed),
        candidate_concordance=concordance(after, failed),
        current_decided_right=decided_right(before, failed, policy),
        candidate_decided_right=decided_right(after, failed, policy),
    )


def learned_scores(artifact_dir: Path, conversations: Sequence[tuple[tuple[str, str], ...]]) -> np.ndarray:
    """The learned classifier's scores with the artifact in `artifact_dir` (the production strategy)."""
    from difficulty import Conversation, LearnedStrategy, Message

    strategy = LearnedStrategy(artifact_dir)
    return np.array(
        [
            strategy.classify_sync(
                Conversation(tuple(Message(role, content) for role, content in turns))
            ).score
            for turns in conversations
        ]
    )


def train_candidate(out_dir: Path, outcome_files: Sequence[Path]) -> Candidate:
    from classifier_training.train import train_artifact

    trained = train_artifact(out_dir, outcome_files)
    return Candidate(trained.artifact_dir, trained.version, trained.heldout_outcome_ids)


def promote(candidate: Path, target: Path) -> None:
    """Copy the candidate's files over the target's, each written beside it and then renamed."""
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted(candidate.iterdir()):
        if source.is_file():
            staging = target / f".{source.name}.promoting"
            shutil.copyfile(source, staging)
            os.replace(staging, target / source.name)


@dataclass(frozen=True)
class Result:
    rows: int
    candidate: Candidate
    comparison: Comparison
    promoted: bool


def retrain(
    outcomes: Sequence[ledger_pb2.Outcome],
    prompts: dict[tuple[str, str], list[dict[str, str]]],
    policy: Policy,
    current: Path,
    work: Path,
    *,
    promote_to: Path | None = None,
    trainer: Trainer = train_candidate,
    scorer: Scorer = learned_scores,
) -> Result:
    rows = training_rows(outcomes, prompts)
    if not rows:
        raise ValueError("no outcome settles the cheapest tier for a request whose prompt was given")
    work.mkdir(parents=True, exist_ok=True)
    outcome_file = work / "outcomes.jsonl"
    outcome_file.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    candidate = trainer(work / "candidate", [outcome_file])
    held_ids = set(candidate.heldout_ids)
    held = [row for row in rows if row["id"] in held_ids]
    if not held:
        raise ValueError("no outcome was held out of training: too few to judge a candidate")
    comparison = compare(current, candidate.artifact_dir, held, policy, scorer)
    promoted = not comparison.regression and promote_to is not None
    if promoted:
        assert promote_to is not None
        promote(candidate.artifact_dir, promote_to)
    return Result(len(rows), candidate, comparison, promoted)
