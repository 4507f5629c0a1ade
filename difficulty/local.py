"""The local model a service runs in its own process: the learned model of an artifact directory, or the
keyword heuristic when there is no artifact."""

from __future__ import annotations

from pathlib import Path

import structlog

from difficulty.heuristic import HeuristicStrategy
from difficulty.learned import LearnedStrategy
from difficulty.model import ARTIFACT_FILE
from difficulty.verdict import Strategy

__all__ = ["DEFAULT_ARTIFACT_DIR", "load_local_model"]

log = structlog.get_logger()

# The committed artifact (model.npz, model_card.json, calibration_oof.npz), shipped inside this package
# as package data: found the same way from a checkout and from an installed wheel.
DEFAULT_ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"


def load_local_model(artifact_dir: str | Path = DEFAULT_ARTIFACT_DIR) -> Strategy:
    """The learned model of `artifact_dir`, or the heuristic when it holds no artifact (said in a log
    event). Nothing is read yet: `await model.warm_up()` loads it before serving."""
    # A missing artifact is a supported set-up (heuristic only); one that exists but does not load is
    # an error, raised by warm_up before the service reports SERVING.
    artifact = Path(artifact_dir) / ARTIFACT_FILE
    if not artifact.is_file():
        log.warning(
            "local_model_unavailable", reason="no artifact", artifact=str(artifact), fallback="heuristic"
        )
        return HeuristicStrategy()
    return LearnedStrategy(artifact_dir)
