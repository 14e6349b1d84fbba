"""The compilable resampling and augmentation layers against TensorFlow's op and Keras's own layers."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from trainer import affine

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _images(batch: int = 6, height: int = 13, width: int = 17) -> np.ndarray:
    """Random pixels on an odd, non-square size: any row/column or centre mix-up shows."""
    return np.random.default_rng(0).uniform(0, 255, (batch, height, width, 3)).astype("float32")


def _random_affine(batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angle, scale = rng.uniform(-1, 1, batch), rng.uniform(0.5, 1.6, batch)
    matrix = np.zeros((batch, 8), "float32")
    matrix[:, 0], matrix[:, 1] = scale * np.cos(angle), -scale * np.sin(angle)
    matrix[:, 3], matrix[:, 4] = scale * np.sin(angle), scale * np.cos(angle)
    matrix[:, 2], matrix[:, 5] = rng.uniform(-20, 20, (2, batch))
    return matrix


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("fill_mode", affine.FILL_MODES)
def test_affine_transform_matches_the_tensorflow_op_eagerly_and_under_xla(fill_mode: str, interpolation: str) -> None:
    images, matrix = _images(), _random_affine(6, seed=1)
    kwargs = {"interpolation": interpolation, "fill_mode": fill_mode, "fill_value": 7.0}
    # keras.ops.image.affine_transform is ImageProjectiveTransformV3 on TensorFlow: the op being replaced.
    expected = np.asarray(keras.ops.image.affine_transform(images, matrix, **kwargs))
    eager = np.asarray(affine.affine_transform(images, matrix, **kwargs))
    compiled = tf.function(lambda x, m: affine.affine_transform(x, m, **kwargs), jit_compile=True)
    np.testing.assert_allclose(eager, expected, atol=1e-2)  # pixels 0..255: float rounding only
    np.testing.assert_allclose(np.asarray(compiled(images, matrix)), expected, atol=1e-2)
    assert not np.allclose(eager, images)  # the transforms do move pixels


def test_the_identity_transform_and_inference_leave_images_unchanged() -> None:
    images = _images()
    identity = np.array([1, 0, 0, 0, 1, 0, 0, 0], "float32")
    np.testing.assert_array_equal(np.asarray(affine.affine_transform(images, identity)), images)
    np.testing.assert_array_equal(np.asarray(affine.affine_transform(images[0], identity)), images[0])
    for layer in (affine.RandomRotation(0.0, seed=1), affine.RandomZoom(0.0, seed=1)):
        np.testing.assert_allclose(np.asarray(layer(images, training=True)), images, atol=1e-3)
    for layer in (affine.RandomRotation(0.2, seed=1), affine.RandomZoom(0.3, seed=1)):
        np.testing.assert_array_equal(np.asarray(layer(images, training=False)), images)


@pytest.mark.parametrize("kind", ["rotation", "zoom"])
def test_same_seed_same_draws_same_images_as_keras(kind: str) -> None:
    """Same factor and seed: the layers draw the same transforms as Keras's and give the same images."""
    ours_cls, keras_cls, factor = {
        "rotation": (affine.RandomRotation, keras.layers.RandomRotation, 0.1),
        "zoom": (affine.RandomZoom, keras.layers.RandomZoom, 0.2),
    }[kind]
    images = _images(batch=16)
    ours, theirs = ours_cls(factor, seed=5), keras_cls(factor, seed=5)
    assert (ours.fill_mode, ours.interpolation) == (theirs.fill_mode, theirs.interpolation) == ("reflect", "bilinear")
    assert ours.supports_jit and not theirs.supports_jit
    for _ in range(3):  # successive calls advance both seed generators alike
        expected = np.asarray(theirs(images, training=True))
        got = np.asarray(ours(images, training=True))
        np.testing.assert_allclose(got, expected, atol=1e-2)
        assert not np.allclose(got, images, atol=1.0)


def _draw_statistic(layer: keras.layers.Layer, image: np.ndarray, draws: int) -> np.ndarray:
    """Per draw, the mean pixel of the transformed image's left half: moves with angle and zoom."""
    out = np.asarray(layer(np.repeat(image[None], draws, axis=0), training=True))
    return out[:, :, : out.shape[2] // 2].mean(axis=(1, 2, 3))


def test_draws_follow_keras_distribution_with_other_seeds() -> None:
    """Over many draws with unrelated seeds, ours and Keras's give the same distribution of outcomes,
    and a wrong factor range is told apart by the same check."""
    xs = np.linspace(0, 1, 24, dtype="float32")
    image = np.stack([np.outer(xs, xs**2) * 255, np.outer(1 - xs, xs) * 255, np.outer(xs, 1 - xs) * 255], axis=-1)
    rotations = (affine.RandomRotation(0.1, seed=11), keras.layers.RandomRotation(0.1, seed=12),
                 affine.RandomRotation(0.2, seed=13))
    zooms = (affine.RandomZoom(0.2, seed=11), keras.layers.RandomZoom(0.2, seed=12), affine.RandomZoom(0.35, seed=13))
    for ours, theirs, wrong in (rotations, zooms):
        a, b, c = (_draw_statistic(layer, image, 400) for layer in (ours, theirs, wrong))
        assert stats.ks_2samp(a, b).pvalue > 0.01
        assert stats.ks_2samp(c, b).pvalue < 1e-4


def test_layers_round_trip_through_keras_serialization() -> None:
    layers = [keras.Input((8, 8, 3)), affine.RandomRotation(0.05, seed=1), affine.RandomZoom(0.1, seed=1)]
    model = keras.Sequential(layers)
    clone = keras.Sequential.from_config(model.get_config())
    assert [type(layer) for layer in clone.layers] == [affine.RandomRotation, affine.RandomZoom]
    assert clone.layers[1].height_factor == 0.1


def test_unsupported_fill_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="fill modes"):
        affine.RandomRotation(0.1, fill_mode="wrap")
