"""What the service runs with default settings and no LLM key: the learned model, in a cascade, behind the cache."""

from __future__ import annotations

import pytest

from classifier_svc.cache import CachedStrategy
from classifier_svc.factory import build_strategy
from classifier_svc.settings import ClassifierSettings
from classifier_svc.strategies.cascade import CascadeStrategy
from difficulty import Conversation, LearnedStrategy
from llmroute.common.v1 import common_pb2
from service_kit.policy import DEFAULT_POLICY_PATH, Thresholds, load_policy

POLICY_THRESHOLDS = load_policy(DEFAULT_POLICY_PATH).thresholds


def policy_thresholds() -> Thresholds:
    """The shipped policy's thresholds (the server passes its live policy's)."""
    return POLICY_THRESHOLDS


@pytest.fixture
def default_settings(fresh_install_env: None) -> ClassifierSettings:
    """ClassifierSettings() as a fresh install sees it: no CLASSIFIER_* variable, no provider key."""
    return ClassifierSettings()


async def test_defaults_give_the_cached_cascade_over_the_learned_model(
    default_settings: ClassifierSettings,
) -> None:
    strategy = build_strategy(default_settings, policy_thresholds)

    assert isinstance(strategy, CachedStrategy)
    cascade = strategy.inner
    assert isinstance(cascade, CascadeStrategy)
    assert cascade.llm is None  # no key, no base URL: no LLM classifier
    assert isinstance(cascade.local, LearnedStrategy)

    await strategy.warm_up()
    conversation = Conversation.user(
        "Write a SQL query that returns the ten most recent orders per customer."
    )
    first = await strategy.classify(conversation)
    again = await strategy.classify(conversation)

    assert first.source == common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL
    assert first.version.startswith("learned/")
    assert again.source == common_pb2.CLASSIFIER_SOURCE_CACHE
    assert again.version == first.version and again.score == first.score
    assert (strategy.stats.misses, strategy.stats.hits, cascade.stats.local) == (1, 1, 1)
