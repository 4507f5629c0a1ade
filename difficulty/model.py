"""The learned model's head and its artifact: WordLlama embeddings + hand features in, a score out.

Inference is numpy only: the artifact (``model.npz``, written by ``make train-classifier``) holds the
weights of every part of the head, so neither scikit-learn nor a pickle is loaded at serving time.

The head has three parts, each estimating the routing gain of a prompt (how much more likely the
strong model is to answer it correctly than the cheap one):

- ``ridge_features``: ridge regression on standardised hand features, with separate slopes for
  multiple-choice and open prompts (the two "families");
- ``boosted_features``: two gradient-boosted tree ensembles on the hand features,
  P(strong right) - P(cheap right);
- ``ridge_embedding``: ridge regression on the hand features plus the WordLlama embedding.

A per-family weighted sum of the parts (weights chosen by cross-validation) is mapped to the score,
P(cheap model fails), by a per-family logistic calibration; the map is increasing, so the score ranks
prompts exactly as the blend does. See docs/classifier.md for the data, split and metrics.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difficulty import features as hand

__all__ = [
    "ARTIFACT_FILE",
    "CALIBRATION_FILE",
    "COMPONENTS",
    "FAMILIES",
    "MODEL_CARD_FILE",
    "SCHEMA_VERSION",
    "ArtifactError",
    "DifficultyModel",
    "Prediction",
    "artifact_version",
    "read_model_card",
]

ARTIFACT_FILE = "model.npz"
# Out-of-fold scores of the training prompts with their labels, for threshold calibration.
CALIBRATION_FILE = "calibration_oof.npz"
MODEL_CARD_FILE = "model_card.json"
# 2: identifiers stripped and the embedding read from the instruction window (schema 1 artifacts read
# the raw text and must be retrained).
SCHEMA_VERSION = 2
COMPONENTS = ("ridge_features", "boosted_features", "ridge_embedding")
FAMILIES = ("open", "multiple_choice")
_MC = hand.FEATURE_NAMES.index("is_multiple_choice")


class ArtifactError(RuntimeError):
    """The artifact is missing, unreadable, or was trained with other features."""


def artifact_version(arrays: Mapping[str, np.ndarray]) -> str:
    """``<schema>-<8 hex>``: a digest of the weights, so the same training run gives the same version."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        if name == "version":
            continue
        value = np.ascontiguousarray(arrays[name])
        digest.update(name.encode())
        digest.update(str(value.dtype).encode())
        digest.update(value.tobytes())
    return f"{SCHEMA_VERSION}-{digest.hexdigest()[:8]}"


def _design(z: np.ndarray, mc: np.ndarray) -> np.ndarray:
    """Family-interacted design: [z * mc, z * (1 - mc), mc]; rows are prompts."""
    mc = mc[:, None]
    return np.hstack([z * mc, z * (1.0 - mc), mc])


@dataclass(frozen=True, slots=True)
class _Trees:
    """A boosted ensemble of small regression trees, as flat arrays (leaf: left == -1)."""

    feature: np.ndarray  # (trees, nodes) int
    threshold: np.ndarray  # (trees, nodes) float32
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray  # (trees, nodes) float32, leaf values already scaled by the learning rate
    init: float
    depth: int

    def logit(self, x: np.ndarray) -> np.ndarray:
        """Raw log-odds for rows of ``x`` (all trees at once, one step per tree level)."""
        n_trees = self.feature.shape[0]
        rows = np.arange(x.shape[0])[:, None]
        trees = np.arange(n_trees)[None, :]
        node = np.zeros((x.shape[0], n_trees), dtype=np.intp)
        for _ in range(self.depth):
            feat = self.feature[trees, node]
            leaf = self.left[trees, node] < 0
            go_left = x[rows, np.maximum(feat, 0)] <= self.threshold[trees, node]
            nxt = np.where(go_left, self.left[trees, node], self.right[trees, node])
            node = np.where(leaf, node, nxt)
        return np.asarray(self.init + self.value[trees, node].sum(axis=1))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


