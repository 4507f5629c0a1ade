"""WordLlama sentence embeddings, loaded offline from the installed wheel (256-d, numpy only)."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
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
    for one classification, and this way it is embedded once. They are remembered by a SHA-256 digest
    of the text, never the text: a 400,000-character prompt costs the cache 32 bytes of key and its
    1 KiB vector, so the cache's memory is bounded (about 4.3 MiB at 4,096 entries) whatever is sent.
    """
    return np.stack([_embed_one(text) for text in texts])


_REMEMBERED = 4096
_vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()
_lock = threading.Lock()  # classifications may embed from worker threads


def _embed_one(text: str) -> np.ndarray:
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    with _lock:
        vector = _vectors.get(key)
        if vector is not None:
            _vectors.move_to_end(key)
            return vector
    vector = np.asarray(load().embed([text], norm=True)[0], dtype=np.float32)
    vector.flags.writeable = False  # shared by every caller that embeds the same text
    with _lock:
        _vectors[key] = vector
        while len(_vectors) > _REMEMBERED:
            _vectors.popitem(last=False)
    return vector


def remembered() -> int:
    """How many embeddings are remembered now."""
    return len(_vectors)


def forget() -> None:
    """Drop the remembered embeddings (benchmarks measure cold prompts)."""
    with _lock:
        _vectors.clear()
