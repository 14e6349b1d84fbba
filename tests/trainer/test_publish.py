"""The publish gate: a staged export is verified in a fresh process and published only if it is better
than chance and not worse than the served version; otherwise nothing new appears on the volume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.trainer.images import write_folder
from trainer.export import existing_versions, stage_export
from trainer.hypermodel import ModelSpec, build_model
from trainer.pipeline import load_arrays
from trainer.publish import CHANCE_MARGIN, Score, decide, gate_and_publish
from trainer.scan import scan

SIZE = 16
CLASSES = ("class_0", "class_1", "class_2")


# ---------------------------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("candidate", "current", "policy", "publish", "reason"),
    [
        (0.9, None, "better", True, "no version is published yet"),
        (1 / 3 + CHANCE_MARGIN, None, "better", False, "no better than chance"),
        (0.2, 0.95, "always", True, "--publish always"),
        (0.80, 0.95, "better", False, "worse than version 1"),
        (0.94, 0.95, "better", True, "not worse than version 1"),  # within the 0.02 tolerance
        (0.99, 0.95, "better", True, "not worse than version 1"),
    ],
    ids=["first", "chance", "always", "worse", "within-tolerance", "better"],
)
def test_decision_rules(candidate: float, current: float | None, policy: str, publish: bool, reason: str) -> None:
    decision = decide(
        Score(candidate, candidate, 30), num_classes=3, current_version=None if current is None else 1,
        current=None if current is None else Score(current, current, 30), basis="recorded", policy=policy,
    )
    assert decision.publish is publish and reason in decision.reason


def test_other_class_names_are_not_compared() -> None:
    decision = decide(Score(0.6, 0.6, 30), num_classes=3, current_version=4, current=Score(0.99, 0.99, 30),
                      basis="recorded", classes_changed=True)
    assert decision.publish and "other class names" in decision.reason


# ---------------------------------------------------------------------------------------------- on real exports


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = write_folder(tmp_path_factory.mktemp("gate") / "data", classes=3, per_class=20, size=SIZE)
    return root, scan(root, val_fraction=0.2, test_fraction=0.25, seed=42)


@pytest.fixture(scope="module")
def good_model(data: tuple[Path, object]) -> keras.Model:
    _root, splits = data
    x, y = load_arrays(splits.train, (SIZE, SIZE))  # type: ignore[attr-defined]
    model = build_model(ModelSpec(num_classes=3, image_size=SIZE), backbone="small_cnn", head="gap_dense")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    return model


def _held_out(splits: object) -> list[tuple[Path, int]]:
    return [(f.path, f.label) for f in splits.test]  # type: ignore[attr-defined]


def _balanced(model: keras.Model, splits: object) -> float:
    """The model's held-out balanced accuracy, measured here with Keras on decoded arrays (not by the gate)."""
    x, y = load_arrays(splits.test, (SIZE, SIZE))  # type: ignore[attr-defined]
    predicted = np.argmax(model.predict(x, verbose=0), axis=-1)
    return float(np.mean([np.mean(predicted[y == c] == c) for c in range(3)]))


def _stage(model: keras.Model, base: Path, fingerprint: str, balanced: float | None = None,
           warmup: tuple[bytes, ...] = ()) -> Path:
    metrics = {} if balanced is None else {"test_accuracy": balanced, "test_balanced_accuracy": balanced,
                                           "test_images": 15}
    metadata = {"metrics": metrics, "data": {"fingerprint": fingerprint}}
    return stage_export(model, export_base=base, model_name="toy", class_names=CLASSES, image_size=SIZE,
                        metadata=metadata, warmup_images=warmup)


def _broken_copy(model: keras.Model) -> keras.Model:
    """The good model with class 2 made unreachable (its logit bias -1e4): right on two classes of three."""
    broken = keras.models.clone_model(model)
    broken.set_weights(model.get_weights())
    logits = broken.get_layer("logits")
    kernel, bias = logits.get_weights()
    bias[2] = -1e4
    logits.set_weights([kernel, bias])
    return broken


