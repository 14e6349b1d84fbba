"""Count the files a tf.data pipeline reads: a stand-in for ``tf.io.read_file`` that records each path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def counting_read_file(read_file: Callable[..., Any], reads: list[str]) -> Callable[..., Any]:
    """`read_file` (``tf.io.read_file``) that appends every path it reads to `reads` (one read per decode).

    Install it as ``tf.io.read_file`` before `trainer.pipeline` traces its decode function.
    """
    import tensorflow as tf

    def counting(path: tf.Tensor, name: str | None = None) -> tf.Tensor:
        def record(p: tf.Tensor) -> tf.Tensor:
            reads.append(p.numpy().decode())
            return p

        recorded = tf.py_function(record, [path], Tout=tf.string)
        recorded.set_shape([])
        return read_file(recorded, name=name)

    return counting
