"""Trains the learned difficulty classifier and writes its artifact: ``make train-classifier``.

Steps, all seeded and single-process (the same inputs give the same weights and version):

1. Inputs: the *train* part of the fixed split (``data.split_outcomes``) plus the train part of the
   app prompts. Nothing from the held-out part is used for fitting or for any choice.
2. Cross-validation inside train, shaped like the held-out test: each repeat holds out 30% of the
   remaining MMLU subjects (whole subjects), 30% of GSM8K and 30% of the app prompts.
3. Blend weights of the three head parts are chosen per family (multiple choice / open) on those
   out-of-fold predictions; a per-family logistic map turns the blend into P(cheap model fails).
4. The parts are refitted on all of train and exported as plain arrays (``model.npz``) with
   ``model_card.json`` (data, split, features, head, CV metrics, and the held-out metrics of the
   final artifact, computed once at the end and used for nothing).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier_svc import embeddings
from classifier_svc import features as hand
from classifier_svc.settings import DEFAULT_ARTIFACT_DIR
from classifier_svc.strategies.learned import (
    ARTIFACT_FILE,
    CALIBRATION_FILE,
    COMPONENTS,
    FAMILIES,
    MODEL_CARD_FILE,
    SCHEMA_VERSION,
    DifficultyModel,
    artifact_version,
    encode_turns,
)
from classifier_svc.training import data, metrics

# Fixed hyperparameters, chosen by cross-validation inside the train split during development.
RIDGE_FEATURES_ALPHA = 1000.0
RIDGE_EMBEDDING_ALPHA = 3000.0
BOOSTING = {
    "n_estimators": 150,
    "learning_rate": 0.05,
    "max_depth": 2,
    "min_samples_leaf": 100,
    "subsample": 1.0,
    "random_state": 0,
}
# App prompts are few; this weight gives them a voice next to the benchmark rows.
APP_WEIGHT = 1.5
CV_REPEATS = 10
CV_FRACTION = 0.30
CV_SEED = 20240501
BLEND_GRID = (0.0, 0.5, 1.0)
CENTROIDS = 48
# Familiarity is 0 at the 2nd percentile of the training prompts' similarity to the nearest centroid
# and 1 from the 20th percentile up (sources weighted equally).
FAMILIAR_PERCENTILES = (2.0, 20.0)


@dataclass(frozen=True)
class Table:
    """Model inputs and labels, one row per prompt (benchmark) or conversation (app)."""

    emb: np.ndarray  # (n, 256) float32
    feats: np.ndarray  # (n, d) float32
    dataset: np.ndarray  # "mmlu" | "gsm8k" | "app"
    group: np.ndarray  # MMLU subject, "gsm8k", or app category
    cheap: np.ndarray  # P(cheap right): 0/1 for benchmarks, 1 - hand label for app prompts
    strong: np.ndarray  # P(strong right): 0/1, or 1 for app prompts (assumed)
    weight: np.ndarray
    key: np.ndarray  # prompt text or app id: what the CV splits hash on

    def __len__(self) -> int:
        return int(self.emb.shape[0])

    @property
    def gain(self) -> np.ndarray:
        return self.strong - self.cheap

    @property
    def family(self) -> np.ndarray:
        return (self.feats[:, hand.FEATURE_NAMES.index("is_multiple_choice")] > 0.5).astype(np.intp)

    def take(self, rows: np.ndarray) -> Table:
        return Table(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def build_table(outcomes: Sequence[data.Outcome], apps: Sequence[data.AppPrompt]) -> Table:
    prompts = [o.prompt for o in outcomes]
    emb = [np.nan_to_num(embeddings.embed(prompts))] if prompts else []
    feats = [np.stack([hand.prompt_features(p) for p in prompts])] if prompts else []
    for app in apps:
        e, f = encode_turns(hand.user_turns(app.messages))
        emb.append(e[None, :])
        feats.append(f[None, :])
    return Table(
        emb=np.concatenate(emb).astype(np.float32),
        feats=np.concatenate(feats).astype(np.float32),
        dataset=np.array([o.dataset for o in outcomes] + ["app"] * len(apps)),
        group=np.array([o.group for o in outcomes] + [a.category for a in apps]),
        cheap=np.array([float(o.cheap_ok) for o in outcomes] + [1.0 - a.target for a in apps]),
        strong=np.array([float(o.strong_ok) for o in outcomes] + [1.0] * len(apps)),
        weight=np.array([1.0] * len(outcomes) + [APP_WEIGHT] * len(apps)),
        key=np.array(prompts + [a.id for a in apps], dtype=object),
    )


# ----------------------------------------------------------------------------------------------
# Fitting the parts of the head (scikit-learn at training time only), exported as arrays.


def _soft_binary(x: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with a soft label p become a label-1 row weighted p·w and a label-0 row weighted (1-p)·w."""
    hard = (p == 0) | (p == 1)
    soft = ~hard
    xs = np.concatenate([x[hard], x[soft], x[soft]])
    ys = np.concatenate([p[hard], np.ones(soft.sum()), np.zeros(soft.sum())])
    ws = np.concatenate([w[hard], w[soft] * p[soft], w[soft] * (1 - p[soft])])
    return xs, ys.astype(int), ws


