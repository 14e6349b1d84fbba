"""The search space: every head builds and trains, unfreeze depth sets exactly the intended flags."""

from __future__ import annotations

from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import pytest

from trainer.errors import ConfigError
from trainer.hypermodel import (
    BACKBONE_SPECS,
    ModelSpec,
    TransferHyperModel,
    build_model,
    find_backbone,
    set_unfreeze_depth,
)

HEADS = ("gap_dense", "gap_dense_dropout", "flatten_dense_dropout")


def _pixels(n: int, size: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32"), rng.integers(0, classes, n)


@pytest.mark.parametrize("head", HEADS, ids=HEADS)
@pytest.mark.parametrize("classes", [2, 4], ids=["binary", "multiclass"])
def test_every_head_builds_and_trains_a_step(head: str, classes: int) -> None:
    spec = ModelSpec(num_classes=classes, image_size=16, heads=(head,), augmentation=(("rotation", 0.05),))
    hp = kt.HyperParameters()
    model = TransferHyperModel(spec).build(hp)
    assert model.output_shape == (None, 1 if classes == 2 else classes)
    assert model.get_layer("logits").dtype_policy.name == "float32"
    x, y = _pixels(8, 16, classes)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert ("units" in hp.values) == (head == "flatten_dense_dropout")
    assert ("dropout" in hp.values) == (head != "gap_dense")


def test_mobilenet_backbone_with_preprocessing_inside_the_model() -> None:
    spec = ModelSpec(num_classes=3, image_size=32, backbones=("mobilenet_v2",), weights="none")
    model = build_model(spec, backbone="mobilenet_v2", head="gap_dense")
    # pixels in 0..255 are mapped to [-1, 1] by the model itself
    preprocess = keras.Model(model.input, model.get_layer("preprocess").output)
    out = preprocess(np.full((1, 32, 32, 3), 255.0, "float32"))
    np.testing.assert_allclose(np.asarray(out), 1.0, atol=1e-6)
    assert find_backbone(model).name == "backbone_mobilenet_v2"


@pytest.mark.parametrize("depth", [0, 1, 10, 40], ids=lambda d: f"depth{d}")
def test_unfreeze_depth_sets_exactly_the_top_layers_trainable_except_batchnorm(depth: int) -> None:
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    unfrozen = set_unfreeze_depth(backbone, depth)
    top = backbone.layers[len(backbone.layers) - depth :] if depth else []
    expected = [layer.name for layer in top if not isinstance(layer, keras.layers.BatchNormalization)]
    assert unfrozen == expected
    for layer in backbone.layers:
        assert layer.trainable == (layer.name in expected), layer.name
    if depth >= 10:
        assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in top), "test needs BN in the top"
    trainable_ids = {id(v) for v in backbone.trainable_weights}
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not any(id(v) in trainable_ids for v in layer.weights)


