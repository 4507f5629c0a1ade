"""make eval-classifier's parts: LLM-backed rows over the in-process simulator, the pipeline summary, the cache report."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pydantic_ai.models
import pytest

from classifier_training import evaluate
from difficulty import Conversation

PROMPTS = [
    Conversation.user("Is this review positive or negative? 'Great battery.'"),
    Conversation.user("Prove that there are infinitely many primes, step by step."),
    Conversation.user("Which of the following is a prime number?\nA. 21\nB. 27\nC. 29\nD. 33\nAnswer:"),
]


@pytest.fixture
def no_llm_configured(fresh_install_env: None) -> Iterator[None]:
    # The simulator is the only endpoint these tests can reach.
    with pydantic_ai.models.override_allow_model_requests(True):
        yield


def _score(scorer: evaluate.Scorer) -> dict[str, object]:
    assert isinstance(scorer, evaluate.StrategyScorer)
    try:
        latency = np.array([float(i) for i, _ in enumerate(PROMPTS)])
        scores = [scorer.score(c) for c in PROMPTS]
        assert all(0.0 <= s <= 1.0 for s in scores)
        return evaluate.pipeline_summary(scorer, latency)
    finally:
        scorer.close()


def test_the_cascade_row_runs_over_the_simulator_and_counts_escalations_and_cost(
    no_llm_configured: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLASSIFIER_CASCADE_MIN_CONFIDENCE", "1.0")  # every prompt goes to the LLM
    scorer = evaluate.SCORERS["cascade"]()
    assert isinstance(scorer, evaluate.StrategyScorer)
    assert scorer.name == "cascade (simulator)"

    summary = _score(scorer)

    assert summary["prompts"] == 3
    assert summary["sent to the LLM (escalation rate)"] == 1.0
    assert summary["LLM failed (local answer)"] == 0
    assert summary["overhead model"] == "claude-haiku-4-5"
    assert (
        isinstance(summary["LLM overhead $ / 1k prompts"], float)
        and summary["LLM overhead $ / 1k prompts"] > 0
    )


def test_a_confident_cascade_stays_local(no_llm_configured: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASSIFIER_CASCADE_MIN_CONFIDENCE", "0")
    summary = _score(evaluate.SCORERS["cascade"]())
    assert summary["sent to the LLM (escalation rate)"] == 0.0
    assert summary["LLM overhead $ / 1k prompts"] == 0.0 and summary["p50 ms, LLM-answered"] == "-"


def test_a_local_strategy_has_no_pipeline_row() -> None:
    assert _score(evaluate.SCORERS["heuristic"]()) == {}


def test_learned_behind_the_cache_reports_its_hits() -> None:
    scorer = evaluate.SCORERS["learned + cache"]()
    assert isinstance(scorer, evaluate.StrategyScorer)
    try:
        for conversation in (*PROMPTS, PROMPTS[0]):
            scorer.score(conversation)
        summary = evaluate.pipeline_summary(scorer, np.ones(4))
    finally:
        scorer.close()
    assert summary["cache hits"] == 0.25 and summary["sent to the LLM (escalation rate)"] == 0.0


def test_the_cache_report_is_registered_with_guard_off_and_on() -> None:
    (report,) = [r for name, r in evaluate.REPORTS.items() if name.startswith("semantic cache")]
    rows = report(None)  # type: ignore[arg-type]  # the cache report reads its own pairs
    off, on = rows["threshold 0.97, guard off"], rows["threshold 0.97, guard on"]
    assert float(str(on["false-hit rate"]).rstrip("%")) < float(str(off["false-hit rate"]).rstrip("%"))
    assert "threshold 0.97, guard on, holdout pairs only" in rows
