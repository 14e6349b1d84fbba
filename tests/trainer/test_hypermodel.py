"""The search space: every head builds and trains, unfreeze depth sets exactly the intended flags."""

from __future__ import annotations

import math
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
    feature_map_shape,
    find_backbone,
    fitting_heads,
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


_WEIGHTED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


@pytest.mark.parametrize("depth", [0.0, 0.02, 0.25, 0.5, 1.0], ids=lambda d: f"depth{d}")
def test_unfreeze_depth_is_a_fraction_of_the_weighted_layers_and_never_batchnorm(depth: float) -> None:
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    unfrozen = set_unfreeze_depth(backbone, depth)
    convolutions = [layer.name for layer in backbone.layers if isinstance(layer, _WEIGHTED)]
    assert len(convolutions) == 52 == BACKBONE_SPECS["mobilenet_v2"].weighted_layers
    expected = convolutions[len(convolutions) - math.ceil(depth * 52):] if depth else []
    assert unfrozen == expected, "the top share of the convolutions, in order"
    trainable_ids = {id(v) for v in backbone.trainable_weights}
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable and not any(id(v) in trainable_ids for v in layer.weights)
    assert len(backbone.trainable_weights) == sum(len(backbone.get_layer(n).trainable_weights) for n in expected)


@pytest.mark.parametrize(
    ("name", "size"),
    [("mobilenet_v2", 32), ("efficientnet_b0", 32), ("resnet50_v2", 32), ("vgg16", 32), ("inception_v3", 75)],
    ids=lambda v: str(v),
)
def test_weighted_layer_counts_match_the_real_backbones(name: str, size: int) -> None:
    """The unit of unfreeze depth: counted here from the built keras.applications model, by layer type."""
    model = BACKBONE_SPECS[name].factory(include_top=False, weights=None, input_shape=(size, size, 3))
    assert sum(isinstance(layer, _WEIGHTED) for layer in model.layers) == BACKBONE_SPECS[name].weighted_layers
    keras.backend.clear_session()


def test_default_unfreeze_depths_are_distinct_for_every_backbone() -> None:
    for name, spec in BACKBONE_SPECS.items():
        if spec.factory is None:
            continue
        counts = [math.ceil(d * spec.weighted_layers) for d in ModelSpec(2, 224).unfreeze_depths]
        assert len(set(counts)) == len(counts) and counts[-1] == spec.weighted_layers, (name, counts)
    with pytest.raises(ConfigError, match="different numbers of vgg16's 13"):
        ModelSpec(num_classes=2, image_size=32, backbones=("vgg16",), weights=__file__, unfreeze_depths=(0.5, 0.52))


def test_from_scratch_applications_use_a_fast_batchnorm_momentum() -> None:
    spec = ModelSpec(num_classes=3, image_size=32, backbones=("mobilenet_v2",), weights="none")
    model = build_model(spec, backbone="mobilenet_v2", head="gap_dense")
    momenta = {layer.momentum for layer in find_backbone(model).layers
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}, "0.999 (Keras's) would leave the moving statistics at their initial values"


def test_flatten_head_is_offered_only_on_small_feature_maps() -> None:
    assert "flatten_dense_dropout" not in fitting_heads(HEADS, ("mobilenet_v2",), {"mobilenet_v2": 224})
    assert fitting_heads(HEADS, ("small_cnn",), {"small_cnn": 64}) == HEADS
    assert feature_map_shape("mobilenet_v2", 224) == (7, 7, 1280)
    # Every default small_cnn head: the dense layer's weights, computed from the layer shapes, stay small.
    for size in (16, 32, 64, 128):
        heads = fitting_heads(HEADS, ("small_cnn",), {"small_cnn": size})
        spec = ModelSpec(num_classes=10, image_size=size, heads=heads)
        for head in spec.heads:
            model = build_model(spec, backbone="small_cnn", head=head, units=256)
            kernel_shapes = [tuple(w.shape) for layer in model.layers if layer.name.startswith(("head_", "logits"))
                             for w in layer.weights]
            assert sum(int(np.prod(s)) for s in kernel_shapes) <= 4096 * 256 + 256 * 11, (size, head, kernel_shapes)


