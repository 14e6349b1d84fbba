"""What a training step costs beyond its compute: steps per execution, async-safe callbacks, BatchNorm sync.

Under ``MultiWorkerMirroredStrategy`` every collective of a step is a round trip between workers, and
every host wait for the device idles it. This module holds the rules the search applies (docs/distributed.md,
"Step cost"):

- `steps_per_execution`: run several steps per call of the compiled train function (one host round trip
  per N steps). Keras runs exactly N steps per call, also in an epoch's last call, so N must divide the
  training and the validation steps per epoch: the largest such N up to `MAX_STEPS_PER_EXECUTION`.
  One worker process only: under MultiWorkerMirroredStrategy Keras 3.15's ``multi_step_on_iterator``
  (a ``tf.while_loop`` over ``get_next_as_optional``, keras/src/backend/tensorflow/trainer.py) fails on
  TF 2.21 with "You must feed a value for placeholder tensor 'while/body/.../while/cond/Placeholder'"
  (measured with bench/scaling.py), so MWMS trains one step per call.
- Callbacks: Keras dispatches batch-end callbacks on a thread, without waiting for the step, only when
  every callback is ``async_safe`` *and* the backend is thread-safe (keras/src/callbacks/callback_list.py,
  ``_configure_async_dispatch``). Keras 3's TensorFlow backend says it is not (``IS_THREAD_SAFE = False``
  in keras/src/backend/tensorflow/core.py): it converts every execution's logs to Python on the main
  thread, so the host waits for each execution whatever the callbacks. The trainer's own batch callbacks
  (progress, watchdog) are async-safe all the same; the lever on TensorFlow is `steps_per_execution`.
- `sync_batchnorm`: synchronized BatchNormalization all-reduces batch statistics in every BN layer of
  every step (forward and backward). It pays only where a replica's batch is too small for its own
  statistics: below `SYNC_BATCHNORM_BELOW` images. Above, each replica normalises with its own batch
  and `AverageBatchNormStatistics` averages the moving statistics across replicas before each
  validation pass and at the end of training (one all-reduce for all layers), so every worker
  validates, checkpoints and exports the same weights.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import tensorflow as tf

__all__ = [
    "MAX_STEPS_PER_EXECUTION",
    "SYNC_BATCHNORM_BELOW",
    "AverageBatchNormStatistics",
    "steps_per_epoch",
    "steps_per_execution",
    "sync_batchnorm",
]

log = logging.getLogger(__name__)

MAX_STEPS_PER_EXECUTION = 8
"""Steps per call of the compiled train function at most: callbacks (progress, watchdog, preemption) then
run every N steps, so N bounds how late they react."""

SYNC_BATCHNORM_BELOW = 16
"""Per-replica batch below which BatchNormalization is synchronized across replicas (its statistics over
fewer images are too noisy); from 16 up, per-replica statistics (as ImageNet-in-an-hour trains, Goyal et
al. 2017, with 32 per worker) and no collective inside the forward pass."""


def steps_per_epoch(images: int, global_batch: int) -> int:
    """Global batches in one pass over `images` (the last one partial or padded): ``fit``'s steps per epoch
    over a repeated data set (`trainer.pipeline.distributed_dataset` with ``repeat=True``)."""
    return max(1, math.ceil(images / global_batch))


def steps_per_execution(train_steps: int, val_steps: int | None = None, limit: int = MAX_STEPS_PER_EXECUTION,
                        *, workers: int = 1) -> int:
    """The largest N <= `limit` that divides `train_steps` (and `val_steps`): epochs stay exact; 1 with
    several `workers` (see the module docstring)."""
    if workers > 1:
        return 1
    common = math.gcd(train_steps, val_steps) if val_steps else train_steps
    return max(n for n in range(1, max(1, limit) + 1) if common % n == 0)


def sync_batchnorm(per_replica_batch: int, replicas: int) -> bool:
    """Whether BatchNormalization layers should be synchronized across `replicas` (`SYNC_BATCHNORM_BELOW`)."""
    return replicas > 1 and per_replica_batch < SYNC_BATCHNORM_BELOW


class AverageBatchNormStatistics(keras.callbacks.Callback):
    """Average the moving statistics of unsynchronized BatchNormalization layers across replicas.

    Runs before each validation pass (``on_test_begin``, inside ``fit`` and in ``evaluate``) and at the
    end of training: one all-reduce (MEAN) of every moving mean and variance, after which every replica
    holds the same values. The mean of the replicas' moving variances leaves out the spread of their
    means (a slight underestimate of the global variance, as running per-replica statistics do anyway).
    A collective: every worker runs the same callbacks at the same points.
    """

    def __init__(self) -> None:
        super().__init__()
        self.async_safe = True
        self._function: Any = None

    def _variables(self) -> list[Any]:
        found = []
        for layer in self.model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
                found += [layer.moving_mean, layer.moving_variance]
        return found

    def average(self) -> int:
        """Average now; returns how many variables were averaged (0 in one replica)."""
        strategy = self.model.distribute_strategy
        variables = self._variables()
        if strategy.num_replicas_in_sync <= 1 or not variables:
            return 0
        if self._function is None:
            def replica_fn() -> Any:
                context = tf.distribute.get_replica_context()
                means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables])
                for variable, mean in zip(variables, means, strict=True):
                    # Replica-local values differ only here; `aggregation` NONE keeps the assignment local.
                    variable.value.assign(mean)
                return tf.constant(0)

            self._function = tf.function(lambda: strategy.run(replica_fn))
        self._function()
        return len(variables)

    def on_train_begin(self, logs: Any = None) -> None:
        self._function = None  # a new fit may have a new model or trainable set

    def on_test_begin(self, logs: Any = None) -> None:
        self.average()

    def on_train_end(self, logs: Any = None) -> None:
        self.average()
