"""Random augmentation layers the model includes (active only in training).

Augmentation is built by `augmentation` as Keras preprocessing layers for the *model* to
include (the hypermodel does the same from its spec): inside the model they run on the
accelerator, are inactive at inference, so validation and export stay clean, and the cached
pipeline does not have to be re-augmented per epoch by the CPU. A horizontal flip turns digits
into other shapes, so every layer can be switched off; the embedded digits use rotation and zoom
only. In a model compiled with XLA, rotation and zoom are `trainer.affine`'s versions of Keras's
layers (same draws, fill and interpolation), whose resampling XLA compiles; `layer` builds each kind,
for `augmentation` and the hypermodel alike.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.errors import ConfigError

if TYPE_CHECKING:
    import keras


__all__ = [
    "augmentation",
    "layer",
]


def layer(kind: str, argument: Any, *, seed: int | None = None, xla: bool = False) -> keras.layers.Layer:
    """The augmentation layer of one kind: ``"flip"`` (a mode), ``"rotation"`` or ``"zoom"`` (a factor).

    With `xla` (the model compiles with ``jit_compile=True``) rotation and zoom are `trainer.affine`'s,
    which XLA compiles; without, Keras's own, whose ``ImageProjectiveTransformV3`` kernel is 2.3x
    faster than the same resampling run op by op (docs/benchmarks.md, "XLA on and off"). Both draw
    the same transforms and give the same images (tests/trainer/test_affine.py).
    """
    import keras

    from trainer import affine

    if kind == "flip":
        return keras.layers.RandomFlip(argument, seed=seed, name="augment_flip")
    if kind == "rotation":
        rotation = affine.RandomRotation if xla else keras.layers.RandomRotation
        return rotation(argument, seed=seed, name="augment_rotation")
    if kind == "zoom":
        zoom = affine.RandomZoom if xla else keras.layers.RandomZoom
        return zoom(argument, seed=seed, name="augment_zoom")
    raise ConfigError(f"Expected an augmentation among flip, rotation, zoom. Received: {kind!r}")

def augmentation(
    flip: str | bool = "none",
    rotation: float = 0.0,
    zoom: float = 0.0,
    *,
    seed: int | None = None,
    xla: bool = False,
) -> keras.Sequential | None:
    """Random flip / rotation / zoom layers for the model to include, or None when all are off.

    `flip`: ``"none"``, ``"horizontal"``, ``"vertical"``, ``"horizontal_and_vertical"`` (True means
    horizontal). `rotation` is a fraction of a full turn, `zoom` a fraction of the size (0 = off).
    The layers act only in training; at inference they pass images through unchanged. `xla`: for a
    model compiled with XLA (`layer`).
    """
    modes = ("none", "horizontal", "vertical", "horizontal_and_vertical")
    mode = ("horizontal" if flip else "none") if isinstance(flip, bool) else flip
    if mode not in modes:
        raise ConfigError(f"Expected flip to be one of {list(modes)} or a bool. Received: flip={flip!r}")
    for name, value in (("rotation", rotation), ("zoom", zoom)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"Expected 0 <= {name} < 1 (0 = off). Received: {name}={value}")
    if mode == "none" and rotation == 0 and zoom == 0:
        return None
    import keras

    kinds = [("flip", mode), ("rotation", rotation), ("zoom", zoom)]
    return keras.Sequential([layer(kind, argument, seed=seed, xla=xla) for kind, argument in kinds
                             if argument and argument != "none"], name="augmentation")