def test_each_backbone_runs_at_its_own_size_and_small_cnn_skips_unfreeze(tmp_path) -> None:
    weights = tmp_path / "backbone.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3)).save_weights(weights)
    spec = ModelSpec(num_classes=3, image_size=96, backbones=("small_cnn", "mobilenet_v2"), weights=str(weights),
                     backbone_sizes=(("mobilenet_v2", 96), ("small_cnn", 32)))
    hypermodel = TransferHyperModel(spec)
    for backbone, size in (("small_cnn", 32), ("mobilenet_v2", 96)):
        hp = kt.HyperParameters()
        hp.Fixed("backbone", backbone)
        model = hypermodel.build(hp)
        assert model.input_shape == (None, 96, 96, 3)
        assert find_backbone(model).input_shape == (None, size, size, 3)
        assert ("unfreeze_depth" in hp.values) == (backbone == "mobilenet_v2")
        keras.backend.clear_session()


def test_pretrained_search_space_has_unfreeze_depth_and_two_phases(tmp_path) -> None:
    weights = tmp_path / "backbone.weights.h5"
    spec = ModelSpec(num_classes=3, image_size=32, backbones=("mobilenet_v2",), weights="none")
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    spec = ModelSpec(num_classes=3, image_size=32, backbones=("mobilenet_v2",), weights=str(weights),
                     heads=("gap_dense",), unfreeze_depths=(0.1,), head_epochs=1)
    hypermodel = TransferHyperModel(spec)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert hp.values["unfreeze_depth"] == 0.1 and "fine_tune_factor" in hp.values
    backbone = find_backbone(model)
    assert not any(layer.trainable for layer in backbone.layers), "phase 1 trains the head only"
    x, y = _pixels(8, 32, 3)
    frozen_before = backbone.layers[1].get_weights()[0].copy()
    history = hypermodel.fit(hp, model, x, y, batch_size=4, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2, "one epoch per phase"
    trainable = [layer for layer in backbone.layers if layer.trainable]
    assert len(trainable) == 6 and all(isinstance(layer, _WEIGHTED) for layer in trainable), "10% of 52 layers"
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
                     unfreeze_depths=(1.0,), head_epochs=2)
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


@pytest.mark.slow
def test_mobilenet_v2_from_scratch_beats_chance_in_inference_mode() -> None:
    """The reported bug: trained from random weights for ~100 steps, MobileNetV2 predicted one class."""
    from tests.trainer.images import pattern

    rng = np.random.default_rng(1)
    labels = np.arange(240) % 3
    x = np.stack([pattern(int(label), 32, rng) for label in labels]).astype("float32")
    spec = ModelSpec(num_classes=3, image_size=32, backbones=("mobilenet_v2",), weights="none")
    hp = kt.HyperParameters()
    hp.Fixed("head", "gap_dense")
    model = TransferHyperModel(spec).build(hp)
    model.fit(x[:180], labels[:180], batch_size=16, epochs=8, verbose=0)  # ~100 steps
    predicted = model.predict(x[180:], verbose=0).argmax(-1)  # inference mode: moving statistics
    accuracy = float(np.mean(predicted == labels[180:]))
    assert accuracy >= 0.7, f"held-out accuracy {accuracy:.2f}, chance 0.33"
    assert len(set(predicted.tolist())) == 3


class _ScaleAtStart(keras.callbacks.Callback):
    """Records each fit's optimizer and loss scale at its start; sets the scale to 256 when phase 1 ends."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, float]] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        optimizer = self.model.optimizer
        optimizer.build(self.model.trainable_variables)  # Keras builds it lazily, on the first step
        self.seen.append((id(optimizer), float(optimizer.dynamic_scale.numpy())))

    def on_train_end(self, logs: dict | None = None) -> None:
        if len(self.seen) == 1:
            self.model.optimizer.dynamic_scale.assign(256.0)  # as if phase 1 had overflowed 7 times


def test_phase_2_continues_the_loss_scale_of_phase_1(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.hypermodel import BackboneSpec

    monkeypatch.setitem(BACKBONE_SPECS, "tiny", BackboneSpec("tiny", 16, 8, _tiny_pretrained, 1 / 255.0))
    spec = ModelSpec(num_classes=3, image_size=16, backbones=("tiny",), weights="imagenet", heads=("gap_dense",),
                     unfreeze_depths=(1.0,), head_epochs=1, dtype_policy="mixed_float16")
    hp = kt.HyperParameters()
    hypermodel = TransferHyperModel(spec)
    x, y = _pixels(8, 16, 3)
    scales = _ScaleAtStart()
    hypermodel.fit(hp, hypermodel.build(hp), x, y, batch_size=4, epochs=2, verbose=0, callbacks=[scales])
    (first, initial), (second, continued) = scales.seen
    assert first != second, "phase 2 compiles a new optimizer"
    assert initial == 2.0**15 and continued == 256.0
