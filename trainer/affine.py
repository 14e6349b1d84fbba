"""Affine image resampling that XLA compiles, and the RandomRotation / RandomZoom layers that use it.

Keras's RandomRotation and RandomZoom resample through ``keras.ops.image.affine_transform``, which on
TensorFlow is ``ImageProjectiveTransformV3`` (keras/src/backend/tensorflow/image.py): that op has no
XLA kernel, so a model holding either layer cannot train with ``jit_compile=True``. `RandomRotation`
and `RandomZoom` here are those Keras layers with only the resampling replaced by `affine_transform`,
written with gathers and arithmetic that XLA compiles on CPU and GPU. Everything else is Keras's own:
the factor ranges, the random draws (same seed, same angles and zooms), the transform matrices, the
fill mode and interpolation defaults ("reflect", "bilinear"), and identity outside training.

`affine_transform` reproduces the TensorFlow kernel (tensorflow/core/kernels/image/image_ops.h,
``ProjectiveGenerator`` and ``MapCoordinate``): output pixel (x, y) reads the input at
``(a0 x + a1 y + a2, b0 x + b1 y + b2)``, out-of-range coordinates are first mapped by the fill mode
(reflect about the edge of the last pixel, or clamp to the nearest pixel), then interpolated; a
neighbour that is still outside the image reads ``fill_value``. tests/trainer/test_affine.py compares
it with the real op and the layers with Keras's.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

__all__ = ["FILL_MODES", "RandomRotation", "RandomZoom", "affine_transform"]

FILL_MODES = ("reflect", "nearest", "constant")
"""What `affine_transform` supports (Keras also offers "wrap", which the trainer never uses)."""


def _map_coordinate(coord: tf.Tensor, size: tf.Tensor, fill_mode: str) -> tf.Tensor:
    """Map input coordinates outside ``[0, size - 1]`` as TensorFlow's ``MapCoordinate`` does."""
    if fill_mode == "constant":
        return coord  # neighbours outside the image read fill_value
    last = tf.cast(size - 1, coord.dtype)
    if fill_mode == "reflect":
        # (d c b a | a b c d | d c b a): fold into one period of 2 * size, then mirror the second half.
        period = tf.cast(2 * size, coord.dtype)
        folded = tf.math.floormod(coord, period)
        folded = tf.where(folded > last, period - folded - 1.0, folded)
        coord = tf.where(size > 1, folded, tf.zeros_like(coord))
    return tf.clip_by_value(coord, 0.0, last)


def affine_transform(
    images: Any, transforms: Any, *, interpolation: str = "bilinear", fill_mode: str = "reflect",
    fill_value: float = 0.0,
) -> tf.Tensor:
    """Resample a batch ``[B, H, W, C]`` by one affine transform per image (``[B, 8]`` or ``[8]``).

    The transform is Keras's / TensorFlow's 8-vector ``[a0, a1, a2, b0, b1, b2, c0, c1]`` mapping output
    to input pixels; only affine ones (``c0 = c1 = 0``, as every Random* layer builds) are supported:
    the last two entries are ignored. Computes in float32 and returns the images' dtype.
    """
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"Expected interpolation 'bilinear' or 'nearest'. Received: interpolation={interpolation!r}")
    if fill_mode not in FILL_MODES:
        raise ValueError(f"Expected fill_mode among {FILL_MODES}. Received: fill_mode={fill_mode!r}")
    images = tf.convert_to_tensor(images)
    if images.shape.rank == 3:  # one image
        return affine_transform(images[None], transforms, interpolation=interpolation, fill_mode=fill_mode,
                                fill_value=fill_value)[0]
    dtype = images.dtype
    pixels = tf.cast(images, tf.float32)
    shape = tf.shape(pixels)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    matrix = tf.cast(transforms, tf.float32)
    matrix = tf.broadcast_to(matrix, [batch, 8]) if matrix.shape.rank == 1 else matrix
    ys, xs = tf.meshgrid(tf.range(tf.cast(height, tf.float32)), tf.range(tf.cast(width, tf.float32)), indexing="ij")
    a0, a1, a2, b0, b1, b2 = (matrix[:, i, None, None] for i in range(6))
    in_x = _map_coordinate(a0 * xs + a1 * ys + a2, width, fill_mode)  # [B, H, W]
    in_y = _map_coordinate(b0 * xs + b1 * ys + b2, height, fill_mode)
    flat = tf.reshape(pixels, [batch, height * width, channels])
    fill = tf.constant(fill_value, tf.float32)

    def read(y: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        y, x = tf.cast(y, tf.int32), tf.cast(x, tf.int32)
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        index = tf.clip_by_value(y, 0, height - 1) * width + tf.clip_by_value(x, 0, width - 1)
        values = tf.gather(flat, tf.reshape(index, [batch, -1]), batch_dims=1)
        return tf.where(inside[..., None], tf.reshape(values, shape), fill)

    if interpolation == "nearest":  # std::round: halves away from zero
        out = read(tf.sign(in_y) * tf.floor(tf.abs(in_y) + 0.5), tf.sign(in_x) * tf.floor(tf.abs(in_x) + 0.5))
    else:
        y0, x0 = tf.floor(in_y), tf.floor(in_x)
        wy, wx = (in_y - y0)[..., None], (in_x - x0)[..., None]
        top = (1.0 - wx) * read(y0, x0) + wx * read(y0, x0 + 1.0)
        bottom = (1.0 - wx) * read(y0 + 1.0, x0) + wx * read(y0 + 1.0, x0 + 1.0)
        out = (1.0 - wy) * top + wy * bottom
    return tf.cast(out, dtype)


def _check_supported(layer: keras.layers.Layer) -> None:
    if layer.data_format != "channels_last" or layer.fill_mode not in FILL_MODES:
        raise ValueError(f"{type(layer).__name__} supports channels_last and fill modes {FILL_MODES}. Received: "
                         f"data_format={layer.data_format!r}, fill_mode={layer.fill_mode!r}")
    layer.supports_jit = True


@keras.saving.register_keras_serializable(package="tfstack")
class RandomRotation(keras.layers.RandomRotation):
    """``keras.layers.RandomRotation`` resampled by `affine_transform` (compiles under XLA)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_supported(self)

    def _transform_images(self, images: Any, transformation: Any, interpolation: str) -> Any:
        return affine_transform(images, transformation["rotation_matrix"], interpolation=interpolation,
                                fill_mode=self.fill_mode, fill_value=self.fill_value)


@keras.saving.register_keras_serializable(package="tfstack")
class RandomZoom(keras.layers.RandomZoom):
    """``keras.layers.RandomZoom`` resampled by `affine_transform` (compiles under XLA)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_supported(self)

    def _transform_images(self, images: Any, transformation: Any, interpolation: str) -> Any:
        if transformation is None:
            return images
        # As RandomZoom._zoom_inputs builds it (keras/src/layers/.../random_zoom.py).
        zooms = tf.cast(tf.concat([transformation["width_zoom"], transformation["height_zoom"]], axis=1), tf.float32)
        shape = tf.shape(images)
        matrix = self._get_zoom_matrix(zooms, shape[-3], shape[-2])
        return affine_transform(images, matrix, interpolation=interpolation, fill_mode=self.fill_mode,
                                fill_value=self.fill_value)
