"""Classifier test fixtures."""

from __future__ import annotations

import os

import pytest

from service_kit.providers import PROVIDER_KEYS


@pytest.fixture
def fresh_install_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a fresh install: no CLASSIFIER_* variable, no provider key."""
    for name in list(os.environ):
        if name.startswith("CLASSIFIER_"):
            monkeypatch.delenv(name)
    for name in PROVIDER_KEYS.values():
        monkeypatch.delenv(name, raising=False)
