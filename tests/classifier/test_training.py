"""Routing metrics on hand-computed cases, the split, the exported trees, and threshold calibration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from classifier_training import calibrate, data, metrics
from difficulty import features as hand
from service_kit.policy import DEFAULT_POLICY_PATH, PolicyError, Thresholds, load_policy

# ---------------------------------------------------------------------------------------------
# Metrics. Four prompts; gain = strong - cheap per prompt.
#   prompt:  0  1  2  3
#   cheap:   1  0  1  0    acc_cheap = 0.5
#   strong:  1  1  0  1    acc_strong = 0.75, gap = 0.25
#   gain:    0  1 -1  1


CHEAP = [1, 0, 1, 0]
STRONG = [1, 1, 0, 1]


def test_apgr_perfect_order_hand_computed() -> None:
    # Order 1, 3, 0, 2: quality at shares 0, 1/4, 2/4, 3/4, 1 = .5, .75, 1, 1, .75
    # PGR = 0, 1, 2, 2, 1 -> trapezoids: (0+1 + 1+2 + 2+2 + 2+1)/2 * 1/4 = 11/8
    assert metrics.apgr([0.2, 0.9, 0.1, 0.8], CHEAP, STRONG) == pytest.approx(11 / 8)


def test_apgr_all_tied_is_random() -> None:
    # One tie block: quality interpolates linearly from acc_cheap to acc_strong -> APGR 0.5.
    assert metrics.apgr([0.3, 0.3, 0.3, 0.3], CHEAP, STRONG) == pytest.approx(0.5)


def test_apgr_ties_are_interpolated_not_broken_by_row_order() -> None:
    # Prompts 1 and 2 tie at the top: the block's gain (1 - 1 = 0) is spread over its width.
    # Points: share 0 -> .5; share 2/4 -> .5 ; then prompt 3 (gain 1) -> .75 ; then prompt 0 -> .75
    # PGR = 0, 0, 1, 1 at shares 0, .5, .75, 1 -> area = 0 + (0+1)/2*.25 + (1+1)/2*.25 = 0.375
    scores = [0.1, 0.9, 0.9, 0.5]
    assert metrics.apgr(scores, CHEAP, STRONG) == pytest.approx(0.375)
    # Swapping the tied rows changes nothing.
    swapped = [0, 2, 1, 3]
    assert metrics.apgr(
        np.array(scores)[swapped], np.array(CHEAP)[swapped], np.array(STRONG)[swapped]
    ) == pytest.approx(0.375)


def test_strong_share_at_95_hand_computed() -> None:
    # Target 0.95 * 0.75 = 0.7125. Perfect order: quality .5 at 0, .75 at 1/4 -> crossing at
    # share (0.7125 - 0.5) / 0.25 * 0.25 = 0.2125.
    assert metrics.strong_share_at([0.2, 0.9, 0.1, 0.8], CHEAP, STRONG) == pytest.approx(0.2125)
    # All tied: quality .5 + .25 p reaches .7125 at p = 0.85.
    assert metrics.strong_share_at([0, 0, 0, 0], CHEAP, STRONG) == pytest.approx(0.85)


def test_strong_share_is_zero_when_cheap_is_already_good_enough() -> None:
    assert metrics.strong_share_at([1, 2], [1, 1], [1, 1]) == 0.0


def test_routing_curve_ends_at_both_models() -> None:
    curve = metrics.routing_curve([0.4, 0.1, 0.7, 0.7], CHEAP, STRONG)
    assert curve.share[0] == 0 and curve.share[-1] == 1
    assert curve.quality[0] == pytest.approx(0.5) and curve.quality[-1] == pytest.approx(0.75)
    assert len(curve.share) == 4  # three tie blocks -> four points


def test_concordance() -> None:
    assert metrics.concordance([0.1, 0.5, 0.9], [0, 1, 2]) == 1.0
    assert metrics.concordance([0.9, 0.5, 0.1], [0, 1, 2]) == 0.0
    assert metrics.concordance([0.5, 0.5], [0, 1]) == 0.5


# ---------------------------------------------------------------------------------------------
# The split.


def test_heldout_subjects_are_a_seeded_stable_choice() -> None:
    subjects = [f"subject_{i}" for i in range(40)]
    held = data.heldout_subjects(subjects)
    assert len(held) == 12
    assert held == data.heldout_subjects(reversed(subjects))  # order of rows never matters


def test_split_holds_out_whole_subjects() -> None:
    rows = [data.Outcome("mmlu", f"s{i % 10}", f"q{i}", True, True) for i in range(100)]
    rows += [data.Outcome("gsm8k", "gsm8k", f"g{i}", True, False) for i in range(50)]
    train, test = data.split_outcomes(rows)
    train_subjects = {o.group for o in train if o.dataset == "mmlu"}
    test_subjects = {o.group for o in test if o.dataset == "mmlu"}
    assert len(test_subjects) == 3 and not train_subjects & test_subjects
    assert sum(o.dataset == "gsm8k" for o in test) == 15


def test_app_prompts_are_labelled_with_a_source() -> None:
    prompts = data.load_app_prompts()
    assert len(prompts) >= 250
    assert all(p.label_source and p.category and p.difficulty in data.DIFFICULTY_TARGET for p in prompts)
    assert any(len(p.messages) > 1 for p in prompts)


# ---------------------------------------------------------------------------------------------
# The exported trees reproduce scikit-learn exactly.


def test_exported_boosted_trees_match_sklearn() -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    from classifier_training.train import _export_trees
    from difficulty.model import _sigmoid, _Trees

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=400) > 0).astype(int)
    model = GradientBoostingClassifier(n_estimators=30, max_depth=2, learning_rate=0.1, random_state=0).fit(
        x, y
    )
    arrays = _export_trees(model, "t")
    trees = _Trees(
        feature=arrays["t_feature"].astype(np.intp),
        threshold=arrays["t_threshold"],
        left=arrays["t_left"].astype(np.intp),
        right=arrays["t_right"].astype(np.intp),
        value=arrays["t_value"],
        init=float(arrays["t_init"]),
        depth=int(arrays["t_depth"]),
    )
    np.testing.assert_allclose(_sigmoid(trees.logit(x)), model.predict_proba(x)[:, 1], rtol=1e-9, atol=1e-12)


def test_soft_labels_become_weighted_rows() -> None:
    from classifier_training.train import _soft_binary

    x = np.arange(3, dtype=float)[:, None]
    xs, ys, ws = _soft_binary(x, np.array([1.0, 0.0, 0.3]), np.array([1.0, 1.0, 2.0]))
    assert xs[:, 0].tolist() == [0, 1, 2, 2]
    assert ys.tolist() == [1, 0, 1, 0]
    np.testing.assert_allclose(ws, [1.0, 1.0, 0.6, 1.4])


def test_write_npz_is_byte_reproducible(tmp_path: Path) -> None:
    from classifier_training.train import write_npz

    arrays = {"b": np.arange(5.0), "a": np.array("x")}
    write_npz(tmp_path / "1.npz", arrays)
    write_npz(tmp_path / "2.npz", dict(reversed(arrays.items())))
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    with np.load(tmp_path / "1.npz", allow_pickle=False) as npz:
        assert npz["b"].tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# Features and conversations.


def test_features_are_fixed_length_and_finite() -> None:
    for text in (
        "",
        "hi",
        "A. x\nB. y",
        "x" * 50_000,
        "Statement 1 | a. Statement 2 | b.\nA. True, True\nB. False, False",
    ):
        row = hand.prompt_features(text)
        assert row.shape == (len(hand.FEATURE_NAMES),) and np.all(np.isfinite(row))


def test_multiple_choice_structure_is_detected() -> None:
    row = dict(
        zip(
            hand.FEATURE_NAMES,
            hand.prompt_features("Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:"),
            strict=True,
        )
    )
    assert row["is_multiple_choice"] == 1.0
    assert row["numeric_option_share"] == 1.0
    open_row = dict(zip(hand.FEATURE_NAMES, hand.prompt_features("Write a poem about the sea."), strict=True))
    assert open_row["is_multiple_choice"] == 0.0


def test_combine_turns_keeps_the_thread_difficulty() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    feats = np.array([[5.0, 0.0], [1.0, 2.0]], dtype=np.float32)
    e, f = hand.combine_turns(emb, feats)
    assert f.tolist() == [5.0, 2.0]
    assert np.linalg.norm(e) == pytest.approx(1.0)
    assert e[1] > e[0]  # the latest turn weighs most


def test_user_turns_ignore_system_and_assistant() -> None:
    turns = hand.user_turns([("system", "be nice"), ("user", "a"), ("assistant", "b"), ("user", "c")])
    assert turns == ["a", "c"]


# ---------------------------------------------------------------------------------------------
# Calibration writes ordered thresholds into the policy, keeping its comments.


def _workload(scores: np.ndarray) -> calibrate.Workload:
    n = len(scores)
    return calibrate.Workload(
        scores, np.full(n, 1 / n), np.array(["x"] * n), np.full(n, np.nan), np.full(n, np.nan)
    )


def test_thresholds_for_shares_are_ordered_quantiles() -> None:
    workload = _workload(np.linspace(0, 0.99, 100))
    t = calibrate.thresholds_for(workload, strong_share=0.3, moderate_share=0.2, reasoning_share=0.1)
    assert t.moderate <= t.complex <= t.reasoning
    shares = calibrate.tier_shares(workload, t)
    assert shares["complex"] + shares["reasoning"] == pytest.approx(0.3, abs=0.011)
    assert shares["reasoning"] == pytest.approx(0.1, abs=0.011)
    assert shares["moderate"] == pytest.approx(0.2, abs=0.011)


def test_quality_target_finds_the_needed_share() -> None:
    # Perfectly ranked: the 25 prompts the cheap model fails (and the strong one solves) score highest.
    scores = np.linspace(0, 1, 100)
    cheap = (scores < 0.75).astype(float)
    workload = calibrate.Workload(scores, np.full(100, 0.01), np.array(["x"] * 100), cheap, np.ones(100))
    thresholds, report = calibrate.calibrate(workload, quality=0.95)
    target, quality = report["target"], report["x_quality_vs_strong"]
    assert isinstance(target, dict) and isinstance(quality, float)
    assert target["strong_share"] == pytest.approx(0.20, abs=0.011)
    assert quality >= 0.95
    assert thresholds.moderate <= thresholds.complex <= thresholds.reasoning


def test_calibration_rewrites_only_the_thresholds_block(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    shutil.copy(DEFAULT_POLICY_PATH, policy)
    before = policy.read_text()
    calibrate.write_policy(policy, Thresholds(moderate=0.12, complex=0.345, reasoning=0.5))
    after = policy.read_text()
    loaded = load_policy(policy)
    assert (loaded.thresholds.moderate, loaded.thresholds.complex, loaded.thresholds.reasoning) == (
        0.12,
        0.345,
        0.5,
    )
    # Every comment survives and nothing outside the block changed.
    assert [line for line in before.splitlines() if line.lstrip().startswith("#")] == [
        line for line in after.splitlines() if line.lstrip().startswith("#")
    ]
    assert len(before.splitlines()) == len(after.splitlines())
    changed = [a for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert all(line.strip().split(":")[0] in ("moderate", "complex", "reasoning") for line in changed)


def test_calibration_refuses_a_policy_without_thresholds(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    with pytest.raises(PolicyError):
        calibrate.write_policy(policy, Thresholds(moderate=0.1, complex=0.2, reasoning=0.3))
    assert policy.read_text() == "version: 1\n"


def test_calibrate_command_writes_the_committed_artifacts_workload(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    shutil.copy(DEFAULT_POLICY_PATH, policy)
    calibrate.main(["--strong-share", "0.4", "--policy", str(policy)])
    t = load_policy(policy).thresholds
    assert 0 <= t.moderate <= t.complex <= t.reasoning <= 1


def test_calibrate_with_no_target_writes_the_shipped_thresholds(tmp_path: Path) -> None:
    # The one documented command: quality 0.95 on DEFAULT_MIX, from the committed artifact.
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        DEFAULT_POLICY_PATH.read_text()
        .replace("moderate: 0.", "moderate: 0.0")
        .replace("complex: 0.", "complex: 0.0")
    )
    calibrate.main(["--policy", str(policy)])
    assert load_policy(policy).thresholds == load_policy(DEFAULT_POLICY_PATH).thresholds


def test_a_mix_without_weight_is_refused() -> None:
    from difficulty import DEFAULT_ARTIFACT_DIR

    with pytest.raises(ValueError, match="no source"):
        calibrate.load_oof_workload(DEFAULT_ARTIFACT_DIR, {"app": 0.0})
    with pytest.raises(ValueError, match="unknown sources"):
        calibrate.load_oof_workload(DEFAULT_ARTIFACT_DIR, {"nope": 1.0})


# ---------------------------------------------------------------------------------------------
# The multimodel split and deployment outcomes.


def test_multimodel_split_holds_out_30_percent_of_each_task_and_follows_routellm() -> None:
    routellm = [
        data.Outcome("gsm8k", "gsm8k", f"Problem number {i} about apples.", True, True) for i in range(40)
    ]
    _, routellm_test = data.split_outcomes(routellm)
    copied = routellm_test[0].prompt + "\nAfter careful thought, put you final answer in \\boxed{...}."
    rows = [data.Outcome("multimodel", f"task{i % 2}", f"question {i}", 0.5, 1.0) for i in range(200)]
    rows.append(data.Outcome("multimodel", "task0", copied, 1.0, 1.0))

    train, test = data.split_multimodel(rows, routellm)

    assert {o.prompt for o in train}.isdisjoint(o.prompt for o in test)
    for task in ("task0", "task1"):
        assert sum(o.group == task for o in test if o.prompt != copied) == 30
    assert any(o.prompt == copied for o in test)  # its GSM8K copy is held out, so is it
    assert data.split_multimodel(list(reversed(rows)), routellm)[1] == list(reversed(test))


def _outcome_line(i: int, **extra: object) -> str:
    row = {
        "id": f"req-{i}",
        "messages": [{"role": "user", "content": f"Request {i}"}],
        "cheap_ok": i % 3 != 0,
    }
    return json.dumps({**row, **extra})


def test_deployment_outcomes_are_validated_with_file_and_line(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(_outcome_line(1) + "\n\n" + _outcome_line(2, weight=2.5) + "\n")
    rows = data.load_deployment_outcomes([good])
    assert [(r.id, r.cheap_ok, r.weight) for r in rows] == [("req-1", True, 1.0), ("req-2", True, 2.5)]
    assert rows[0].messages == (("user", "Request 1"),)
    for bad, message in (
        ('{"id": "x", "messages": [], "cheap_ok": true}', "messages"),
        ('{"id": "x", "messages": [{"role": "user"}], "cheap_ok": true}', "role"),
        ('{"id": "x", "messages": [{"role": "user", "content": "hi"}], "cheap_ok": 1}', "cheap_ok"),
        (
            '{"id": "x", "messages": [{"role": "user", "content": "hi"}], "cheap_ok": true, "weight": 0}',
            "weight",
        ),
        ('{"id": "", "messages": [{"role": "user", "content": "hi"}], "cheap_ok": true}', "id"),
        ("not json", "not JSON"),
    ):
        path = tmp_path / "bad.jsonl"
        path.write_text(_outcome_line(1) + "\n" + bad + "\n")
        with pytest.raises(ValueError, match=rf"bad\.jsonl:2: .*{message}"):
            data.load_deployment_outcomes([path])
    with pytest.raises(ValueError, match="already given"):
        data.load_deployment_outcomes([good, good])


def test_a_held_out_outcome_stays_held_out_when_more_arrive() -> None:
    rows = [data.DeploymentOutcome(f"r{i}", (("user", "x"),), True) for i in range(2000)]
    _, held_first = data.split_deployment_outcomes(rows[:500])
    _, held_all = data.split_deployment_outcomes(rows)
    assert {r.id for r in held_first} <= {r.id for r in held_all}
    assert 0.22 < len(held_all) / len(rows) < 0.28
    assert all(data.outcome_held_out(r.id) for r in held_all)


def _small_routing_data(directory: Path) -> None:
    """A few hundred rows of each outcome file, so a full training run takes seconds."""
    import csv

    source = data.data_dir()
    for name, keep in (
        ("mmlu_outcomes.csv", 25),
        ("gsm8k_outcomes.csv", 120),
        ("multimodel_outcomes.csv", 25),
    ):
        with (source / name).open(newline="") as handle:
            reader = csv.DictReader(handle)
            group = {"mmlu_outcomes.csv": "subject", "multimodel_outcomes.csv": "task_name"}.get(name)
            seen: dict[str, int] = {}
            rows = []
            for row in reader:
                key = row[group] if group else ""
                if seen.get(key, 0) < keep:
                    seen[key] = seen.get(key, 0) + 1
                    rows.append(row)
            fields = reader.fieldnames
        with (directory / name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)  # type: ignore[arg-type]
            writer.writeheader()
            writer.writerows(rows)


def test_train_artifact_with_deployment_outcomes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from classifier_training import train
    from difficulty import Conversation, LearnedStrategy

    routing = tmp_path / "routing"
    routing.mkdir()
    _small_routing_data(routing)
    monkeypatch.setenv("ROUTING_DATA_DIR", str(routing))
    monkeypatch.setattr(train, "CV_REPEATS", 2)
    monkeypatch.setattr(train, "CENTROIDS", 4)
    monkeypatch.setattr(train, "BOOSTING", {**train.BOOSTING, "n_estimators": 10, "min_samples_leaf": 20})
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("".join(_outcome_line(i) + "\n" for i in range(60)))

    plain = train.train_artifact(tmp_path / "plain")
    with_outcomes = train.train_artifact(tmp_path / "with", [outcomes])

    expected_held = sorted(f"req-{i}" for i in range(60) if data.outcome_held_out(f"req-{i}"))
    assert with_outcomes.heldout_outcome_ids == tuple(expected_held) and expected_held
    assert set(with_outcomes.trained_outcome_ids) == {f"req-{i}" for i in range(60)} - set(expected_held)
    assert plain.heldout_outcome_ids == () and plain.trained_outcome_ids == ()
    assert with_outcomes.version != plain.version
    assert with_outcomes.strategy_version == f"learned/{with_outcomes.version}"
    card = with_outcomes.card
    assert card["data"]["deployment_outcomes"]["rows"] == {  # type: ignore[index]
        "train": 60 - len(expected_held),
        "test": len(expected_held),
    }
    assert card["heldout"]["outcomes_n"] == len(expected_held)  # type: ignore[index]
    # The written artifact is servable and says which version it is.
    strategy = LearnedStrategy(tmp_path / "with")
    verdict = strategy.classify_sync(Conversation.user("Request 7"))
    assert verdict.version == with_outcomes.strategy_version and 0 <= verdict.score <= 1
    # The same inputs give the same version (and the outcome rows are part of it).
    again = tmp_path / "again.jsonl"
    again.write_text(outcomes.read_text())
    assert train.train_artifact(tmp_path / "again", [again]).version == with_outcomes.version
