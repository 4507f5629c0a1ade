"""WordLlama sentence embeddings, loaded offline from the installed wheel (256-d, numpy only)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import wordllama


@functools.cache
def load() -> wordllama.WordLlamaInference:
    # The loader looks for the tokenizer in the wrong folder and then tries to download: point it at
    # the package's own folder, where the wheel ships weights and tokenizer, and forbid downloads.
    return wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)


def embed(texts: list[str]) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text."""
    vectors = load().embed(texts, norm=True)
    return np.asarray(vectors, dtype=np.float32)
