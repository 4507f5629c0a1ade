"""The learned strategy's contract, on the committed artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from difficulty import DEFAULT_ARTIFACT_DIR, ArtifactError, Conversation, LearnedStrategy, Verdict
from difficulty.model import ARTIFACT_FILE, MODEL_CARD_FILE, DifficultyModel, artifact_version
from llmroute.common.v1 import common_pb2

HARD_SQL = (
    "Write a SQL query for Postgres that computes, for each county in California, the median household income and "
    "the 90th percentile, ignoring NULL incomes and counties with fewer than 30 households, using the table "
    "households(state, county, income). Explain how you handle ties and why percentile_cont is appropriate."
)
FOLLOW_UP = "now do the same for all 50 states"


@pytest.fixture(scope="module")
def strategy() -> LearnedStrategy:
    learned = LearnedStrategy(DEFAULT_ARTIFACT_DIR)
    learned.classify_sync(Conversation.user("warm up"))
    return learned


def test_verdict_contract(strategy: LearnedStrategy) -> None:
    prompts = [
        "Hi!",
        "Translate 'thank you' into German.",
        "Prove that there are infinitely many primes of the form 4k + 3.",
        "Which of the following is a prime number?\nA. 21\nB. 27\nC. 29\nD. 33\nAnswer:",
        "",
        "x" * 30_000,
    ]
    for prompt in prompts:
        verdict = strategy.classify_sync(Conversation.user(prompt))
        assert isinstance(verdict, Verdict)
        assert 0.0 <= verdict.score <= 1.0
        assert 0.5 <= verdict.confidence <= 1.0
        assert verdict.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
        assert verdict.category != common_pb2.CATEGORY_UNSPECIFIED
        assert verdict.version == strategy.version
        # The rationale explains without quoting the prompt.
        assert prompt[:20] not in verdict.rationale or not prompt


def test_deterministic(strategy: LearnedStrategy) -> None:
    conversation = Conversation.user("Plan a three-day trip to Kyoto for two people in spring.")
    first = strategy.classify_sync(conversation)
    assert all(strategy.classify_sync(conversation) == first for _ in range(3))


async def test_async_matches_sync(strategy: LearnedStrategy) -> None:
    conversation = Conversation.user("Summarize this: the meeting moved to Friday.")
    await strategy.warm_up()
    assert await strategy.classify(conversation) == strategy.classify_sync(conversation)


def test_follow_up_inherits_the_thread(strategy: LearnedStrategy) -> None:
    alone = strategy.classify_sync(Conversation.user(FOLLOW_UP))
    thread = strategy.classify_sync(
        Conversation.of(
            ("user", HARD_SQL), ("assistant", "SELECT county, percentile_cont(0.5) ..."), ("user", FOLLOW_UP)
        )
    )
    hard = strategy.classify_sync(Conversation.user(HARD_SQL))
    assert thread.score > alone.score + 0.1
    assert thread.score >= 0.8 * hard.score
    assert thread.category == common_pb2.CATEGORY_CODE


def test_system_prompt_and_assistant_turns_do_not_change_the_score(strategy: LearnedStrategy) -> None:
    base = strategy.classify_sync(Conversation.user("What is the capital of Peru?"))
    wrapped = strategy.classify_sync(
        Conversation.of(
            ("system", "You are a meticulous legal analyst. " * 40), ("user", "What is the capital of Peru?")
        )
    )
    assert wrapped.score == base.score


def test_harder_prompts_score_higher(strategy: LearnedStrategy) -> None:
    easy = [
        "Hi, how are you?",
        "Translate 'good night' into Spanish.",
        "Is this spam? 'You won a free cruise!'",
    ]
    hard = [
        "Implement a lock-free multi-producer multi-consumer queue in C++ and justify every memory_order you use.",
        "Prove that every planar graph is 5-colorable, with a complete proof.",
        "A tank is filled by pipe A in 6 hours and by pipe B in 4 hours, and drained by pipe C in 8 hours. If all "
        "three are opened at 9 am but C is closed at 11 am, when is the tank full?",
    ]
    easy_scores = [strategy.classify_sync(Conversation.user(p)).score for p in easy]
    hard_scores = [strategy.classify_sync(Conversation.user(p)).score for p in hard]
    assert max(easy_scores) < min(hard_scores)


def test_version_is_the_artifact_digest(strategy: LearnedStrategy) -> None:
    card = json.loads((DEFAULT_ARTIFACT_DIR / MODEL_CARD_FILE).read_text())
    with np.load(DEFAULT_ARTIFACT_DIR / ARTIFACT_FILE, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    assert strategy.version == f"learned/{card['version']}"
    assert str(arrays["version"]) == artifact_version(arrays) == card["version"]


def test_artifact_is_small_and_pickle_free() -> None:
    assert (DEFAULT_ARTIFACT_DIR / ARTIFACT_FILE).stat().st_size < 3_000_000
    DifficultyModel.load(DEFAULT_ARTIFACT_DIR)  # allow_pickle=False inside


def test_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        LearnedStrategy(tmp_path).classify_sync(Conversation.user("hi"))


def test_artifact_with_other_features_is_refused(tmp_path: Path) -> None:
    shutil.copy(DEFAULT_ARTIFACT_DIR / ARTIFACT_FILE, tmp_path / ARTIFACT_FILE)
    with np.load(tmp_path / ARTIFACT_FILE, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["feature_names"] = arrays["feature_names"][::-1]
    with pytest.raises(ArtifactError):
        DifficultyModel(arrays)


def test_batch_and_single_predictions_agree(strategy: LearnedStrategy) -> None:
    from difficulty import embeddings
    from difficulty import features as hand

    prompts = ["Write a haiku about rain.", "Solve 3x + 7 = 2x - 5.", "Which is larger?\nA. 2\nB. 3\nAnswer:"]
    emb = embeddings.embed(prompts)
    feats = np.stack([hand.prompt_features(p) for p in prompts])
    batch = strategy.model.predict(emb, feats).score
    single = [strategy.classify_sync(Conversation.user(p)).score for p in prompts]
    np.testing.assert_allclose(batch, single, rtol=1e-6)
