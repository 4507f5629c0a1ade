"""Trains the learned difficulty classifier and writes its artifact: ``make train-classifier``.

Steps, all seeded and single-process (the same inputs give the same weights and version):

1. Inputs: the *train* parts of the fixed splits (``data.split_outcomes`` for MMLU and GSM8K,
   ``data.split_multimodel``, ``data.split_app_prompts``) and, with ``--outcomes``, the train part of a
   deployment's outcomes (``data.split_deployment_outcomes``). Nothing held out is fitted on.
2. Cross-validation inside train, shaped like the held-out test: each repeat holds out 30% of the
   remaining MMLU subjects (whole subjects) and 30% of the rows of every other source.
3. Blend weights of the three head parts are chosen per family (multiple choice / open) on those
   out-of-fold predictions; a per-family logistic map turns the blend into P(cheap model fails where
   the strong one succeeds). The out-of-fold scores are stored for ``make calibrate``.
4. The parts are refitted on all of train and exported as plain arrays (``model.npz``) with
   ``model_card.json`` (data, split, features, head, CV metrics, and the held-out metrics of the
   final artifact, computed once at the end and used for nothing).

``train_artifact`` is the same as a function, for the feedback loop (``llmroute retrain``).
"""

from __future__ import annotations

import argparse
import hashlib
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

from classifier_training import data, metrics
from difficulty import DEFAULT_ARTIFACT_DIR
from difficulty import features as hand
from difficulty.learned import WINDOW_HEAD, WINDOW_TAIL, encode_prompts, encode_turns
from difficulty.model import (
    ARTIFACT_FILE,
    CALIBRATION_FILE,
    COMPONENTS,
    FAMILIES,
    MODEL_CARD_FILE,
    SCHEMA_VERSION,
    DifficultyModel,
    artifact_version,
)

