"""Tests for trainer.steps (step-cost rules) and the XLA decision of trainer.search_space.model_spec."""

from __future__ import annotations

import dataclasses
import logging

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from trainer import steps
from trainer.config import SearchConfig
from trainer.hypermodel import ModelSpec, TransferHyperModel, xla_blockers
from trainer.progress import ProgressCallback, SearchMetrics
from trainer.search_space import model_spec
from trainer.watchdog import StallWatchdog


@pytest.mark.parametrize(("train", "val", "workers", "expected"), [
    (45, 12, 1, 3), (40, 10, 1, 5), (44, 10, 1, 2), (64, 16, 1, 8), (23, 6, 1, 1), (40, None, 1, 8), (40, 10, 2, 1),
])
def test_steps_per_execution_divides_every_epoch_and_is_one_under_mwms(train: int, val: int | None, workers: int,
                                                                      expected: int) -> None:
    n = steps.steps_per_execution(train, val, workers=workers)
    assert n == expected and train % n == 0 and (val is None or val % n == 0)


def test_batchnorm_is_synchronized_only_for_small_per_replica_batches() -> None:
    assert steps.sync_batchnorm(8, 2) and steps.sync_batchnorm(15, 4)
    assert not steps.sync_batchnorm(16, 2) and not steps.sync_batchnorm(32, 2)
    assert not steps.sync_batchnorm(4, 1)  # one replica: nothing to synchronize
    config = SearchConfig(backbone=("small_cnn",), weights="none", image_size=32, batch_size=8)
    assert model_spec(config, 10, replicas=2).sync_batchnorm
    assert not model_spec(dataclasses.replace(config, batch_size=32), 10, replicas=2).sync_batchnorm


def test_the_trainer_batch_callbacks_are_async_safe_but_tensorflow_keras_syncs_anyway() -> None:
    from keras.src import backend
    from keras.src.callbacks.callback_list import CallbackList

    ours = [ProgressCallback(SearchMetrics(), 32), StallWatchdog(0).callback()]
    assert all(callback.async_safe for callback in ours)
    # Keras 3's TensorFlow backend never dispatches callbacks asynchronously: steps_per_execution is the lever.
    # When this fails, Keras made it thread-safe: revisit trainer.steps (the library callbacks would then matter).
    assert backend.IS_THREAD_SAFE is False
    assert not CallbackList(ours)._async_train


def test_progress_counts_images_by_step_with_several_steps_per_execution() -> None:
    metrics = SearchMetrics()
    progress = ProgressCallback(metrics, 32)
    progress.on_epoch_begin(0)
    for last_step in (3, 7, 11):  # three executions of 4 steps: Keras passes each one's last step index
        progress.on_train_batch_end(last_step)
    assert metrics.images._value.get() == 12 * 32


_TWO_REPLICAS = """
import json, keras, numpy as np, tensorflow as tf
from trainer import steps
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inputs = keras.Input((4,))
    norm = keras.layers.BatchNormalization(momentum=0.5)
    model = keras.Model(inputs, keras.layers.Dense(2)(norm(inputs)))
    model.compile("adam", "mse")
x = np.concatenate([np.zeros((8, 4)), np.full((8, 4), 10.0)]).astype("float32")
model.fit(x, np.zeros((16, 2), "float32"), batch_size=16, epochs=1, verbose=0, shuffle=False)
before = [t.numpy().tolist() for t in norm.moving_mean.value.values]
callback = steps.AverageBatchNormStatistics()
callback.set_model(model)
averaged = callback.average()
after = [t.numpy().tolist() for t in norm.moving_mean.value.values]
print(json.dumps({"before": before, "after": after, "averaged": averaged}))
"""


def test_average_batchnorm_statistics_makes_the_replicas_equal() -> None:
    # Two replicas in one process need two logical CPUs, set before TensorFlow starts: a fresh interpreter.
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _TWO_REPLICAS], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = (np.array(result[k]) for k in ("before", "after"))
    assert not np.allclose(before[0], before[1])  # per-replica statistics: replica 0 saw zeros, replica 1 tens
    assert result["averaged"] == 2  # moving mean and variance of the one layer
    np.testing.assert_allclose(after[0], after[1])
    np.testing.assert_allclose(after[0], (before[0] + before[1]) / 2, rtol=1e-6)


