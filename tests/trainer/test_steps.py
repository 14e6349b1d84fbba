"""Tests for trainer.steps (step-cost rules) and the XLA decision (trainer.accelerator.xla_on, the plan's log)."""

from __future__ import annotations

import argparse
import dataclasses
import logging

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from tests.trainer.xla_probe import xla_clusters
from trainer import affine, steps
from trainer.accelerator import choose_accelerator, xla_on
from trainer.config import SearchConfig, add_arguments, load
from trainer.hypermodel import ModelSpec, TransferHyperModel
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
from trainer import affine, steps
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


@pytest.mark.parametrize("xla", [True, False], ids=["on", "off"])
def test_the_augmented_step_is_compiled_exactly_when_the_log_says_xla_on(xla: bool, tmp_path, caplog) -> None:
    """Flip, rotation and zoom (`trainer.affine`) and the backbone compile under a strategy: the plan's
    log line, the model's jit_compile and the traced train step's XLA marks agree."""
    from tests.trainer.images import write_folder
    from trainer.cluster import Cluster
    from trainer.config import load
    from trainer.search import plan_search, scan_data

    folder = write_folder(tmp_path / "images", classes=3, per_class=6)
    config = load({"data": str(folder), "backbone": "small_cnn", "weights": "none", "image_size": "16",
                   "batch_size": "8", "xla": str(xla).lower(), "run_dir": str(tmp_path / "runs"),
                   "flip": "horizontal", "rotation": "0.05", "zoom": "0.1"}, {})
    root, splits = scan_data(config)
    with caplog.at_level(logging.INFO):
        plan = plan_search(config, Cluster(peers=(), rank=0, source="single"), root, splits)
    assert ("XLA on (jit_compile=True)" in caplog.text) is xla and ("XLA off" in caplog.text) is (not xla)
    assert [kind for kind, _ in plan.spec.augmentation] == ["flip", "rotation", "zoom"]
    assert plan.spec.jit_compile is xla
    spec = dataclasses.replace(plan.spec, heads=("gap_dense",))
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")  # a strategy: Keras's "auto" would be off here
    with strategy.scope():
        model = TransferHyperModel(spec).build(kt.HyperParameters())
    pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 3)).astype("float32")
    model.fit(pixels, np.arange(16) % 3, batch_size=8, epochs=1, verbose=0)
    assert model.jit_compile is xla
    assert (xla_clusters(model) > 0) is xla
    # Compiled: trainer.affine's resampling; not: Keras's own kernel (faster op by op).
    assert isinstance(model.get_layer("augment_rotation"), affine.RandomRotation) is xla
    assert isinstance(model.get_layer("augment_zoom"), keras.layers.RandomZoom)


def test_xla_auto_is_on_with_gpus_off_on_cpus_and_blocked_for_cpu_workers(caplog) -> None:
    assert choose_accelerator(["GPU"], mixed_precision="off").jit_compile is True
    assert choose_accelerator(["CPU"], mixed_precision="off").jit_compile is False
    assert choose_accelerator(["GPU"], mixed_precision="off", xla=False).jit_compile is False
    cpu = choose_accelerator(["CPU"], mixed_precision="off", xla=True)
    gpu = choose_accelerator(["GPU"], mixed_precision="off", xla=True)
    assert xla_on(cpu, workers=1) and xla_on(gpu, workers=2) and not caplog.text
    with caplog.at_level(logging.WARNING, logger="trainer.accelerator"):
        assert not xla_on(cpu, workers=2)
    assert "XLA off although requested" in caplog.text and "collectives on CPU" in caplog.text
    assert load({}, {}).xla is None and load({}, {"TFSTACK_XLA": "auto"}).xla is None
    assert load({}, {"TFSTACK_XLA": "true"}).xla is True and load({"xla": False}, {}).xla is False
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--xla"]).xla is True and parser.parse_args(["--no-xla"]).xla is False


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
