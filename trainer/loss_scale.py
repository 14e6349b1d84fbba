"""Loss scaling for mixed_float16 that cannot split a group: every replica agrees whether to skip a step.

Keras 3's ``LossScaleOptimizer`` (keras/src/optimizers/loss_scale_optimizer.py, Keras 3.15.1) decides in
``check_finite`` from *this replica's own* gradients whether they overflowed, and only in the finite
branch (``_stateful_handle_finite_grads`` -> the inner optimizer's ``apply``) all-reduces the gradients
(keras/src/backend/tensorflow/optimizer.py, ``_all_reduce_sum_gradients``). Under
MultiWorkerMirroredStrategy a worker whose gradients overflow skips the all-reduce that its peers
enter: the group hangs until the stall watchdog (exit 4), and may hang again on the rerun. (The
upstream comment "Each replica computed the same `finite` value, since `grads` is all-reduced" is
not true of that code path.)

`AgreedLossScaleOptimizer` all-reduces the "not finite" flag before the branch: one scalar
collective per step, entered by every replica unconditionally, so every replica takes the same branch
(all skip and halve the scale, or all apply). bfloat16 needs no loss scaling at all, which is why
`trainer.accelerator` prefers ``mixed_bfloat16`` on GPUs that have it (compute capability >= 8.0).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

__all__ = ["AgreedLossScaleOptimizer", "current_scale", "for_policy"]


@keras.saving.register_keras_serializable(package="tfstack")
class AgreedLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """``LossScaleOptimizer`` whose overflow check is the same on every replica (an all-reduce of it)."""

    def check_finite(self, grads: list[Any]) -> Any:
        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync <= 1:
            return finite
        overflowed = tf.cast(tf.logical_not(finite), tf.float32)
        # Every replica enters this collective at every step, before the branch that holds the gradients'.
        return tf.equal(context.all_reduce(tf.distribute.ReduceOp.SUM, overflowed), 0.0)


def for_policy(
    optimizer: keras.optimizers.Optimizer, policy: str | Any, initial_scale: float | None = None
) -> keras.optimizers.Optimizer:
    """Wrap `optimizer` in `AgreedLossScaleOptimizer` under ``mixed_float16``; unchanged otherwise.

    Keras's ``compile`` wraps a plain optimizer in its own ``LossScaleOptimizer`` under mixed_float16
    (keras/src/trainers/trainer.py); one that is already a ``LossScaleOptimizer`` is kept.
    `initial_scale` (default Keras's 2^15) continues a scale found earlier (`current_scale`).
    """
    name = getattr(policy, "name", policy)
    if name == "mixed_float16" and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        kwargs = {} if initial_scale is None else {"initial_scale": initial_scale}
        return AgreedLossScaleOptimizer(optimizer, **kwargs)
    return optimizer


def current_scale(optimizer: keras.optimizers.Optimizer | None) -> float | None:
    """The dynamic loss scale `optimizer` has reached, or None when it scales no loss (or was never built)."""
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer) or not optimizer.built:
        return None
    # Every replica holds the same value: the overflow decision that changes it is agreed (above).
    return float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))
