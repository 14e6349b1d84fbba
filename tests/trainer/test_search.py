"""The search end to end in one process: trials, resume, report, export, and the CLI's error lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.trainer.images import write_folder
from trainer.cluster import Cluster
from trainer.config import load
from trainer.errors import ConfigError
from trainer.progress import SearchMetrics
from trainer.scan import DataSplits, ImageFile
from trainer.search import held_out_warnings, run_search
from trainer.search_space import auto_epochs, balanced_class_weights, model_spec, patience_epochs

SINGLE = Cluster(peers=(), rank=0, source="single")


def _config(tmp_path: Path, data: Path, **overrides: str):
    settings = {
        "data": str(data), "backbone": "small_cnn", "image_size": "16", "tuner": "random", "max_trials": "2",
        "epochs": "2", "head_epochs": "1", "batch_size": "8", "run_dir": str(tmp_path / "runs"),
        "export_base": str(tmp_path / "models"), "model_name": "toy", "test_fraction": "0.2",
        # these tests are about the search's mechanics, not its quality: the gate only checks that exports load
        "publish": "always",
    }
    settings.update(overrides)
    return load(settings, {})


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("images") / "data", classes=3, per_class=15)


def test_search_exports_the_best_model_with_a_report(tmp_path: Path, folder: Path) -> None:
    metrics = SearchMetrics()
    result = run_search(_config(tmp_path, folder), SINGLE, metrics=metrics)
    assert result.trials == 2 and result.export is not None
    assert result.export.path == tmp_path / "models" / "toy" / "1"
    assert 0.0 <= result.best_val_accuracy <= 1.0 and result.test_accuracy is not None and result.test_images == 9
    assert set(result.best_hyperparameters) >= {"backbone", "head", "learning_rate"}
    loaded = tf.saved_model.load(str(result.export.path))
    assert set(loaded.signatures) == {"serving_default", "predict_pixels"}
    metadata = json.loads((result.export.path / "assets.extra" / "tfstack_metadata.json").read_text())
    assert metadata["class_names"] == ["class_0", "class_1", "class_2"]
    assert metadata["metrics"]["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert metadata["data"]["fingerprint"] and metadata["versions"]["tensorflow"] == tf.__version__
    report = result.report_dir
    assert report is not None
    for name in ("curves.png", "confusion_matrix.png", "trials.csv", "trials.md", "summary.json", "held_out.json"):
        assert (report / name).stat().st_size > 0, name
    assert len((report / "trials.csv").read_text().strip().splitlines()) == 3  # header + 2 trials
    assert list((tmp_path / "runs" / "toy" / "logs").rglob("events.out.tfevents.*")), "no TensorBoard logs"
    assert metrics.trials_done._value.get() == 2
    assert metrics.best._value.get() == pytest.approx(result.best_val_accuracy)


def test_a_rerun_resumes_without_repeating_finished_trials(tmp_path: Path, folder: Path) -> None:
    first = run_search(_config(tmp_path, folder), SINGLE)
    trial_files = sorted((tmp_path / "runs" / "toy" / "tuner" / "toy").glob("trial_*/trial.json"))
    before = {path: path.read_text() for path in trial_files}
    metrics = SearchMetrics()
    second = run_search(_config(tmp_path, folder, max_trials="3"), SINGLE, metrics=metrics)
    assert metrics.trials_done._value.get() == 1, "only the one new trial runs"
    assert second.trials == 3
    for path, text in before.items():
        assert path.read_text() == text, f"{path} was rerun"
    assert (first.export.version, second.export.version) == (1, 2)

    fresh = SearchMetrics()
    run_search(_config(tmp_path, folder, overwrite="true"), SINGLE, metrics=fresh)
    assert fresh.trials_done._value.get() == 2, "--overwrite starts afresh"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--data", "no/such/folder"], "no/such/folder"),
        (["--backbone", "resnet9000"], "resnet9000"),
        (["--max-trials", "zero"], "max_trials"),
        (["--weights", "missing.h5", "--backbone", "mobilenet_v2"], "missing.h5"),
    ],
    ids=["missing-folder", "unknown-backbone", "bad-number", "missing-weights-file"],
)
def test_cli_reports_bad_input_in_one_line_and_writes_nothing(
    tmp_path: Path, folder: Path, args: list[str], fragment: str
) -> None:
    base_args = ["search", "--data", str(folder), "--export-base", "models", "--run-dir", "runs"]
    result = _cli(*base_args, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr  # the exit-code contract: bad input, do not retry
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("saved_model.pb"))


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    result = _cli("search", "--no-such-flag", cwd=tmp_path)
    assert result.returncode == 2 and "--no-such-flag" in result.stderr


def test_a_different_data_set_never_resumes_another_search(tmp_path: Path, folder: Path) -> None:
    run_search(_config(tmp_path, folder, max_trials="1", epochs="1"), SINGLE)
    other = write_folder(tmp_path / "other", classes=3, per_class=15, fmt="bmp")
    with pytest.raises(ConfigError, match="data_fingerprint") as info:
        run_search(_config(tmp_path, other, max_trials="1", epochs="1"), SINGLE)
    assert "--overwrite" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "models" / "toy").iterdir()) == ["1"], "nothing exported"


@pytest.mark.parametrize(
    ("images", "batch", "expected"),
    [(1258, 32, 15), (33, 4, 67), (84, 32, 200), (12, 4, 200), (100000, 32, 10), (300, 32, 60)],
    ids=["digits", "tiny", "issue-26-folder", "tiny-capped", "large-floor", "small"],
)
def test_auto_epochs_aim_at_a_fixed_number_of_steps(images: int, batch: int, expected: int) -> None:
    assert auto_epochs(images, batch) == expected


@pytest.mark.parametrize(
    ("patience", "steps", "per_epoch", "expected"),
    [(5, 150, 40, 5), (5, 150, 3, 50), (5, 0, 3, 5), (0, 150, 1, 150), (8, 150, 19, 8)],
    ids=["digits-epochs", "issue-26-folder-steps", "steps-off", "one-step-epochs", "epochs-win"],
)
def test_patience_counts_at_least_patience_steps(patience: int, steps: int, per_epoch: int, expected: int) -> None:
    assert patience_epochs(patience, steps, per_epoch) == expected


def _splits(counts: list[int]) -> DataSplits:
    files = tuple(ImageFile(Path(f"{label}/{i}.png"), label) for label, n in enumerate(counts) for i in range(n))
    return DataSplits(tuple(f"c{i}" for i in range(len(counts))), files, (), (), (), "f", Path("."))


def test_class_weights_only_for_imbalanced_data() -> None:
    assert balanced_class_weights(_splits([20, 15, 11])) is None
    weights = balanced_class_weights(_splits([60, 10]))
    assert weights is not None and weights[1] == pytest.approx(6 * weights[0])
    assert sum(w * n for w, n in zip(weights, [60, 10], strict=True)) == pytest.approx(70)


def testheld_out_warnings_flag_what_accuracy_hides() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    warnings = held_out_warnings(labels, 0.33, {"a": 1.0, "b": 0.0, "c": 0.0}, val=0.9)
    text = "\n".join(warnings)
    assert "only 6 held-out images" in text and "never predicted correctly" in text and "b, c" in text
    assert "no better than chance" in text and "far above" in text
    assert held_out_warnings(np.zeros(200), 0.98, {"a": 0.98, "b": 0.99}, val=0.97) == []


def test_rerunning_a_finished_search_does_not_export_a_duplicate(tmp_path: Path, folder: Path) -> None:
    first = run_search(_config(tmp_path, folder, max_trials="1", epochs="1"), SINGLE)
    metrics = SearchMetrics()
    again = run_search(_config(tmp_path, folder, max_trials="1", epochs="1"), SINGLE, metrics=metrics)
    assert metrics.trials_done._value.get() == 0
    assert again.export == first.export
    assert sorted(p.name for p in (tmp_path / "models" / "toy").iterdir()) == ["1"]


@pytest.mark.parametrize("change", [{"epochs": "2"}, {"batch_size": "4"}, {"head_epochs": "2"}],
                         ids=["epochs", "batch_size", "head_epochs"])
def test_resume_refuses_another_schedule(tmp_path: Path, folder: Path, change: dict[str, str]) -> None:
    run_search(_config(tmp_path, folder, max_trials="1", epochs="1"), SINGLE)
    name = next(iter(change))
    settings = {"max_trials": "1", "epochs": "1", **change}
    with pytest.raises(ConfigError, match=name):
        run_search(_config(tmp_path, folder, **settings), SINGLE)


def test_overwrite_clears_epoch_backups(tmp_path: Path, folder: Path) -> None:
    stale = tmp_path / "runs" / "toy" / "backup" / "trial_9" / "phase1"
    stale.mkdir(parents=True)
    (stale / "training_metadata.json").write_text('{"epoch": 1}')
    run_search(_config(tmp_path, folder, max_trials="1", epochs="1", overwrite="true"), SINGLE)
    assert not (tmp_path / "runs" / "toy" / "backup" / "trial_9").exists()


def test_each_stage_runs_alone(tmp_path: Path, folder: Path) -> None:
    from trainer.search import evaluate_best, plan_search, scan_data, search_trials

    config = _config(tmp_path, folder, max_trials="1", epochs="1", mixed_precision="mixed_bfloat16")
    root, splits = scan_data(config)
    assert root == folder and len(splits.class_names) == 3
    plan = plan_search(config, SINGLE, root, splits)
    assert (plan.epochs, plan.global_batch, plan.spec.dtype_policy) == (1, 8, "mixed_bfloat16")
    outcome = search_trials(config, SINGLE, plan, SearchMetrics())
    assert len(outcome.trials) == 1 and outcome.checkpoint.is_file()
    evaluation = evaluate_best(config, plan, outcome)
    assert evaluation.split_name == "test" and len(evaluation.labels) == 9
    assert evaluation.model.compute_dtype == "bfloat16"  # the policy survives KerasTuner's clear_session()
    assert not (tmp_path / "models").exists(), "nothing published before the publish stage"


@pytest.mark.parametrize("hyperband", [True, False], ids=["hyperband", "other-tuners"])
def test_a_restarted_worker_seeds_its_tuner_state_from_the_chief(tmp_path: Path, hyperband: bool) -> None:
    # Hyperband continues a trial by loading an earlier trial's checkpoint from the worker's own tuner
    # dir (keras_tuner/src/tuners/hyperband.py, _build_hypermodel): a restarted worker needs them too.
    from trainer.tuner import seed_scratch_from_shared

    trial = tmp_path / "shared" / "toy" / "trial_0001"
    trial.mkdir(parents=True)
    (trial / "trial.json").write_text("{}")
    (trial / "checkpoint.weights.h5").write_bytes(b"weights")
    (tmp_path / "shared" / "toy" / "oracle.json").write_text("{}")
    seed_scratch_from_shared(tmp_path / "shared", tmp_path / "scratch", "toy", checkpoints=hyperband)
    copied = tmp_path / "scratch" / "toy"
    assert (copied / "oracle.json").is_file() and (copied / "trial_0001" / "trial.json").is_file()
    assert (copied / "trial_0001" / "checkpoint.weights.h5").exists() is hyperband


def test_each_backbone_gets_an_input_size_that_fits_the_data(tmp_path: Path) -> None:
    config = load({"data": str(tmp_path), "backbone": "small_cnn,mobilenet_v2", "weights": "none"}, {})
    spec = model_spec(config, 4, median_side=430)
    assert dict(spec.backbone_sizes) == {"small_cnn": 64, "mobilenet_v2": 224} and spec.image_size == 224
    assert "flatten_dense_dropout" not in spec.heads, "16M weights on mobilenet_v2's 7x7x1280 map"
    small = model_spec(load({"data": str(tmp_path), "weights": "none"}, {}), 4, median_side=28)
    assert small.backbones == ("small_cnn",) and small.image_size == 32 and not small.fine_tuned_backbones
    assert dict(model_spec(config, 4, median_side=28).backbone_sizes) == {"small_cnn": 32, "mobilenet_v2": 96}
    fixed = model_spec(load({"data": str(tmp_path), "backbone": "vgg16", "image_size": "48"}, {}), 4, median_side=500)
    assert dict(fixed.backbone_sizes) == {"vgg16": 48}


def test_bayesian_tuner_draws_a_third_of_the_budget_at_random(tmp_path: Path, folder: Path) -> None:
    from trainer.hypermodel import ModelSpec, TransferHyperModel
    from trainer.tuner import make_tuner

    config = _config(tmp_path, folder, tuner="bayesian", max_trials="9")
    tuner = make_tuner(config, TransferHyperModel(ModelSpec(num_classes=3, image_size=16)), directory=tmp_path / "t")
    assert tuner.oracle.num_initial_points == 3 and tuner.oracle.max_trials == 9


def test_a_pretrained_search_fine_tunes_in_a_second_phase(tmp_path: Path, folder: Path) -> None:
    """Phase 2 runs inside the real search (KerasTuner adds TensorBoard callbacks that allow one session)."""
    import keras

    weights = tmp_path / "mobilenet_v2.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    config = _config(tmp_path, folder, backbone="auto", weights=str(weights), image_size="32", max_trials="1",
                     epochs="2", unfreeze_depths="0.5", heads="gap_dense")
    result = run_search(config, SINGLE)
    assert result.best_hyperparameters["backbone"] == "mobilenet_v2"
    assert result.best_hyperparameters["unfreeze_depth"] == 0.5
    history = json.loads(next((tmp_path / "runs" / "toy" / "histories").glob("trial_*/history.json")).read_text())
    assert len(history["val_accuracy"]) == 2, "one epoch per phase"
