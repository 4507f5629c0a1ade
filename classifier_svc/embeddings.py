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
    """L2-normalised float32 embeddings, one row per text.

    Recent texts are remembered: the semantic cache and the learned model embed the same prompt
    for one classification, and this way it is embedded once.
    """
    return np.stack([_embed_one(text) for text in texts])


@functools.lru_cache(maxsize=4096)
def _embed_one(text: str) -> np.ndarray:
    vector = np.asarray(load().embed([text], norm=True)[0], dtype=np.float32)
    vector.flags.writeable = False  # shared by every caller that embeds the same text
    return vector


def forget() -> None:
    """Drop the remembered embeddings (benchmarks measure cold prompts)."""
    _embed_one.cache_clear()