@dataclass(frozen=True, slots=True)
class Prediction:
    """Per-prompt outputs of the head (arrays, one entry per row)."""

    score: np.ndarray  # P(cheap model fails), calibrated
    raw: np.ndarray  # the blended routing-gain estimate that the score is a monotone map of
    family: np.ndarray  # 1 = multiple choice, 0 = open
    familiarity: np.ndarray  # 0..1, how close the prompt is to the training data
    confidence: np.ndarray


class DifficultyModel:
    """The exported head, evaluated with numpy. Training (``classifier_training``) writes the arrays."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        names = tuple(str(n) for n in arrays["feature_names"])
        if names != hand.FEATURE_NAMES:
            raise ArtifactError("artifact was trained with different hand features; retrain it")
        # A written artifact carries its version (the head fitted inside cross-validation has none).
        schema = str(arrays["version"]).split("-")[0] if "version" in arrays else str(SCHEMA_VERSION)
        if schema != str(SCHEMA_VERSION):
            raise ArtifactError(f"artifact schema {schema}, this code reads {SCHEMA_VERSION}; retrain it")
        self.arrays = dict(arrays)
        self.version = str(arrays["version"]) if "version" in arrays else artifact_version(arrays)
        self.mean = np.asarray(arrays["feat_mean"], dtype=np.float64)
        self.scale = np.asarray(arrays["feat_scale"], dtype=np.float64)
        self.family_mean = np.asarray(arrays["feat_family_mean"], dtype=np.float64)
        self.rf_coef = np.asarray(arrays["rf_coef"], dtype=np.float64)
        self.rf_intercept = float(arrays["rf_intercept"])
        self.re_coef = np.asarray(arrays["re_coef"], dtype=np.float64)
        self.re_intercept = float(arrays["re_intercept"])
        self.emb_mean = np.asarray(arrays["emb_mean"], dtype=np.float64)
        self.emb_scale = np.asarray(arrays["emb_scale"], dtype=np.float64)
        self.heads = {
            head: _Trees(
                feature=np.asarray(arrays[f"{head}_feature"], dtype=np.intp),
                threshold=np.asarray(arrays[f"{head}_threshold"], dtype=np.float64),
                left=np.asarray(arrays[f"{head}_left"], dtype=np.intp),
                right=np.asarray(arrays[f"{head}_right"], dtype=np.intp),
                value=np.asarray(arrays[f"{head}_value"], dtype=np.float64),
                init=float(arrays[f"{head}_init"]),
                depth=int(arrays[f"{head}_depth"]),
            )
            for head in ("bs", "bc")
        }
        self.blend = np.asarray(arrays["blend"], dtype=np.float64)  # (families, components)
        self.platt = np.asarray(arrays["platt"], dtype=np.float64)  # (families, 2): slope, intercept
        self.centroids = np.asarray(arrays["centroids"], dtype=np.float32)
        self.familiar_lo = float(arrays["familiar_lo"])
        self.familiar_hi = float(arrays["familiar_hi"])
        self._fuse()

    def _fuse(self) -> None:
        """Folds standardisation, family interactions and the blend into one linear map per family, so a
        single prompt costs two dot products and, where the blend uses it, one pass over the trees."""
        d = len(hand.FEATURE_NAMES)
        n_emb = self.emb_mean.shape[0]
        inv = 1.0 / self.scale
        e_inv = 1.0 / self.emb_scale
        b_rf = self.blend[:, COMPONENTS.index("ridge_features")]
        b_re = self.blend[:, COMPONENTS.index("ridge_embedding")]
        self._boost_weight = self.blend[:, COMPONENTS.index("boosted_features")]
        self._wx = np.zeros((len(FAMILIES), d))
        self._we = np.zeros((len(FAMILIES), n_emb))
        self._k = np.zeros(len(FAMILIES))
        for f in range(len(FAMILIES)):
            # Design columns: [z * mc (d), z * (1 - mc) (d), mc (1)], then [e * mc, e * (1 - mc)].
            feat_cols = slice(0, d) if f == 1 else slice(d, 2 * d)
            emb_cols = slice(2 * d + 1, 2 * d + 1 + n_emb) if f == 1 else slice(2 * d + 1 + n_emb, None)
            mc_term_rf = self.rf_coef[2 * d] if f == 1 else 0.0
            mc_term_re = self.re_coef[2 * d] if f == 1 else 0.0
            rf = self.rf_coef[feat_cols] * inv
            re = self.re_coef[feat_cols] * inv
            re_e = self.re_coef[emb_cols] * e_inv
            rf_k = self.rf_intercept + mc_term_rf - self.mean @ rf
            re_k = self.re_intercept + mc_term_re - self.mean @ re - self.emb_mean @ re_e
            self._wx[f] = b_rf[f] * rf + b_re[f] * re
            self._we[f] = b_re[f] * re_e
            self._k[f] = b_rf[f] * rf_k + b_re[f] * re_k
        # Both tree ensembles as one flat array (node id = tree * nodes + index). Leaves point to
        # themselves with an infinite threshold, so every tree takes exactly ``depth`` steps.
        heads = (self.heads["bs"], self.heads["bc"])
        nodes = max(h.feature.shape[1] for h in heads)
        trees = sum(h.feature.shape[0] for h in heads)

        def stacked(name: str, fill: float) -> np.ndarray:
            out = np.full((trees, nodes), fill, dtype=np.float64)
            row = 0
            for h in heads:
                block = getattr(h, name)
                out[row : row + block.shape[0], : block.shape[1]] = block
                row += block.shape[0]
            return out

        left = stacked("left", -1).astype(np.intp)
        right = stacked("right", -1).astype(np.intp)
        leaf = left < 0
        own = np.broadcast_to(np.arange(nodes), (trees, nodes))
        base = np.arange(trees)[:, None] * nodes
        self._t_left = (np.where(leaf, own, left) + base).ravel()
        self._t_right = (np.where(leaf, own, right) + base).ravel()
        self._t_feature = stacked("feature", 0).astype(np.intp).ravel()
        self._t_threshold = np.where(leaf, np.inf, stacked("threshold", 0.0)).ravel()
        self._t_value = stacked("value", 0.0).ravel()
        self._t_root = np.arange(trees) * nodes
        self._t_depth = max(h.depth for h in heads)
        self._t_split = heads[0].feature.shape[0]

    def _boost_one(self, x: np.ndarray) -> float:
        """P(strong right) - P(cheap right) for one row of raw features."""
        node = self._t_root
        for _ in range(self._t_depth):
            go_left = x[self._t_feature[node]] <= self._t_threshold[node]
            node = np.where(go_left, self._t_left[node], self._t_right[node])
        value = self._t_value[node]
        strong = self.heads["bs"].init + value[: self._t_split].sum()
        cheap = self.heads["bc"].init + value[self._t_split :].sum()
        return float(1.0 / (1.0 + np.exp(-strong)) - 1.0 / (1.0 + np.exp(-cheap)))

    def predict_one(self, emb: np.ndarray, feats: np.ndarray) -> tuple[float, float, float, int]:
        """(score, confidence, familiarity, family) for one prompt: the fast path of ``predict``."""
        x = np.asarray(feats, dtype=np.float64)
        family = int(x[_MC] > 0.5)
        raw = float(x @ self._wx[family] + emb @ self._we[family]) + self._k[family]
        if self._boost_weight[family]:
            raw += self._boost_weight[family] * self._boost_one(x)
        slope, intercept = self.platt[family]
        score = float(1.0 / (1.0 + np.exp(-(slope * raw + intercept))))
        nearest = float((self.centroids @ emb).max())
        span = max(self.familiar_hi - self.familiar_lo, 1e-6)
        familiarity = min(max((nearest - self.familiar_lo) / span, 0.0), 1.0)
        confidence = 0.5 + (max(score, 1.0 - score) - 0.5) * familiarity
        return score, confidence, familiarity, family

    @classmethod
    def load(cls, artifact_dir: str | Path) -> DifficultyModel:
        path = Path(artifact_dir) / ARTIFACT_FILE
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as error:
            raise ArtifactError(f"cannot read classifier artifact {path}: {error}") from error
        return cls(arrays)

    def components(self, emb: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """(rows, components) routing-gain estimates of each part, in ``COMPONENTS`` order."""
        feats = np.asarray(feats, dtype=np.float64)
        z = (feats - self.mean) / self.scale
        mc = feats[:, _MC]
        design = _design(z, mc)
        ridge_features = design @ self.rf_coef + self.rf_intercept
        strong = _sigmoid(self.heads["bs"].logit(feats))
        cheap = _sigmoid(self.heads["bc"].logit(feats))
        e = (np.asarray(emb, dtype=np.float64) - self.emb_mean) / self.emb_scale
        mcc = mc[:, None]
        full = np.hstack([design, e * mcc, e * (1.0 - mcc)])
        ridge_embedding = full @ self.re_coef + self.re_intercept
        return np.stack([ridge_features, strong - cheap, ridge_embedding], axis=1)

    def cheap_fails(self, feats: np.ndarray) -> np.ndarray:
        """The cheap-model head alone, 1 - P(cheap right): what a plain "cheap fails" target ranks by."""
        return 1.0 - _sigmoid(self.heads["bc"].logit(np.asarray(feats, dtype=np.float64)))

    def blend_raw(self, components: np.ndarray, family: np.ndarray) -> np.ndarray:
        return np.asarray(np.einsum("ij,ij->i", components, self.blend[family]))

    def calibrate(self, raw: np.ndarray, family: np.ndarray) -> np.ndarray:
        slope, intercept = self.platt[family, 0], self.platt[family, 1]
        return _sigmoid(slope * raw + intercept)

    def familiarity(self, emb: np.ndarray) -> np.ndarray:
        nearest = (np.asarray(emb, dtype=np.float32) @ self.centroids.T).max(axis=1)
        span = max(self.familiar_hi - self.familiar_lo, 1e-6)
        return np.asarray(np.clip((nearest - self.familiar_lo) / span, 0.0, 1.0))

    def predict(self, emb: np.ndarray, feats: np.ndarray) -> Prediction:
        emb = np.atleast_2d(emb)
        feats = np.atleast_2d(feats)
        family = (feats[:, _MC] > 0.5).astype(np.intp)
        raw = self.blend_raw(self.components(emb, feats), family)
        score = self.calibrate(raw, family)
        familiarity = self.familiarity(emb)
        # The chance that the binary call "cheap model fails / succeeds" is right, if the score is
        # calibrated, shrunk toward 0.5 for prompts unlike anything in the training data.
        confidence = 0.5 + (np.maximum(score, 1.0 - score) - 0.5) * familiarity
        return Prediction(score, raw, family, familiarity, confidence)

    def top_signals(self, feats: np.ndarray, k: int = 2) -> list[tuple[str, float]]:
        """The hand features that move the linear part most for one prompt, relative to a typical
        prompt of its family: (name, signed contribution)."""
        z = (np.asarray(feats, dtype=np.float64) - self.mean) / self.scale
        mc = int(feats[_MC] > 0.5)
        d = len(hand.FEATURE_NAMES)
        coef = self.rf_coef[:d] if mc else self.rf_coef[d : 2 * d]
        contribution = (z - self.family_mean[mc]) * coef
        contribution[_MC] = 0.0
        order = np.argsort(-np.abs(contribution))[:k]
        return [(hand.FEATURE_NAMES[i], float(contribution[i])) for i in order if contribution[i] != 0]


def read_model_card(artifact_dir: str | Path) -> dict[str, object]:
    card: dict[str, object] = json.loads((Path(artifact_dir) / MODEL_CARD_FILE).read_text())
    return card