def test_pretrained_search_space_has_unfreeze_depth_and_two_phases(tmp_path) -> None:
    weights = tmp_path / "backbone.weights.h5"
    spec = ModelSpec(num_classes=3, image_size=32, backbones=("mobilenet_v2",), weights="none")
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    spec = ModelSpec(num_classes=3, image_size=32, backbones=("mobilenet_v2",), weights=str(weights),
                     heads=("gap_dense",), unfreeze_depths=(5,), head_epochs=1)
    hypermodel = TransferHyperModel(spec)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert hp.values["unfreeze_depth"] == 5 and "fine_tune_factor" in hp.values
    backbone = find_backbone(model)
    assert not any(layer.trainable for layer in backbone.layers), "phase 1 trains the head only"
    x, y = _pixels(8, 32, 3)
    frozen_before = backbone.layers[1].get_weights()[0].copy()
    history = hypermodel.fit(hp, model, x, y, batch_size=4, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2, "one epoch per phase"
    assert [layer.trainable for layer in backbone.layers[-5:]].count(True) >= 1
    np.testing.assert_array_equal(backbone.layers[1].get_weights()[0], frozen_before)


def test_unknown_backbone_and_too_small_images_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="resnet9000"):
        ModelSpec(num_classes=2, image_size=32, backbones=("resnet9000",))
    with pytest.raises(ConfigError, match="image_size >= 75 for inception_v3"):
        ModelSpec(num_classes=2, image_size=32, backbones=("inception_v3",))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        ModelSpec(num_classes=1, image_size=32)
    assert set(BACKBONE_SPECS) >= {"mobilenet_v2", "efficientnet_b0", "resnet50_v2", "vgg16", "inception_v3"}


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"], ids=str)
def test_a_trial_model_is_built_under_the_mixed_policy_after_clear_session(policy: str) -> None:
    # KerasTuner calls clear_session() before every trial build, which resets the global policy to
    # float32: the policy must come from the spec, applied where the model is built.
    spec = ModelSpec(num_classes=3, image_size=16, heads=("gap_dense_dropout",), dtype_policy=policy)
    keras.backend.clear_session()
    model = TransferHyperModel(spec).build(kt.HyperParameters())
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was
    compute = policy.removeprefix("mixed_")
    backbone_layers = [layer for layer in find_backbone(model).layers if layer.weights]
    assert backbone_layers and all(layer.dtype_policy.compute_dtype == compute for layer in backbone_layers)
    assert all(w.dtype == "float32" for w in model.weights)  # variables stay float32
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert {layer.name for layer in layers if layer.dtype_policy.compute_dtype != compute} == {"logits"}
    assert model.get_layer("logits").dtype_policy.name == "float32"
    assert model.compute_dtype == compute and model(np.zeros((1, 16, 16, 3), "float32")).dtype == "float32"
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_weighted_metrics_ignore_padded_copies() -> None:
    # Keras 3 applies sample weights only to weighted_metrics: the padding (weight 0) must not count.
    spec = ModelSpec(num_classes=3, image_size=8, heads=("gap_dense",))
    model = TransferHyperModel(spec).build(kt.HyperParameters())
    x, y = _pixels(6, 8, 3)
    padded_x = np.concatenate([x, np.repeat(x[:1], 10, axis=0)])
    padded_y = np.concatenate([y, np.repeat((y[:1] + 1) % 3, 10)])  # padding labelled wrong on purpose
    weights = np.concatenate([np.ones(6), np.zeros(10)]).astype("float32")
    result = model.evaluate(padded_x, padded_y, sample_weight=weights, batch_size=4, verbose=0, return_dict=True)
    real = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))
    assert result["accuracy"] == pytest.approx(real)


def _tiny_pretrained(include_top: bool, weights: str | None, input_shape: tuple[int, int, int]) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_b")(x)
    return keras.Model(inputs, x)


class _Epochs(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.trained: list[int] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.trained.append(epoch)


class _DieInPhase2(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == 3:
            raise RuntimeError("killed in phase 2")


def test_a_restart_in_phase_2_resumes_phase_2_with_the_phase_1_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

    from trainer.distribute import TrialBackup
    from trainer.hypermodel import BackboneSpec

    monkeypatch.setitem(BACKBONE_SPECS, "tiny", BackboneSpec("tiny", 16, 8, _tiny_pretrained, 1 / 255.0))
    spec = ModelSpec(num_classes=3, image_size=16, backbones=("tiny",), weights="imagenet", heads=("gap_dense",),
                     unfreeze_depths=(2,), head_epochs=2)
    x, y = _pixels(16, 16, 3)
    hp = kt.HyperParameters()
    hypermodel = TransferHyperModel(spec)
    backup = TrialBackup(tmp_path / "trial_0", writer=True)
    fit = {"x": x, "y": y, "validation_data": (x, y), "batch_size": 8, "epochs": 5, "verbose": 0}
    with pytest.raises(RuntimeError, match="killed in phase 2"):
        hypermodel.fit(hp, hypermodel.build(hp), backup=backup, callbacks=[_DieInPhase2()], **fit)
    assert backup.restored_epochs() == {"phase1": 2, "phase2": 3}
    before = backup.epoch_logs()
    assert sorted(before) == [0, 1, 2]

    keras.backend.clear_session()  # the restarted process builds the trial afresh
    best = SaveBestEpoch(kt.Objective("val_accuracy", "max"), str(tmp_path / "best.weights.h5"))
    trained = _Epochs()
    history = hypermodel.fit(hp, hypermodel.build(hp), backup=backup, callbacks=[best, trained], **fit)
    assert trained.trained == [3, 4], "phase 1 replayed, or phase 2 did not resume at its last epoch"
    assert history.epoch == [0, 1, 2, 3, 4], "every epoch once: none lost, none repeated"
    assert history.history["val_accuracy"][:3] == [before[e]["val_accuracy"] for e in range(3)]
    assert sorted(backup.epoch_logs()) == [0, 1, 2, 3, 4]
    assert best.best_value >= max(before[e]["val_accuracy"] for e in range(3))
