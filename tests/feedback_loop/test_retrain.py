"""Retraining on outcomes: the rows it learns from, the replay that guards promotion, the promotion."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from difficulty import DEFAULT_ARTIFACT_DIR
from feedback_loop import retrain
from llmroute.common.v1 import common_pb2
from llmroute.ledger.v1 import ledger_pb2 as L
from service_kit.policy import DEFAULT_POLICY_PATH, load_policy

EASY = "Is this spam? 'You won a cruise'"
HARD = "Prove that there are infinitely many primes of the form 4k+3, then bound their density."


def outcome(rid: str, lo: int, hi: int, consistent: bool = True) -> L.Outcome:
    return L.Outcome(
        request_id=rid,
        caller="app",
        run_id=f"run-{rid}",
        needed_at_least=common_pb2.Tier.ValueType(lo),
        needed_at_most=common_pb2.Tier.ValueType(hi),
        consistent=consistent,
    )


def test_rows_are_the_runs_whose_evidence_settles_the_cheapest_tier() -> None:
    prompts = {("app", r): [{"role": "user", "content": f"prompt {r}"}] for r in "abcdef"}
    rows = retrain.training_rows(
        [
            outcome("a", 1, 1),  # simple was enough
            outcome("b", 2, 2),  # simple was not
            outcome("c", 3, 0),  # at least complex: simple was not
            outcome("d", 1, 3),  # could be anything up to complex: unknown
            outcome("e", 3, 2, consistent=False),  # the evidence disagrees
            outcome("z", 1, 1),  # no prompt logged for it
        ],
        prompts,
    )
    assert [(row["id"], row["cheap_ok"]) for row in rows] == [
        ("app/a/run-a", True),
        ("app/b/run-b", False),
        ("app/c/run-c", False),
    ]
    assert rows[0]["messages"] == [{"role": "user", "content": "prompt a"}]


def test_concordance_is_the_pairwise_ranking() -> None:
    rng = np.random.default_rng(0)
    scores, failed = rng.random(40).round(1), rng.random(40) < 0.4
    pairs = [(b, g) for b, g in itertools.product(scores[failed], scores[~failed])]
    expected = sum(1.0 if b > g else 0.5 if b == g else 0.0 for b, g in pairs) / len(pairs)
    assert retrain.concordance(scores, failed) == pytest.approx(expected)


def deployment(n: int) -> tuple[list[L.Outcome], dict[tuple[str, str], list[dict[str, str]]]]:
    outcomes, prompts = [], {}
    for i in range(n):
        hard = i % 3 == 0
        rid = f"q{i}"
        outcomes.append(outcome(rid, 2, 0) if hard else outcome(rid, 1, 1))
        prompts[("app", rid)] = [{"role": "user", "content": f"{HARD if hard else EASY} #{i}"}]
    return outcomes, prompts


def fake_trainer(out: Path, files: Sequence[Path]) -> retrain.Candidate:
    """Writes an artifact directory and holds out every other row, as the real trainer's hash would."""
    shutil.copytree(DEFAULT_ARTIFACT_DIR, out)
    ids = [line.split('"id": "')[1].split('"')[0] for line in Path(files[0]).read_text().splitlines()]
    return retrain.Candidate(out, "test-1", tuple(ids[::2]))


async def test_a_candidate_that_does_no_worse_is_promoted(tmp_path: Path) -> None:
    outcomes, prompts = deployment(60)
    target = tmp_path / "installed"
    shutil.copytree(DEFAULT_ARTIFACT_DIR, target)
    (target / "model.npz").write_bytes(b"old")
    result = retrain.retrain(
        outcomes, prompts, load_policy(DEFAULT_POLICY_PATH), DEFAULT_ARTIFACT_DIR, tmp_path / "work",
        promote_to=target, trainer=fake_trainer,
    )  # fmt: skip
    # The real learned scorer on both (the same weights): no regression, so it is installed.
    c = result.comparison
    assert c.rows == 30 and c.current_concordance == c.candidate_concordance > 0.9
    assert (
        result.promoted
        and (target / "model.npz").read_bytes() == (DEFAULT_ARTIFACT_DIR / "model.npz").read_bytes()
    )
    assert not list(target.glob(".*.promoting"))


async def test_a_candidate_that_does_worse_is_not_promoted(tmp_path: Path) -> None:
    outcomes, prompts = deployment(60)
    target = tmp_path / "installed"
    target.mkdir()
    (target / "model.npz").write_bytes(b"old")

    def scorer(artifact: Path, conversations: Sequence[tuple[tuple[str, str], ...]]) -> np.ndarray:
        hard = np.array([HARD in turns[-1][1] for turns in conversations], dtype=float)
        return hard if artifact == DEFAULT_ARTIFACT_DIR else 1 - hard  # the candidate ranks backwards

    result = retrain.retrain(
        outcomes, prompts, load_policy(DEFAULT_POLICY_PATH), DEFAULT_ARTIFACT_DIR, tmp_path / "work",
        promote_to=target, trainer=fake_trainer, scorer=scorer,
    )  # fmt: skip
    assert result.comparison.regression and not result.promoted
    assert (target / "model.npz").read_bytes() == b"old"
