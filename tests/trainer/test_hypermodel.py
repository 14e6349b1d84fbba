"""The search space: every head builds and trains, unfreeze depth sets exactly the intended flags."""

from __future__ import annotations

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
