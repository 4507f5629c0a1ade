"""Builds the configured classification strategy from settings."""

from __future__ import annotations

from classifier_svc.settings import ClassifierSettings
from classifier_svc.strategies.base import Strategy
from classifier_svc.strategies.heuristic import HeuristicStrategy


def build_strategy(settings: ClassifierSettings) -> Strategy:
    return HeuristicStrategy()
