"""The SavedModel the client's tests run against on the real local model server.

Built with TensorFlow at test time (session-scoped), so every answer comes from a real SavedModel
served by ``serving.model_server`` over real sockets, not from a fake written to match the client:

- ``serving_default``: ``x`` float32 (or another dtype) ``[None, 3]`` -> ``y = 2x + offset`` (float32),
  ``total`` (row sums, float32 ``[None]``) and ``tag`` (``b"row0"``, ``b"row1"``, ... string ``[None]``);
  ``offset`` is the version number, so a test can tell which version answered;
- ``images``: ``images`` string ``[None]`` -> ``class_id`` int64 ``[None]`` (byte length mod 3);
- ``echo_<dtype>``: ``x`` of any shape -> ``y = x``, one per TensorFlow dtype the codec carries;
- ``slow``: ``seconds`` float32 scalar -> busy-waits that long in the graph (for deadlines).
"""

from __future__ import annotations

import shutil
from pathlib import Path

MODEL = "toy"
ECHO_DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
               "uint16", "uint32", "uint64", "bool", "string", "complex64", "complex128")


def build_toy_model(target: Path, version: int, x_dtype: str = "float32") -> Path:
    """Write one version of the toy model to ``target`` (``x_dtype``: the dtype of serving_default's x)."""
    import tensorflow as tf

    x_type = tf.as_dtype(x_dtype)

    class Toy(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.offset = tf.Variable(float(version))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], x_type, name="x")])
        def default(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            rows = tf.range(tf.shape(x)[0])
            x = tf.cast(x, tf.float32)
            return {
                "y": 2.0 * x + self.offset,
                "total": tf.reduce_sum(x, axis=1),
                "tag": tf.strings.join(["row", tf.strings.as_string(rows)]),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"class_id": tf.cast(tf.strings.length(images) % 3, tf.int64)}

        @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="seconds")])
        def slow(self, seconds: tf.Tensor) -> dict[str, tf.Tensor]:
            start = tf.timestamp()

            def waiting(now: tf.Tensor) -> tf.Tensor:
                return now - start < tf.cast(seconds, tf.float64)

            end = tf.while_loop(waiting, lambda _now: [tf.timestamp()], [start])
            return {"waited": tf.cast(end - start, tf.float32)}

    module = Toy()
    signatures = {"serving_default": module.default, "images": module.images, "slow": module.slow}
    for name in ECHO_DTYPES:
        dtype = tf.as_dtype(name)
        echo = tf.function(lambda x: {"y": tf.identity(x)}, input_signature=[tf.TensorSpec(None, dtype, name="x")])
        signatures[f"echo_{name}"] = echo.get_concrete_function()
    staging = target.parent / f".staging-{target.name}"
    tf.saved_model.save(module, str(staging), signatures=signatures)
    staging.rename(target)
    return target


def copy_version(source: Path, base: Path, version: int) -> Path:
    """Put a built version under ``base`` atomically (copy aside, then rename), as exports appear."""
    staging = base / f".staging-{version}"
    shutil.copytree(source, staging)
    target = base / str(version)
    staging.rename(target)
    return target