def _export_trees(model: object, prefix: str) -> dict[str, np.ndarray]:
    """A fitted binary GradientBoostingClassifier as padded node arrays (values scaled by the rate)."""
    trees = [est.tree_ for est in model.estimators_[:, 0]]  # type: ignore[attr-defined]
    nodes = max(t.node_count for t in trees)
    shape = (len(trees), nodes)
    feature = np.zeros(shape, dtype=np.int16)
    threshold = np.zeros(shape, dtype=np.float64)
    left = np.full(shape, -1, dtype=np.int16)
    right = np.full(shape, -1, dtype=np.int16)
    value = np.zeros(shape, dtype=np.float64)
    rate = model.learning_rate  # type: ignore[attr-defined]
    for i, t in enumerate(trees):
        n = t.node_count
        feature[i, :n] = np.maximum(t.feature, 0)
        threshold[i, :n] = t.threshold
        left[i, :n] = t.children_left
        right[i, :n] = t.children_right
        value[i, :n] = t.value[:, 0, 0] * rate
    # The prior log-odds that scikit-learn starts every prediction from.
    init = float(model._raw_predict_init(np.zeros((1, trees[0].n_features)))[0, 0])  # type: ignore[attr-defined]
    return {
        f"{prefix}_feature": feature,
        f"{prefix}_threshold": threshold,
        f"{prefix}_left": left,
        f"{prefix}_right": right,
        f"{prefix}_value": value,
        f"{prefix}_init": np.array(init),
        f"{prefix}_depth": np.array(int(model.max_depth)),  # type: ignore[attr-defined]
    }


def fit_parts(table: Table) -> dict[str, np.ndarray]:
    """Fits the three parts on ``table`` and returns their arrays."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import Ridge

    feats = table.feats.astype(np.float64)
    mean = feats.mean(axis=0)
    scale = feats.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (feats - mean) / scale
    mc = table.family.astype(np.float64)
    mcc = mc[:, None]
    design = np.hstack([z * mcc, z * (1 - mcc), mcc])
    emb = table.emb.astype(np.float64)
    emb_mean = emb.mean(axis=0)
    emb_scale = emb.std(axis=0)
    emb_scale[emb_scale < 1e-9] = 1.0
    e = (emb - emb_mean) / emb_scale
    full = np.hstack([design, e * mcc, e * (1 - mcc)])

    ridge_features = Ridge(alpha=RIDGE_FEATURES_ALPHA).fit(design, table.gain, sample_weight=table.weight)
    ridge_embedding = Ridge(alpha=RIDGE_EMBEDDING_ALPHA).fit(full, table.gain, sample_weight=table.weight)
    # Where a typical prompt of each family sits, so explanations compare a prompt with its own kind.
    family_mean = np.stack(
        [z[mc == f].mean(axis=0) if (mc == f).any() else np.zeros(z.shape[1]) for f in range(len(FAMILIES))]
    )
    arrays: dict[str, np.ndarray] = {
        "feature_names": np.array(hand.FEATURE_NAMES),
        "feat_family_mean": family_mean,
        "feat_mean": mean,
        "feat_scale": scale,
        "rf_coef": ridge_features.coef_,
        "rf_intercept": np.array(float(ridge_features.intercept_)),
        "emb_mean": emb_mean,
        "emb_scale": emb_scale,
        "re_coef": ridge_embedding.coef_,
        "re_intercept": np.array(float(ridge_embedding.intercept_)),
    }
    for prefix, target in (("bs", table.strong), ("bc", table.cheap)):
        x, y, w = _soft_binary(table.feats, target, table.weight)
        boosted = GradientBoostingClassifier(**BOOSTING).fit(x, y, sample_weight=w)  # type: ignore[arg-type]
        arrays.update(_export_trees(boosted, prefix))
    return arrays


def _with_defaults(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parts plus neutral blend, calibration and familiarity, enough to evaluate the parts."""
    return {
        **parts,
        "blend": np.ones((len(FAMILIES), len(COMPONENTS))),
        "platt": np.tile([1.0, 0.0], (len(FAMILIES), 1)),
        "centroids": np.zeros((1, parts["emb_mean"].shape[0]), dtype=np.float32),
        "familiar_lo": np.array(0.0),
        "familiar_hi": np.array(1.0),
    }


