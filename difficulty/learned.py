"""The learned difficulty classifier behind the ``Strategy`` interface: a conversation's user turns, their
identifiers stripped, encoded (WordLlama embedding of the instruction window + hand features) and
scored by the exported head (``model.DifficultyModel``). See docs/classifier.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from difficulty import features as hand
from difficulty.conversation import Conversation
from difficulty.heuristic import detect_category
from difficulty.identifiers import strip_identifiers
from difficulty.model import FAMILIES, DifficultyModel
from difficulty.verdict import Verdict
from llmroute.common.v1 import common_pb2

__all__ = [
    "WINDOW_HEAD",
    "WINDOW_TAIL",
    "LearnedStrategy",
    "encode_prompts",
    "encode_turns",
    "window",
]

# Characters from the start and from the end of a prompt that the embedding and the category rules
# read: the instruction is almost always there. A long pasted document with an easy instruction then
# embeds like the instruction (its length is in the hand features), and the rules, which cost about a
# microsecond per 3 characters, stay fast.
WINDOW_HEAD = 200
WINDOW_TAIL = 100


def encode_turns(turns: Sequence[str], embed: object | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The model's input for user turns given oldest first: (embedding, hand features).

    Identifiers are stripped first (``identifiers.strip_identifiers``), so they change nothing. The hand
    features read the whole turn; the embedding reads its ``window``.
    """
    texts = [strip_identifiers(turn) for turn in turns]
    vectors = _embed([window(text) for text in texts], embed)
    if len(texts) == 1:
        return vectors[0], hand.prompt_features(texts[0])
    return hand.combine_turns(vectors, np.stack([hand.prompt_features(text) for text in texts]))


def encode_prompts(prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The model's inputs for single-turn prompts, as rows (training and evaluation, in batch)."""
    texts = [strip_identifiers(prompt) for prompt in prompts]
    vectors = _embed([window(text) for text in texts], None)
    return vectors, np.stack([hand.prompt_features(text) for text in texts])


def _embed(texts: list[str], embed: object | None) -> np.ndarray:
    from difficulty import embeddings

    embed_fn = embed or embeddings.embed
    with np.errstate(invalid="ignore", divide="ignore"):
        vectors = np.asarray(embed_fn(texts), dtype=np.float32)  # type: ignore[operator]
    if not np.isfinite(vectors).all():
        # An empty or all-unknown text has no tokens: WordLlama returns 0/0; use the zero vector.
        vectors = np.nan_to_num(vectors, nan=0.0, posinf=0.0, neginf=0.0)
    return vectors


class LearnedStrategy:
    """The learned classifier behind the ``Strategy`` interface; thread-safe once warmed up."""

    name = "learned"

    def __init__(self, artifact_dir: str | Path, embed: object | None = None) -> None:
        self.artifact_dir = Path(artifact_dir)
        self._embed = embed
        self._model: DifficultyModel | None = None

    @property
    def version(self) -> str:
        return f"learned/{self.model.version}"

    @property
    def model(self) -> DifficultyModel:
        if self._model is None:
            self._load()
        assert self._model is not None
        return self._model

    def _load(self) -> None:
        from difficulty import embeddings

        model = DifficultyModel.load(self.artifact_dir)
        if self._embed is None:
            embeddings.load()
        self._model = model

    async def warm_up(self) -> None:
        await asyncio.to_thread(self._load)
        self.classify_sync(Conversation.user("warm up"))

    async def classify(self, conversation: Conversation) -> Verdict:
        return self.classify_sync(conversation)

    def classify_sync(self, conversation: Conversation) -> Verdict:
        model = self.model
        turns = hand.user_turns([(m.role, m.content) for m in conversation.messages])
        emb, feats = encode_turns(turns, self._embed)
        score, confidence, familiarity, family = model.predict_one(emb, feats)
        category = detect_category(window(turns[-1]))
        if category in (common_pb2.CATEGORY_CHAT, common_pb2.CATEGORY_QUESTION_ANSWERING) and len(turns) > 1:
            # A bare follow-up ("and for all 50 states?") belongs to the thread's task.
            category = detect_category("\n".join(window(t) for t in turns))
        signals = ", ".join(f"{name}{'+' if c > 0 else '-'}" for name, c in model.top_signals(feats))
        rationale = (
            f"learned: p(cheap fails)={score:.2f}, {FAMILIES[family]} prompt, {len(turns)} user turn(s), "
            f"familiarity {familiarity:.2f}" + (f", signals {signals}" if signals else "")
        )
        return Verdict(
            # Not rounded: equal scores are routed together, so rounding would create ties.
            score=min(max(score, 0.0), 1.0),
            confidence=round(confidence, 4),
            category=category,
            rationale=rationale,
            source=common_pb2.CLASSIFIER_SOURCE_LOCAL_MODEL,
            version=self.version,
            family=FAMILIES[family],
        )


def window(text: str) -> str:
    """The start and the end of a prompt (``WINDOW_HEAD`` and ``WINDOW_TAIL`` characters): where the
    instruction is."""
    if len(text) <= WINDOW_HEAD + WINDOW_TAIL:
        return text
    return text[:WINDOW_HEAD] + "\n" + text[-WINDOW_TAIL:]
