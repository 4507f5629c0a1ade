"""Silent failures of small models on hard prompts, for demos (SIMULATOR_WEAK_MODEL_FAILURES=true).

A model's strength comes from its name; a prompt's difficulty from the same analysis that shapes the
answers. When the prompt is harder than the model, three in four such requests (chosen by a stable
hash, so the same request always behaves the same) come back empty or as a refusal: exactly what the router's
validators must catch and escalate.
"""

from __future__ import annotations

import re

from simulator.analysis import analyze, stable_seed
from simulator.faults import FaultSpec

# Difficulty a model handles; above it, it may fail. Larger models are never failed here.
_STRENGTH = (
    (re.compile(r"nano|gpt-oss-20b|8b|haiku|flash-lite"), 0.35),
    (re.compile(r"mini|gpt-oss-120b|70b|flash"), 0.55),
)


def strength(model: str) -> float:
    return next((level for pattern, level in _STRENGTH if pattern.search(model)), 1.0)


def silent_failure(model: str, prompt: str) -> FaultSpec | None:
    """The failure this model gives this prompt, or None when it answers well."""
    if analyze(prompt, model).score <= strength(model):
        return None
    seed = stable_seed("quality", model, prompt)
    if seed % 4 == 3:
        return None
    return FaultSpec(fault="empty" if seed % 2 == 0 else "refusal")