def _traced_functions(function: object, seen: set[int] | None = None) -> list[object]:
    """The tf.functions reachable from `function` through closures (Keras wraps its train tf.function)."""
    seen = set() if seen is None else seen
    if id(function) in seen:
        return []
    seen.add(id(function))
    found = [function] if hasattr(function, "_list_all_concrete_functions") else []
    for cell in getattr(function, "__closure__", None) or ():
        try:
            found += _traced_functions(cell.cell_contents, seen)
        except ValueError:  # an empty cell
            continue
    return found


def _xla_clusters(model: keras.Model) -> int:
    """Functions marked for XLA compilation (``_XlaMustCompile``) in the traced train step's graphs."""
    marked = 0
    for function in _traced_functions(model.train_function):
        for concrete in function._list_all_concrete_functions():  # type: ignore[attr-defined]
            library = concrete.graph.as_graph_def().library
            marked += sum(1 for f in library.function if f.attr["_XlaMustCompile"].b)
            marked += int(concrete.graph.as_graph_def().node and any(
                node.attr["_XlaMustCompile"].b for node in concrete.graph.as_graph_def().node))
    return marked


@pytest.mark.parametrize("augment", [False, True], ids=["flip-only", "rotation"])
def test_xla_is_on_under_a_strategy_exactly_when_the_model_compiles(augment: bool, caplog) -> None:
    config = SearchConfig(backbone=("small_cnn",), weights="none", image_size=16, batch_size=8, xla=True,
                          flip="horizontal", rotation=0.1 if augment else 0.0, zoom=0.0)
    with caplog.at_level(logging.WARNING, logger="trainer.search"):
        spec = model_spec(config, 3, replicas=1)
    assert spec.jit_compile is (not augment)
    assert ("XLA off although --xla" in caplog.text) is augment
    assert xla_blockers(spec.augmentation) == (["rotation"] if augment else [])
    spec = dataclasses.replace(spec, heads=("gap_dense",))
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")  # a strategy: Keras's "auto" would be off here
    with strategy.scope():
        model = TransferHyperModel(spec).build(kt.HyperParameters())
    pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 3)).astype("float32")
    model.fit(pixels, np.arange(16) % 3, batch_size=8, epochs=1, verbose=0)
    assert model.jit_compile is (not augment)
    assert (_xla_clusters(model) > 0) is (not augment)


def test_model_spec_without_xla_never_leaves_it_to_auto() -> None:
    spec = model_spec(SearchConfig(backbone=("small_cnn",), weights="none", image_size=16), 3)
    assert spec.jit_compile is False
    assert ModelSpec(num_classes=3, image_size=16).steps_per_execution == 1


def test_a_repeated_training_set_gives_the_same_first_epoch_and_never_ends(tmp_path) -> None:
    from tests.trainer.images import write_folder
    from trainer import pipeline, scan

    splits = scan.scan(write_folder(tmp_path / "images", classes=3, per_class=7), val_fraction=0.25, seed=1)
    strategy = tf.distribute.get_strategy()
    common = {"training": True, "seed": 3, "class_weights": [1.0, 2.0, 3.0]}
    finite = pipeline.distributed_dataset(strategy, splits.train, (8, 8), 4, **common)
    repeated = pipeline.distributed_dataset(strategy, splits.train, (8, 8), 4, repeat=True, **common)
    assert repeated.cardinality().numpy() == tf.data.INFINITE_CARDINALITY
    epoch = steps.steps_per_epoch(len(splits.train), 4)
    first = list(finite.as_numpy_iterator())
    again = list(repeated.take(2 * epoch).as_numpy_iterator())
    assert len(first) == epoch and first[-1][0].shape[0] == len(splits.train) - 4 * (epoch - 1)  # partial last batch
    for ours, theirs in zip(again[:epoch], first, strict=True):  # same batches, pixels, labels and weights
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)
    second = np.concatenate([batch[1] for batch in again[epoch:]])
    assert sorted(second.tolist()) == sorted(f.label for f in splits.train)  # the next pass: every image once more
