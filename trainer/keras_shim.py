"""The one version-guarded fix that lets Keras 3 ``model.fit`` run under multi-worker MWMS.

https://github.com/keras-team/keras/issues/20585 (open): `install_keras_mwms_shim` patches two places
of keras/src/backend/tensorflow/trainer.py. Remove this module when upstream is fixed.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import keras
import tensorflow as tf

__all__ = ["install_keras_mwms_shim", "reduce_mean_together"]

log = logging.getLogger(__name__)

# Keras releases known to break under MWMS (keras-team/keras#20585): [first, end). Widen `end` only
# after the two-process test in tests/trainer/test_distribute.py passes on the new release.
_SHIM_VERSIONS = ((3, 0), (3, 16))
_shim_installed = False


def _shim_applies(version: str) -> bool:
    first, end = _SHIM_VERSIONS
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is not None and first <= (int(match[1]), int(match[2])) < end


def install_keras_mwms_shim(version: str | None = None) -> bool:
    """Make Keras 3 ``model.fit``/``evaluate`` work under multi-worker MWMS (keras-team/keras#20585).

    Upstream breaks in two places once the strategy spans several workers:

    1. ``TensorFlowTrainer._maybe_symbolic_build`` calls ``strategy.reduce("MEAN", batch, axis=None)``
       on the first PerReplica input batch, which MWMS cannot do eagerly (conversion error). The
       build needs only shapes and dtypes, so the shim builds from the distributed data set's
       ``element_spec`` (this worker's replica's spec): no iterator is opened and no batch is read
       (upstream opens a throwaway iterator on every ``fit`` and ``evaluate``, which ``reset()`` then
       drops), and nothing at all happens when the model, its metrics, loss and optimizer are built.
    2. ``reduce_per_replica`` reduces the step's logs with ``strategy.reduce("MEAN", v, axis=0)``,
       which fails on scalar losses and metrics. The shim reduces with ``axis=None``: the mean
       across replicas, as the single-worker path does, and identical on every worker; and it
       reduces all of a step's logs in one collective (`reduce_mean_together`) instead of one each.

    Both replacements defer to the originals unless the strategy runs collectives across workers.
    Idempotent; patches only Keras versions in ``_SHIM_VERSIONS`` whose patched attributes exist,
    and is a no-op otherwise. Remove it when the issue is fixed.

    Args:
        version: the Keras version to judge (default: the installed ``keras.__version__``).

    Returns:
        True when the shim is (now or already) installed, False when it does not apply.
    """
    global _shim_installed
    version = keras.__version__ if version is None else version
    if not _shim_applies(version):
        log.debug("Keras MWMS shim not needed for keras %s", version)
        return False
    if _shim_installed:
        return True
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:
        log.warning("Keras MWMS shim not installed: keras %s has no TensorFlow trainer module", version)
        return False
    needed = ("reduce_per_replica", "_collective_all_reduce_multi_worker", "TensorFlowTrainer")
    if not all(hasattr(tf_trainer, name) for name in needed) or not hasattr(
        tf_trainer.TensorFlowTrainer, "_maybe_symbolic_build"
    ):
        log.warning("Keras MWMS shim not installed: keras %s lacks the patched functions", version)
        return False

    multi_worker = tf_trainer._collective_all_reduce_multi_worker
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def _maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        if _all_built(self):
            return  # a second fit (phase 2), an evaluate inside fit: nothing to build, no iterator to open
        data_batch = _local_spec(iterator)
        if data_batch is None:  # no element_spec to read: build from one local batch (opens an iterator)
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda x: strategy.experimental_local_results(x)[0]
                    if isinstance(x, tf.distribute.DistributedValues)
                    else x,
                    next(it),
                )
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return reduce_mean_together(values, strategy)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _shim_installed = True
    log.info("installed the Keras %s MWMS shim (https://github.com/keras-team/keras/issues/20585)", version)
    return True


def _all_built(model: Any) -> bool:
    """What ``Trainer._symbolic_build`` (keras/src/trainers/trainer.py) checks before it builds anything."""
    metrics, loss, optimizer = model._compile_metrics, model._compile_loss, model.optimizer
    return (all(layer.built for layer in model._flatten_layers())
            and (metrics is None or metrics.built) and (loss is None or loss.built)
            and (optimizer is None or optimizer.built))


def _local_spec(iterator: Any) -> Any:
    """The (x, y[, weights]) TensorSpecs of one replica's batch, from a Keras epoch iterator's data set."""
    dataset = getattr(iterator, "_distributed_dataset", None)
    spec = getattr(dataset, "element_spec", None)
    if spec is None:
        return None

    def local(value: Any) -> Any:
        specs = getattr(value, "_value_specs", None)  # a PerReplicaSpec: one spec per local replica
        return specs[0] if specs else value

    spec = tf.nest.map_structure(local, spec, expand_composites=False)
    flat = tf.nest.flatten(spec)
    return spec if flat and all(isinstance(v, tf.TensorSpec) for v in flat) else None


def reduce_mean_together(values: Any, strategy: tf.distribute.Strategy) -> Any:
    """``strategy.reduce("MEAN", v, axis=None)`` of every value in `values`, with one collective per dtype.

    A training step logs the loss and each metric; reduced one by one, each costs its own collective and
    host round trip (about 2 ms each across two CPU workers here). Values of one floating dtype with static
    shapes are packed per replica into one vector, reduced once, and split back; any other value (an int,
    an unknown shape, an already reduced tensor) is reduced on its own as before.
    """
    flat = tf.nest.flatten(values)
    # With one device per worker, strategy.run returns plain tensors, not PerReplica: both are this worker's.
    local = [strategy.experimental_local_results(v) if isinstance(v, (tf.Tensor, tf.distribute.DistributedValues))
             else None for v in flat]
    groups: dict[tf.dtypes.DType, list[int]] = {}
    for index, parts in enumerate(local):
        if parts is not None and parts[0].dtype.is_floating and parts[0].shape.is_fully_defined():
            groups.setdefault(parts[0].dtype, []).append(index)
    packed = {i for members in groups.values() if len(members) > 1 for i in members}
    reduced = [None if i in packed else strategy.reduce("MEAN", v, axis=None) for i, v in enumerate(flat)]
    local_count = len(strategy.extended.worker_devices)
    for members in groups.values():
        if len(members) < 2:
            continue

        def pack(context: tf.distribute.experimental.ValueContext, members: list[int] = members) -> tf.Tensor:
            replica = context.replica_id_in_sync_group % local_count  # this worker's replicas, in device order
            return tf.concat([tf.reshape(local[i][replica], [-1]) for i in members], axis=0)

        mean = strategy.reduce("MEAN", strategy.experimental_distribute_values_from_function(pack), axis=None)
        shapes = [local[i][0].shape for i in members]
        for i, part, shape in zip(members, tf.split(mean, [s.num_elements() for s in shapes]), shapes, strict=True):
            reduced[i] = tf.reshape(part, shape)
    return tf.nest.pack_sequence_as(values, reduced)