# Fixed hyperparameters, chosen by cross-validation inside the train split during development.
# The two ridge penalties were re-chosen by the same CV when the multimodel rows and the new app targets
# came in: features 100 of (30, 100, 300, 1000), embedding 3000 of (1000, 3000, 10000).
RIDGE_FEATURES_ALPHA = 100.0
RIDGE_EMBEDDING_ALPHA = 3000.0
BOOSTING = {
    "n_estimators": 150,
    "learning_rate": 0.05,
    "max_depth": 2,
    "min_samples_leaf": 100,
    "subsample": 1.0,
    "random_state": 0,
}
# Sample weight of a row, by source. App prompts are few; 1.5 gives them a voice next to the benchmark
# rows. A deployment outcome's own "weight" multiplies its source's.
SOURCE_WEIGHT = {"mmlu": 1.0, "gsm8k": 1.0, "multimodel": 1.0, "app": 1.5, "outcomes": 1.0}
# Multiplies SOURCE_WEIGHT for one part of the head. The multimodel gains are those of one small pair
# (llama-3.1-8b vs nemotron-51b) on benchmark tasks: in the hand-feature parts they blurred the
# difficulty of application prompts (CV app concordance 0.85 -> 0.81); in the embedding part they
# mostly teach which kinds of task gain. Their weight there, 0.75, is the best of 0, 0.1, 0.25, 0.5,
# 0.75 and 1 on the CV objective of the open family (CV multimodel APGR 0.64 at 0, 0.68 at 0.75).
PART_SOURCE_WEIGHT: dict[str, dict[str, float]] = {
    "ridge_features": {"multimodel": 0.0},
    "boosted_features": {"multimodel": 0.0},
    "ridge_embedding": {"multimodel": 0.75},
}
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
    """Model inputs and labels, one row per prompt (benchmark) or conversation (app, deployment)."""

    emb: np.ndarray  # (n, 256) float32
    feats: np.ndarray  # (n, d) float32
    dataset: np.ndarray  # "mmlu" | "gsm8k" | "multimodel" | "app" | "outcomes"
    group: np.ndarray  # MMLU subject, "gsm8k", multimodel task, app category, or "outcomes"
    cheap: np.ndarray  # P(cheap right): 0/1 or the task's score; 1 - hand label for app prompts
    strong: np.ndarray  # P(strong right): 0/1 or the task's score; 1 for app prompts and outcomes (assumed)
    weight: np.ndarray
    key: np.ndarray  # prompt text, app id or request id: what the CV splits hash on

    def __len__(self) -> int:
        return int(self.emb.shape[0])

    @property
    def gain(self) -> np.ndarray:
        return np.asarray(self.strong - self.cheap)

    @property
    def family(self) -> np.ndarray:
        return (self.feats[:, hand.FEATURE_NAMES.index("is_multiple_choice")] > 0.5).astype(np.intp)

    def take(self, rows: np.ndarray) -> Table:
        return Table(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def build_table(
    outcomes: Sequence[data.Outcome],
    apps: Sequence[data.AppPrompt],
    deployed: Sequence[data.DeploymentOutcome] = (),
) -> Table:
    prompts = [o.prompt for o in outcomes]
    emb: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    if prompts:
        prompt_emb, prompt_feats = encode_prompts(prompts)
        emb.append(prompt_emb)
        feats.append(prompt_feats)
    for messages in [app.messages for app in apps] + [row.messages for row in deployed]:
        e, f = encode_turns(hand.user_turns(messages))
        emb.append(e[None, :])
        feats.append(f[None, :])
    return Table(
        emb=np.concatenate(emb).astype(np.float32),
        feats=np.concatenate(feats).astype(np.float32),
        dataset=np.array([o.dataset for o in outcomes] + ["app"] * len(apps) + ["outcomes"] * len(deployed)),
        group=np.array(
            [o.group for o in outcomes] + [a.category for a in apps] + ["outcomes"] * len(deployed)
        ),
        cheap=np.array(
            [float(o.cheap_ok) for o in outcomes]
            + [1.0 - a.target for a in apps]
            + [float(r.cheap_ok) for r in deployed]
        ),
        strong=np.array([float(o.strong_ok) for o in outcomes] + [1.0] * (len(apps) + len(deployed))),
        weight=np.array(
            [SOURCE_WEIGHT[o.dataset] for o in outcomes]
            + [SOURCE_WEIGHT["app"]] * len(apps)
            + [SOURCE_WEIGHT["outcomes"] * r.weight for r in deployed]
        ),
        key=np.array(prompts + [a.id for a in apps] + [r.id for r in deployed], dtype=object),
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


def part_weights(table: Table, part: str) -> np.ndarray:
    """The sample weights one part of the head is fitted with (``PART_SOURCE_WEIGHT``)."""
    factor = PART_SOURCE_WEIGHT.get(part, {})
    return np.asarray(table.weight * np.array([factor.get(name, 1.0) for name in table.dataset]))


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

    w_rf, w_boost, w_re = (part_weights(table, part) for part in COMPONENTS)
    ridge_features = Ridge(alpha=RIDGE_FEATURES_ALPHA).fit(design, table.gain, sample_weight=w_rf)
    ridge_embedding = Ridge(alpha=RIDGE_EMBEDDING_ALPHA).fit(full, table.gain, sample_weight=w_re)
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
    fitted = w_boost > 0  # a row of weight 0 would still count towards the trees' leaf sizes
    for prefix, target in (("bs", table.strong), ("bc", table.cheap)):
        x, y, w = _soft_binary(table.feats[fitted], target[fitted], w_boost[fitted])
        boosted = GradientBoostingClassifier(**BOOSTING).fit(x, y, sample_weight=w)
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
    """Boolean masks of held-out rows: 30% of MMLU subjects, and 30% of the rows of every other source."""
    masks = []
    for r in range(repeats):
        rng = np.random.default_rng(CV_SEED + r)
        held = np.zeros(len(table), dtype=bool)
        subjects = np.array(sorted(set(table.group[table.dataset == "mmlu"])))
        chosen = set(rng.choice(subjects, size=round(CV_FRACTION * len(subjects)), replace=False))
        held |= (table.dataset == "mmlu") & np.isin(table.group, list(chosen))
        # This order keeps the MMLU, GSM8K and app folds of the first version of this split.
        for name in ("gsm8k", "app", "multimodel", "outcomes"):
            rows = np.flatnonzero(table.dataset == name)
            if rows.size:
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
        if not rows.any():
            continue
        report = metrics.routing_report(
            score[rows], table.cheap[run.mask][rows], table.strong[run.mask][rows]
        )
        gap = report.acc_strong - report.acc_cheap
        num += report.apgr * gap
        den += gap
        shares.append(report.strong_share_at_95)
    share = float(np.mean(shares)) if shares else float("nan")
    return {"apgr": num / den if den else float("nan"), "strong_share_at_95": share}


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
        multimodel = _pooled_apgr(runs, table, scores, "multimodel")
        app = _app_concordance(runs, table, scores)
        return {
            "objective": (gsm8k["apgr"] + multimodel["apgr"] + app) / 3,
            "gsm8k_apgr": gsm8k["apgr"],
            "multimodel_apgr": multimodel["apgr"],
            "app_concordance": app,
        }

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
    """Centroids of the training embeddings, each source (MMLU, GSM8K, multimodel, app...) weighted equally."""
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
        "dataset": table.dataset[seen].astype("U16"),
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


@dataclass(frozen=True)
class TrainedArtifact:
    """What ``train_artifact`` wrote: the artifact's version and what was held out of its training."""

    artifact_dir: Path
    version: str  # "<schema>-<8 hex>": the Verdict's version is "learned/" + this
    heldout_outcome_ids: tuple[str, ...]  # deployment outcomes never trained on (sorted)
    trained_outcome_ids: tuple[str, ...]  # deployment outcomes in the training data (sorted)
    card: dict[str, object]  # model_card.json as written

    @property
    def strategy_version(self) -> str:
        return f"learned/{self.version}"


def train_artifact(out_dir: Path, outcomes: Sequence[Path] = (), *, log: bool = False) -> TrainedArtifact:
    """Trains an artifact into ``out_dir`` (created if needed): the shipped recipe plus the deployment
    outcomes in ``outcomes`` (JSON lines, see ``data.load_deployment_outcomes``).

    About 60 s on 2 cores (66 s with 2,000 outcome rows). A fixed hash of each request id holds 25% of the outcomes out
    (``data.outcome_held_out``): they are never trained on, and the card reports the artifact's
    routing quality on them (``heldout.outcomes_*``). Any change to the outcomes changes the version.
    Raises ``ValueError`` for a malformed outcome file, ``OSError`` for an unreadable one.
    """
    deployed = data.load_deployment_outcomes(outcomes)
    trained, held = data.split_deployment_outcomes(deployed)
    card = train(Path(out_dir), log=log, deployed=deployed, outcome_files=outcomes)
    return TrainedArtifact(
        artifact_dir=Path(out_dir),
        version=str(card["version"]),
        heldout_outcome_ids=tuple(sorted(r.id for r in held)),
        trained_outcome_ids=tuple(sorted(r.id for r in trained)),
        card=card,
    )


def _data_digest(deployed: Sequence[data.DeploymentOutcome], files: dict[str, str]) -> str:
    """One digest of everything trained on: the source files and every deployment outcome row."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}={files[name]}\n".encode())
    for row in deployed:
        digest.update(
            json.dumps([row.id, row.messages, row.cheap_ok, row.weight], ensure_ascii=False).encode() + b"\n"
        )
    return digest.hexdigest()


def train(
    artifact_dir: Path,
    log: bool = True,
    deployed: Sequence[data.DeploymentOutcome] = (),
    outcome_files: Sequence[Path] = (),
) -> dict[str, object]:
    started = time.perf_counter()

    def say(*parts: object) -> None:
        if log:
            print(*parts, file=sys.stderr, flush=True)

    outcomes = data.load_outcomes()
    train_rows, test_rows = data.split_outcomes(outcomes)
    multimodel = data.load_multimodel()
    mm_train, mm_test = data.split_multimodel(multimodel, outcomes)
    apps_train, apps_test = data.split_app_prompts(data.load_app_prompts())
    deployed_train, deployed_test = data.split_deployment_outcomes(deployed)
    say(
        f"train: {len(train_rows)} MMLU/GSM8K + {len(mm_train)} multimodel prompts, {len(apps_train)} app "
        f"prompts, {len(deployed_train)} deployment outcomes; encoding"
    )
    table = build_table([*train_rows, *mm_train], apps_train, deployed_train)

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
    files = {
        name: data.file_digest(data.data_dir() / name)
        for name in ("mmlu_outcomes.csv", "gsm8k_outcomes.csv", data.MULTIMODEL_FILE)
    }
    files["app_prompts.jsonl"] = data.file_digest(data.APP_PROMPTS_PATH)
    arrays = fit_parts(table)
    arrays.update(blend=blend, platt=platt, **fit_familiarity(table))
    # Part of the version: other training data (deployment outcomes above all) is another version,
    # even in the unlikely case that the weights came out the same.
    arrays["training_data"] = np.array(_data_digest(deployed, files))
    arrays["version"] = np.array(artifact_version(arrays))
    version = str(arrays["version"])
    write_npz(artifact_dir / ARTIFACT_FILE, arrays)

    # Held-out numbers of the final artifact, for the card only: nothing above depends on them.
    from classifier_training.evaluate import heldout_report

    model = DifficultyModel.load(artifact_dir)
    heldout = heldout_report(model, [*test_rows, *mm_test], apps_test, deployed_test)
    # The second batch of app prompts is never trained on: all of it is held out.
    heldout["app_2_concordance"] = heldout_report(model, [], data.load_app_prompts(data.APP_PROMPTS_2_PATH))[
        "app_concordance"
    ]
    subjects = sorted({o.group for o in outcomes if o.dataset == "mmlu"})
    card = {
        "name": "llmroute learned difficulty classifier",
        "version": version,
        "schema": SCHEMA_VERSION,
        "command": "make train-classifier  (python -m classifier_training.train)",
        "score": "P(the cheap model fails where the strong one succeeds), calibrated per family on "
        "out-of-fold predictions",
        "data": {
            "outcomes": {
                "source": "RouteLLM (lm-sys/RouteLLM @ 0b64fdaf), see /work/shared/data/routing/README.md",
                "cheap_model": data.CHEAP_MODEL,
                "strong_model": data.STRONG_MODEL,
                "files": {name: files[name] for name in ("mmlu_outcomes.csv", "gsm8k_outcomes.csv")},
            },
            "multimodel": {
                "source": "LLMRouter (ulab-uiuc/LLMRouter @ 4e7a7969), see /work/shared/data/routing/README.md",
                "file": {data.MULTIMODEL_FILE: files[data.MULTIMODEL_FILE]},
                "cheap_model": data.MULTIMODEL_CHEAP_MODEL,
                "strong_model": data.MULTIMODEL_STRONG_MODEL,
                "labels": "each model's score in [0, 1] on the task's own metric (exact match, pass@1, F1, "
                "coverage)",
                "used_by": {part: PART_SOURCE_WEIGHT[part].get("multimodel", 1.0) for part in COMPONENTS},
            },
            "app_prompts": {
                "files": {
                    "app_prompts.jsonl": files["app_prompts.jsonl"],
                    "app_prompts_2.jsonl": data.file_digest(data.APP_PROMPTS_2_PATH),
                },
                "app_prompts_2": "evaluation only (never trained on): a second batch written with the same "
                "rubric after the first artifact of this design was trained",
                "label_source": "author-rubric-v1: difficulty tier assigned by hand with the rubric in docs/classifier.md",
                "target": data.DIFFICULTY_TARGET,
                "assumption": "the strong model answers app prompts correctly (strong_ok = 1)",
            },
            "deployment_outcomes": {
                "files": {str(path): data.file_digest(Path(path)) for path in outcome_files},
                "rows": {"train": len(deployed_train), "test": len(deployed_test)},
                "assumption": "the strong tier's answer is adequate (strong_ok = 1)",
            },
            "sample_weight": SOURCE_WEIGHT,
            "training_data_digest": str(arrays["training_data"]),
        },
        "split": {
            "seed": data.SPLIT_SEED,
            "rule": "sha256(seed:key) order; first 30% of MMLU subjects, 30% of GSM8K prompts, 25% of app prompt ids",
            "mmlu_heldout_subjects": data.heldout_subjects(subjects),
            "multimodel": {
                "seed": data.MULTIMODEL_SPLIT_SEED,
                "rule": "per task, the first 30% of its prompts by sha256(seed:prompt); a prompt also in the "
                "MMLU/GSM8K files follows that file's side",
            },
            "deployment_outcomes": {
                "seed": data.OUTCOMES_SPLIT_SEED,
                "rule": f"held out when sha256(seed:id) falls in the first {data.OUTCOMES_TEST_FRACTION:.0%} "
                "of the hash range",
            },
            "rows": {
                "train": {name: _count(table, name) for name in SOURCE_WEIGHT},
                "test": {
                    "mmlu": sum(o.dataset == "mmlu" for o in test_rows),
                    "gsm8k": sum(o.dataset == "gsm8k" for o in test_rows),
                    "multimodel": len(mm_test),
                    "app": len(apps_test),
                    "app_2": len(data.load_app_prompts(data.APP_PROMPTS_2_PATH)),
                    "outcomes": len(deployed_test),
                },
            },
        },
        "inputs": {
            "identifiers": "stripped first (identifiers.strip_identifiers): order and ticket numbers, codes, "
            "UUIDs, URLs, e-mail addresses, dates and timestamps, hashes, phone numbers, long digit runs",
            "embedding": "WordLlama l2_supercat, 256-d, L2-normalised, of the first "
            f"{WINDOW_HEAD} and last {WINDOW_TAIL} characters",
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
            "sources_per_part": PART_SOURCE_WEIGHT,
            "target": "routing gain = strong_ok - cheap_ok (app prompts: the hand label's soft target)",
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
            "30% of the rows of every other source; APGR pooled over repeats weighted by each repeat's gap; "
            "app = concordance of score with the hand label (0.5 = random)",
            "results": cv_report,
        },
        "heldout": heldout,
        "training_time": "about 60 s (wall time is printed, not stored, so the card is reproducible too)",
        "machine": "2-core container, numpy/scikit-learn, single process",
    }
    card = _round(card)  # type: ignore[assignment]
    (artifact_dir / MODEL_CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    say(f"wrote {artifact_dir / ARTIFACT_FILE} version {version} in {time.perf_counter() - started:.1f}s")
    return card


def _cv_summary(table: Table, runs: Sequence[CvRun], scores: Sequence[np.ndarray]) -> dict[str, float]:
    summary: dict[str, float] = {}
    for name in ("mmlu", "gsm8k", "multimodel", "outcomes"):
        if (table.dataset == name).any():
            pooled = _pooled_apgr(runs, table, scores, name)
            summary[f"{name}_apgr"] = pooled["apgr"]
            summary[f"{name}_strong_share_at_95"] = pooled["strong_share_at_95"]
    summary["app_concordance"] = _app_concordance(runs, table, scores)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact-dir", type=Path, default=DEFAULT_ARTIFACT_DIR)
    parser.add_argument(
        "--outcomes",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help='JSON lines of routed requests with a known outcome: {"id", "messages", "cheap_ok", "weight"?} '
        "(repeatable); a hash of the id holds 25%% of them out",
    )
    args = parser.parse_args(argv)
    try:
        trained = train_artifact(args.artifact_dir, args.outcomes, log=True)
    except (OSError, ValueError) as error:
        sys.exit(f"train: {error}")
    card = trained.card
    print(
        json.dumps(
            {
                "version": card["version"],
                "cross_validation": card["cross_validation"],
                "heldout": card["heldout"],
                "heldout_outcome_ids": len(trained.heldout_outcome_ids),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