# ----------------------------------------------------------------------------------------------
# Cross-validation inside the train split.


def cv_splits(table: Table, repeats: int = CV_REPEATS) -> list[np.ndarray]:
    """Boolean masks of held-out rows: 30% of MMLU subjects, of GSM8K rows and of app prompts."""
    masks = []
    for r in range(repeats):
        rng = np.random.default_rng(CV_SEED + r)
        held = np.zeros(len(table), dtype=bool)
        subjects = np.array(sorted(set(table.group[table.dataset == "mmlu"])))
        chosen = set(rng.choice(subjects, size=round(CV_FRACTION * len(subjects)), replace=False))
        held |= (table.dataset == "mmlu") & np.isin(table.group, list(chosen))
        for name in ("gsm8k", "app"):
            rows = np.flatnonzero(table.dataset == name)
            held[rng.choice(rows, size=round(CV_FRACTION * len(rows)), replace=False)] = True
        masks.append(held)
    return masks


@dataclass
class CvRun:
    mask: np.ndarray
    parts: np.ndarray  # (held-out rows, components)
    cheap_fails: np.ndarray  # the cheap-model head alone (the "cheap fails" target, for reference)


def _pooled_apgr(
    runs: Sequence[CvRun], table: Table, scores: Sequence[np.ndarray], dataset: str
) -> dict[str, float]:
    """Gap-weighted mean APGR over repeats (stable when a repeat's accuracy gap is small), mean share at 95%."""
    num = den = 0.0
    shares = []
    for run, score in zip(runs, scores, strict=True):
        rows = table.dataset[run.mask] == dataset
        report = metrics.routing_report(
            score[rows], table.cheap[run.mask][rows], table.strong[run.mask][rows]
        )
        gap = report.acc_strong - report.acc_cheap
        num += report.apgr * gap
        den += gap
        shares.append(report.strong_share_at_95)
    return {"apgr": num / den if den else float("nan"), "strong_share_at_95": float(np.mean(shares))}


def _app_concordance(runs: Sequence[CvRun], table: Table, scores: Sequence[np.ndarray]) -> float:
    values = []
    for run, score in zip(runs, scores, strict=True):
        rows = table.dataset[run.mask] == "app"
        values.append(metrics.concordance(score[rows], 1.0 - table.cheap[run.mask][rows]))
    return float(np.nanmean(values))


