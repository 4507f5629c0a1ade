"""Classifier test fixtures."""

from __future__ import annotations

import os

import pytest

from classifier_svc.strategies.llm import PROVIDER_KEY_ENV


@pytest.fixture
def fresh_install_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a fresh install: no CLASSIFIER_* variable, no provider key."""
    for name in list(os.environ):
        if name.startswith("CLASSIFIER_"):
            monkeypatch.delenv(name)
    for names in PROVIDER_KEY_ENV.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