def test_a_worse_model_is_refused_and_the_served_version_stays(
    tmp_path: Path, data: tuple[Path, object], good_model: keras.Model
) -> None:
    _root, splits = data
    fingerprint = splits.fingerprint  # type: ignore[attr-defined]
    good = _balanced(good_model, splits)
    assert good > 0.9, "the fixture model must be good for this test to mean anything"

    warmup = (splits.test[0].path.read_bytes(),)  # type: ignore[attr-defined]
    first, exported = gate_and_publish(_stage(good_model, tmp_path, fingerprint, good, warmup),
                                       held_out=_held_out(splits), class_names=CLASSES, fingerprint=fingerprint)
    assert first.publish and exported is not None and exported.version == 1
    assert first.candidate is not None and first.candidate.balanced_accuracy == pytest.approx(good)

    broken = _broken_copy(good_model)
    worse = _balanced(broken, splits)
    assert 1 / 3 + CHANCE_MARGIN < worse < good - 0.02
    decision, none = gate_and_publish(_stage(broken, tmp_path, fingerprint), held_out=_held_out(splits),
                                      class_names=CLASSES, fingerprint=fingerprint)
    assert not decision.publish and none is None
    assert decision.basis == "recorded" and "worse than version 1" in decision.reason
    assert decision.candidate.balanced_accuracy == pytest.approx(worse)
    # other data: the served version is scored on today's held-out files in the verifier
    rescored, _ = gate_and_publish(_stage(broken, tmp_path, "other-data"), held_out=_held_out(splits),
                                   class_names=CLASSES, fingerprint="other-data")
    assert not rescored.publish and rescored.basis == "rescored"
    assert rescored.current.balanced_accuracy == pytest.approx(good)
    # nothing but version 1 is visible, and no staging directory is left behind
    assert existing_versions(tmp_path / "toy") == [1]
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == ["1"]


def test_an_export_that_does_not_load_is_never_published(
    tmp_path: Path, data: tuple[Path, object], good_model: keras.Model
) -> None:
    _root, splits = data
    staging = _stage(good_model, tmp_path, "f")
    (staging / "saved_model.pb").write_bytes(b"truncated")
    decision, exported = gate_and_publish(staging, held_out=_held_out(splits), class_names=CLASSES,
                                          fingerprint="f", policy="always")
    assert not decision.publish and exported is None
    assert "failed verification" in decision.reason and "Could not load" in decision.reason
    assert not (tmp_path / "toy").exists() or not list((tmp_path / "toy").iterdir())


def test_cli_exits_3_and_keeps_the_served_version_when_the_gate_refuses(
    tmp_path: Path, data: tuple[Path, object], good_model: keras.Model
) -> None:
    """A search on a folder whose classes hold the very same image can only be at chance (identical inputs
    get identical predictions: balanced accuracy exactly 1/3), so the gate must refuse it, whatever the
    defaults train."""
    from PIL import Image

    _root, splits = data
    staging = _stage(good_model, tmp_path / "models", splits.fingerprint)  # type: ignore[attr-defined]
    staging.rename(tmp_path / "models" / "toy" / "1")  # the served version
    same = tmp_path / "same"
    image = Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8))
    for name in CLASSES:
        (same / name).mkdir(parents=True)
        for i in range(12):
            image.save(same / name / f"{i}.png")
    args = ["search", "--data", str(same), "--model-name", "toy", "--export-base", "models", "--run-dir", "runs",
            "--backbone", "small_cnn", "--image-size", str(SIZE), "--tuner", "random", "--max-trials", "1",
            "--epochs", "1", "--head-epochs", "1", "--batch-size", "8"]
    result = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 3, result.stderr[-3000:]
    assert "not published:" in result.stdout and "no better than chance" in result.stdout
    assert existing_versions(tmp_path / "models" / "toy") == [1]
    report = json.loads((tmp_path / "runs" / "toy" / "report" / "publish.json").read_text())
    assert report["publish"] is False and report["current_version"] == 1
    assert report["candidate"]["balanced_accuracy"] == pytest.approx(1 / 3)