def cross_validate(table: Table, log: bool = True) -> list[CvRun]:
    runs = []
    for i, held in enumerate(cv_splits(table)):
        started = time.perf_counter()
        model = DifficultyModel(_with_defaults(fit_parts(table.take(~held))))
        test = table.take(held)
        runs.append(CvRun(held, model.components(test.emb, test.feats), model.cheap_fails(test.feats)))
        if log:
            print(
                f"  cv repeat {i + 1}/{CV_REPEATS}: {time.perf_counter() - started:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    return runs


def _knn_scores(table: Table, runs: Sequence[CvRun], k: int = 100) -> list[np.ndarray]:
    """A reference point only (not exportable into the head): mean gain of the k nearest train prompts."""
    out = []
    for run in runs:
        train_emb, test_emb = table.emb[~run.mask], table.emb[run.mask]
        similarity = test_emb @ train_emb.T
        nearest = np.argpartition(-similarity, k, axis=1)[:, :k]
        out.append(table.gain[~run.mask][nearest].mean(axis=1))
    return out


def choose_blend(table: Table, runs: Sequence[CvRun]) -> tuple[np.ndarray, dict[str, object]]:
    """Per-family blend weights maximising the CV objective; fewer parts win ties."""
    report: dict[str, object] = {}
    weights = np.zeros((len(FAMILIES), len(COMPONENTS)))
    candidates = [w for w in itertools.product(BLEND_GRID, repeat=len(COMPONENTS)) if any(w)]
    candidates.sort(key=lambda w: (sum(x > 0 for x in w), w))

    def objective(family: int, w: Sequence[float]) -> dict[str, float]:
        scores = [run.parts @ np.asarray(w) for run in runs]
        if FAMILIES[family] == "multiple_choice":
            mmlu = _pooled_apgr(runs, table, scores, "mmlu")
            return {"objective": mmlu["apgr"], "mmlu_apgr": mmlu["apgr"]}
        gsm8k = _pooled_apgr(runs, table, scores, "gsm8k")
        app = _app_concordance(runs, table, scores)
        return {"objective": 0.5 * (gsm8k["apgr"] + app), "gsm8k_apgr": gsm8k["apgr"], "app_concordance": app}

    for family in range(len(FAMILIES)):
        best: tuple[float, Sequence[float], dict[str, float]] | None = None
        for w in candidates:
            result = objective(family, w)
            if best is None or result["objective"] > best[0] + 1e-9:
                best = (result["objective"], w, result)
        assert best is not None
        weights[family] = best[1]
        report[FAMILIES[family]] = {"weights": dict(zip(COMPONENTS, best[1], strict=True)), **best[2]}
    return weights, report


def fit_calibration(table: Table, runs: Sequence[CvRun], blend: np.ndarray) -> np.ndarray:
    """Per family, a logistic map from the out-of-fold blend to P(cheap fails and strong succeeds).

    The slope is kept > 0 so the map preserves the blend's ranking.
    """
    from sklearn.linear_model import LogisticRegression

    platt = np.zeros((len(FAMILIES), 2))
    raw = np.concatenate([(run.parts * blend[table.family[run.mask]]).sum(axis=1) for run in runs])
    rows = np.concatenate([np.flatnonzero(run.mask) for run in runs])
    for family in range(len(FAMILIES)):
        sel = table.family[rows] == family
        useful = (1.0 - table.cheap[rows][sel]) * table.strong[rows][sel]
        x, y, w = _soft_binary(raw[sel, None], useful, table.weight[rows][sel])
        fitted = LogisticRegression(C=100.0).fit(x, y, sample_weight=w)
        platt[family] = [max(float(fitted.coef_[0, 0]), 1e-3), float(fitted.intercept_[0])]
    return platt


def fit_familiarity(table: Table) -> dict[str, np.ndarray]:
    """Centroids of the training embeddings, each source (MMLU, GSM8K, app) weighted equally."""
    from sklearn.cluster import KMeans

    weight = np.zeros(len(table))
    for name in np.unique(table.dataset):
        rows = table.dataset == name
        weight[rows] = 1.0 / rows.sum()
    kmeans = KMeans(n_clusters=CENTROIDS, n_init=4, random_state=0).fit(table.emb, sample_weight=weight)
    centroids = kmeans.cluster_centers_
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    nearest = (table.emb @ centroids.T).max(axis=1)
    order = np.argsort(nearest)
    cumulative = np.cumsum(weight[order]) / weight.sum()
    lo, hi = (float(nearest[order][np.searchsorted(cumulative, q / 100)]) for q in FAMILIAR_PERCENTILES)
    return {
        "centroids": centroids.astype(np.float32),
        "familiar_lo": np.array(lo),
        "familiar_hi": np.array(hi),
    }


def oof_calibration_set(
    table: Table, runs: Sequence[CvRun], blend: np.ndarray, platt: np.ndarray
) -> dict[str, np.ndarray]:
    """Out-of-fold scores of the train rows (mean over the repeats that held each row out), with labels.

    ``make calibrate`` sets the policy thresholds from these: scores of prompts the model did not see.
    """
    total = np.zeros(len(table))
    count = np.zeros(len(table))
    for run in runs:
        family = table.family[run.mask]
        raw = (run.parts * blend[family]).sum(axis=1)
        total[run.mask] += 1.0 / (1.0 + np.exp(-(platt[family, 0] * raw + platt[family, 1])))
        count[run.mask] += 1
    seen = count > 0
    return {
        "score": (total[seen] / count[seen]).astype(np.float32),
        "cheap": table.cheap[seen].astype(np.float32),
        "strong": table.strong[seen].astype(np.float32),
        "dataset": table.dataset[seen].astype("U8"),
    }


# ----------------------------------------------------------------------------------------------
# Writing the artifact.


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but byte-for-byte reproducible (fixed member timestamps, sorted)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    path.write_bytes(buffer.getvalue())


def _round(value: object) -> object:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


def _count(table: Table, dataset: str) -> int:
    return int((table.dataset == dataset).sum())


def train(artifact_dir: Path, log: bool = True) -> dict[str, object]:
    started = time.perf_counter()
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if log else (lambda *a: None)
    outcomes = data.load_outcomes()
    train_rows, test_rows = data.split_outcomes(outcomes)
    apps_train, apps_test = data.split_app_prompts(data.load_app_prompts())
    say(f"train: {len(train_rows)} benchmark prompts + {len(apps_train)} app prompts; encoding")
    table = build_table(train_rows, apps_train)

    artifact_dir.mkdir(parents=True, exist_ok=True)
    say(f"cross-validation: {CV_REPEATS} repeats")
    runs = cross_validate(table, log)
    blend, blend_report = choose_blend(table, runs)
    platt = fit_calibration(table, runs, blend)

    cv_report: dict[str, object] = {}
    for i, name in enumerate(COMPONENTS):
        scores = [run.parts[:, i] for run in runs]
        cv_report[name] = _cv_summary(table, runs, scores)
    blended = [(run.parts * blend[table.family[run.mask]]).sum(axis=1) for run in runs]
    cv_report["blend (chosen)"] = _cv_summary(table, runs, blended)
    cv_report["boosted P(cheap fails) (target reference, not used)"] = _cv_summary(
        table, runs, [r.cheap_fails for r in runs]
    )
    cv_report["knn_embedding (reference, not used)"] = _cv_summary(table, runs, _knn_scores(table, runs))
    length = hand.FEATURE_NAMES.index("log_chars")
    cv_report["prompt length (baseline)"] = _cv_summary(
        table, runs, [table.feats[run.mask, length] for run in runs]
    )

    write_npz(artifact_dir / CALIBRATION_FILE, oof_calibration_set(table, runs, blend, platt))

    say("fitting the final head on all of train")
    arrays = fit_parts(table)
    arrays.update(blend=blend, platt=platt, **fit_familiarity(table))
    arrays["version"] = np.array(artifact_version(arrays))
    version = str(arrays["version"])
    write_npz(artifact_dir / ARTIFACT_FILE, arrays)

    # Held-out numbers of the final artifact, for the card only: nothing above depends on them.
    from classifier_svc.training.evaluate import heldout_report

    model = DifficultyModel.load(artifact_dir)
    heldout = heldout_report(model, test_rows, apps_test)
    subjects = sorted({o.group for o in outcomes if o.dataset == "mmlu"})
    card = {
        "name": "llmroute learned difficulty classifier",
        "version": version,
        "schema": SCHEMA_VERSION,
        "command": "make train-classifier  (python -m classifier_svc.training.train)",
        "score": "P(cheap model fails), calibrated per family; ranks prompts by estimated routing gain",
        "data": {
            "outcomes": {
                "source": "RouteLLM (lm-sys/RouteLLM @ 0b64fdaf), see /work/shared/data/routing/README.md",
                "cheap_model": data.CHEAP_MODEL,
                "strong_model": data.STRONG_MODEL,
                "files": {
                    name: data.file_digest(data.data_dir() / name)
                    for name in ("mmlu_outcomes.csv", "gsm8k_outcomes.csv")
                },
            },
            "app_prompts": {
                "file": "classifier_svc/data/app_prompts.jsonl",
                "sha256": data.file_digest(data.APP_PROMPTS_PATH),
                "label_source": "author-rubric-v1: difficulty tier assigned by hand with the rubric in docs/classifier.md",
                "target": data.DIFFICULTY_TARGET,
                "assumption": "the strong model answers app prompts correctly (strong_ok = 1)",
            },
        },
        "split": {
            "seed": data.SPLIT_SEED,
            "rule": "sha256(seed:key) order; first 30% of MMLU subjects, 30% of GSM8K prompts, 25% of app prompt ids",
            "mmlu_heldout_subjects": data.heldout_subjects(subjects),
            "rows": {
                "train": {
                    "mmlu": _count(table, "mmlu"),
                    "gsm8k": _count(table, "gsm8k"),
                    "app": _count(table, "app"),
                },
                "test": {
                    "mmlu": sum(o.dataset == "mmlu" for o in test_rows),
                    "gsm8k": sum(o.dataset == "gsm8k" for o in test_rows),
                    "app": len(apps_test),
                },
            },
        },
        "inputs": {
            "embedding": "WordLlama l2_supercat, 256-d, L2-normalised",
            "hand_features": list(hand.FEATURE_NAMES),
            "conversation": f"user turns only (latest {hand.MAX_TURNS}); embedding = decayed mean "
            f"(x{hand.TURN_DECAY} per earlier turn); features = max over turns",
        },
        "head": {
            "parts": {
                "ridge_features": f"ridge (alpha={RIDGE_FEATURES_ALPHA}) on standardised hand features x family",
                "boosted_features": f"P(strong right) - P(cheap right), two GradientBoostingClassifier {BOOSTING}",
                "ridge_embedding": f"ridge (alpha={RIDGE_EMBEDDING_ALPHA}) on hand features x family + embedding x family",
            },
            "target": "routing gain = strong_ok - cheap_ok (app prompts: the hand label's P(cheap fails))",
            "families": list(FAMILIES),
            "blend": blend_report,
            "calibration": {
                f: {"slope": platt[i, 0], "intercept": platt[i, 1]} for i, f in enumerate(FAMILIES)
            },
            "confidence": "0.5 + (max(p, 1 - p) - 0.5) * familiarity; familiarity from cosine similarity to "
            f"{CENTROIDS} k-means centroids of the training embeddings",
        },
        "cross_validation": {
            "protocol": f"{CV_REPEATS} repeats inside train, each holding out 30% of MMLU subjects (whole), "
            "30% of GSM8K, 30% of app prompts; APGR pooled over repeats weighted by each repeat's accuracy gap; "
            "app = concordance of score with the hand label (0.5 = random)",
            "results": cv_report,
        },
        "heldout": heldout,
        "training_time": "about 70 s (wall time is printed, not stored, so the card is reproducible too)",
        "machine": "2-core container, numpy/scikit-learn, single process",
    }
    card = _round(card)  # type: ignore[assignment]
    (artifact_dir / MODEL_CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    say(f"wrote {artifact_dir / ARTIFACT_FILE} version {version} in {time.perf_counter() - started:.1f}s")
    return card


def _cv_summary(table: Table, runs: Sequence[CvRun], scores: Sequence[np.ndarray]) -> dict[str, float]:
    mmlu = _pooled_apgr(runs, table, scores, "mmlu")
    gsm8k = _pooled_apgr(runs, table, scores, "gsm8k")
    return {
        "mmlu_apgr": mmlu["apgr"],
        "mmlu_strong_share_at_95": mmlu["strong_share_at_95"],
        "gsm8k_apgr": gsm8k["apgr"],
        "gsm8k_strong_share_at_95": gsm8k["strong_share_at_95"],
        "app_concordance": _app_concordance(runs, table, scores),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact-dir", type=Path, default=DEFAULT_ARTIFACT_DIR)
    args = parser.parse_args(argv)
    card = train(args.artifact_dir)
    print(
        json.dumps(
            {
                "version": card["version"],
                "cross_validation": card["cross_validation"],
                "heldout": card["heldout"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
