"""One worker of the two-process MWMS tests: ``python -m tests.trainer.mwms_child MODE OUTDIR``.

Reads its role from TF_CONFIG (as the trainer's CLI does), then removes TF_CONFIG from the
environment to prove that `trainer.distribute.make_strategy` needs only the `Cluster` object.
Writes what the test compares into ``OUTDIR/<mode>_<rank>.*``. Modes:

- ``fit``: a tiny Dense model, ``model.fit`` for 2 epochs with validation data and the shared
  backup callback; saves final weights (npz) and the history (json).
- ``tuner``: a KerasTuner RandomSearch (2 trials) with ``distribution_strategy``; checks agreement
  at each trial start; saves the trials' and the best hyperparameters (json).
- ``noshim``: ``fit`` without the shim; records the upstream error (keras-team/keras#20585).
- ``fault``: like ``fit`` for 4 epochs, but worker 1 dies at the start of epoch 2 on its first run;
  run under the launcher with restarts, the workers resume from the chief's epoch backup.
- ``disagree``: `assert_workers_agree` on a payload that differs per worker; records the error.
- ``padded``: the search's own model and datasets (`trainer.pipeline.distributed_dataset`: each
  worker reads and decodes its own shard, padded to full global batches with weight-0 copies;
  36 training images and 12 validation images over a global batch of 8 become 40 and 16);
  records ``val_accuracy`` from fit, the accuracy over the real validation images computed with
  ``model.predict``, the final weights, and every file this worker's pipelines read (counted by
  wrapping ``tf.io.read_file``).
- ``repeated``: ``padded`` as the search now trains: the training set repeated with ``steps_per_epoch``
  (validation stays one finite pass), BatchNormalization per replica with `AverageBatchNormStatistics`; also records
  how many iterators ``fit`` opened over each data set and whether tf.distribute checks for the end
  of data at every step (``_enable_get_next_as_optional``).
- ``xla``: the search's own model (small_cnn, the default rotation and zoom augmentation) compiled
  with ``jit_compile=True`` under MWMS on CPUs (RING); records whether ``fit`` failed and the error.
- ``stuck``: ``fit`` under a 5 s `StallWatchdog`; worker 1 blocks forever after its first batch
  (alive but stuck), so both workers' watchdogs end them with exit code 4.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from trainer import cluster as cluster_module
from trainer import distribute, keras_shim
from trainer.errors import DivergenceError
from trainer.watchdog import StallWatchdog

GLOBAL_BATCH = 16
FEATURES = 6
CLASSES = 3


def _data(seed: int, samples: int) -> tf.data.Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, FEATURES)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int64") + (x[:, 2] > 1).astype("int64")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _build(units: int = 8, learning_rate: float = 0.05) -> keras.Model:
    keras.utils.set_random_seed(7)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(units, activation="relu"),
        keras.layers.Dense(CLASSES, activation="softmax", dtype="float32"),
    ])
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )
    return model


def _fit(strategy: tf.distribute.Strategy, cluster: cluster_module.Cluster, out: Path) -> None:
    with strategy.scope():
        model = _build()
    backup = distribute.backup_and_restore(out / "backup", writer=cluster.is_chief)
    history = model.fit(
        _data(1, 128), validation_data=_data(2, 64), epochs=2, verbose=0, callbacks=[backup]
    )
    np.savez(out / f"fit_{cluster.rank}.npz", *[np.asarray(w) for w in model.get_weights()])
    (out / f"fit_{cluster.rank}.json").write_text(json.dumps(
        {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
         "replicas": strategy.num_replicas_in_sync}
    ))


def _noshim(strategy: tf.distribute.Strategy, cluster: cluster_module.Cluster, out: Path) -> None:
    try:
        _fit(strategy, cluster, out)
    except Exception as exc:  # the upstream failure this test documents
        result = {"failed": True, "error": f"{type(exc).__name__}: {exc}"[-2000:]}
    else:
        result = {"failed": False, "error": ""}
    (out / f"noshim_{cluster.rank}.json").write_text(json.dumps(result))


class _DieOnce(keras.callbacks.Callback):
    """Kill this process at the start of epoch 2 on its first run (a marker file remembers the run)."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if epoch == 2 and not self.marker.exists():
            self.marker.write_text("died")
            logging.getLogger(__name__).error("dying at the start of epoch %d", epoch)
            os._exit(17)


def _fault(strategy: tf.distribute.Strategy, cluster: cluster_module.Cluster, out: Path) -> None:
    with strategy.scope():
        model = _build()
    callbacks: list[keras.callbacks.Callback] = [distribute.backup_and_restore(out / "backup", writer=cluster.is_chief)]
    if cluster.rank == 1:
        callbacks.append(_DieOnce(out / "died"))
    history = model.fit(_data(1, 128), validation_data=_data(2, 64), epochs=4, verbose=0, callbacks=callbacks)
    np.savez(out / f"fault_{cluster.rank}.npz", *[np.asarray(w) for w in model.get_weights()])
    (out / f"fault_{cluster.rank}.json").write_text(json.dumps(
        {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    ))


class _HyperModel(kt.HyperModel):
    def build(self, hp: kt.HyperParameters) -> keras.Model:
        return _build(hp.Int("units", 4, 32, step=4), hp.Float("learning_rate", 1e-3, 1e-1, sampling="log"))


def _tuner(strategy: tf.distribute.Strategy, cluster: cluster_module.Cluster, out: Path) -> None:
    seen: list[dict[str, object]] = []

    class Tuner(kt.RandomSearch):
        def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
            super().on_trial_begin(trial)
            values = json.dumps(trial.hyperparameters.values, sort_keys=True)
            distribute.assert_workers_agree(strategy, values, f"trial {trial.trial_id} hyperparameters")
            seen.append(dict(trial.hyperparameters.values))

    with distribute.worker_dirs(out / "shared", cluster) as dirs:
        tuner = Tuner(
            _HyperModel(), objective="val_accuracy", max_trials=2, seed=3, directory=str(dirs.tuner_dir),
            project_name="child", distribution_strategy=strategy,
        )
        tuner.search(_data(1, 96), validation_data=_data(2, 32), epochs=1, verbose=0)
        best = tuner.get_best_hyperparameters(1)[0].values
        scratch = str(dirs.scratch) if dirs.scratch else None
    (out / f"tuner_{cluster.rank}.json").write_text(json.dumps(
        {"trials": seen, "best": best, "tuner_dir": str(dirs.tuner_dir), "scratch": scratch}
    ))


class _Block(keras.callbacks.Callback):
    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if batch == 1:
            logging.getLogger(__name__).error("blocking forever after batch %d", batch)
            threading.Event().wait()


def _stuck(strategy: tf.distribute.Strategy, cluster: cluster_module.Cluster, out: Path) -> None:
    watchdog = StallWatchdog(5.0)
    with strategy.scope():
        model = _build()
    callbacks = [watchdog.callback(), *([_Block()] if cluster.rank == 1 else [])]
    with watchdog.armed("fit"):
        model.fit(_data(1, 128), epochs=2, verbose=0, callbacks=callbacks)


def _padded(strategy: tf.distribute.Strategy, cluster: cluster_module.Cluster, out: Path) -> None:
    from tests.trainer.images import write_folder
    from tests.trainer.reads import counting_read_file
    from trainer import pipeline, scan
    from trainer.hypermodel import ModelSpec, TransferHyperModel

    reads: list[str] = []  # every file this worker's pipelines read (one read per decode)
    tf.io.read_file = counting_read_file(tf.io.read_file, reads)  # looked up when trainer.pipeline traces its decode
    splits = scan.scan(write_folder(out / f"images{cluster.rank}", classes=3, per_class=16), val_fraction=0.25,
                       test_fraction=0.0, seed=1)
    assert len(splits.val) == 12, len(splits.val)
    spec = ModelSpec(num_classes=3, image_size=16, heads=("gap_dense",))
    train = pipeline.distributed_dataset(strategy, splits.train, (16, 16), 8, training=True, seed=1,
                                     pad_to_full_batches=True, name="train")
    val = pipeline.distributed_dataset(strategy, splits.val, (16, 16), 8, training=False, seed=1,
                                   pad_to_full_batches=True, name="val")
    with strategy.scope():
        model = TransferHyperModel(spec).build(kt.HyperParameters())
    history = model.fit(train, validation_data=val, epochs=2, verbose=0)
    decoded = list(reads)
    weights = model.get_weights()
    np.savez(out / f"padded_{cluster.rank}.npz", *[np.asarray(w) for w in weights])
    fresh = TransferHyperModel(spec).build(kt.HyperParameters())  # outside the strategy: plain predict
    fresh.set_weights(weights)
    pixels, labels = pipeline.load_arrays(splits.val, (16, 16))
    real = float(np.mean(np.argmax(fresh.predict(pixels, verbose=0), axis=-1) == labels))
    root = out / f"images{cluster.rank}"
    (out / f"padded_{cluster.rank}.json").write_text(json.dumps(
        {"val_accuracy": [float(v) for v in history.history["val_accuracy"]], "real_accuracy": real,
         "pixels_spec": repr(train.element_spec[0]),
         "reads": [str(Path(p).relative_to(root)) for p in decoded],
         "train": [str(f.path.relative_to(root)) for f in splits.train],
         "val": [str(f.path.relative_to(root)) for f in splits.val]}
    ))


def _repeated(strategy: tf.distribute.Strategy, cluster: cluster_module.Cluster, out: Path) -> None:
    import dataclasses

    from tests.trainer.images import write_folder
    from tests.trainer.reads import counting_read_file
    from trainer import pipeline, scan
    from trainer.hypermodel import ModelSpec, TransferHyperModel
    from trainer.steps import AverageBatchNormStatistics, steps_per_epoch

    reads: list[str] = []
    tf.io.read_file = counting_read_file(tf.io.read_file, reads)
    splits = scan.scan(write_folder(out / f"images{cluster.rank}", classes=3, per_class=16), val_fraction=0.25,
                       test_fraction=0.0, seed=1)
    spec = dataclasses.replace(ModelSpec(num_classes=3, image_size=16, heads=("gap_dense",)), sync_batchnorm=False)
    common = {"pad_to_full_batches": True, "seed": 1}
    train = pipeline.distributed_dataset(strategy, splits.train, (16, 16), 8, training=True, name="train", repeat=True,
                                     **common)
    val = pipeline.distributed_dataset(strategy, splits.val, (16, 16), 8, training=False, name="val", **common)
    opened = {"train": 0, "val": 0}
    names = {id(train): "train", id(val): "val"}
    kind = type(train)
    original = kind.__iter__

    def counted(self: object) -> object:
        if id(self) in names:
            opened[names[id(self)]] += 1
        return original(self)

    kind.__iter__ = counted  # EpochIterator's iter() looks __iter__ up on the type
    with strategy.scope():
        model = TransferHyperModel(spec).build(kt.HyperParameters())
    history = model.fit(train, validation_data=val, epochs=2, verbose=0, callbacks=[AverageBatchNormStatistics()],
                        steps_per_epoch=steps_per_epoch(len(splits.train), 8))
    weights = model.get_weights()
    np.savez(out / f"repeated_{cluster.rank}.npz", *[np.asarray(w) for w in weights])
    fresh = TransferHyperModel(spec).build(kt.HyperParameters())
    fresh.set_weights(weights)
    pixels, labels = pipeline.load_arrays(splits.val, (16, 16))
    real = float(np.mean(np.argmax(fresh.predict(pixels, verbose=0), axis=-1) == labels))
    root = out / f"images{cluster.rank}"
    (out / f"repeated_{cluster.rank}.json").write_text(json.dumps(
        {"val_accuracy": [float(v) for v in history.history["val_accuracy"]], "real_accuracy": real,
         "reads": [str(Path(p).relative_to(root)) for p in reads], "opened": opened,
         "val": [str(f.path.relative_to(root)) for f in splits.val],
         "end_of_data_check": [bool(getattr(d, "_enable_get_next_as_optional", True)) for d in (train, val)],
         "synchronized": [layer.synchronized for layer in model._flatten_layers()
                          if isinstance(layer, keras.layers.BatchNormalization)]}
    ))


def _xla(strategy: tf.distribute.Strategy, cluster: cluster_module.Cluster, out: Path) -> None:
    from trainer.hypermodel import ModelSpec, TransferHyperModel

    spec = ModelSpec(num_classes=CLASSES, image_size=16, heads=("gap_dense",), jit_compile=True,
                     augmentation=(("rotation", 0.05), ("zoom", 0.1)))
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (32, 16, 16, 3)).astype("uint8")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = tf.data.Dataset.from_tensor_slices((pixels, rng.integers(0, CLASSES, 32))).batch(GLOBAL_BATCH)
    with strategy.scope():
        model = TransferHyperModel(spec).build(kt.HyperParameters())
    try:
        model.fit(train.with_options(options), epochs=1, verbose=0)
    except Exception as exc:  # the TensorFlow fact that `accelerator.xla_blockers` relies on
        result = {"failed": True, "error": f"{type(exc).__name__}: {exc}"[:4000]}
    else:
        result = {"failed": False, "error": ""}
    (out / f"xla_{cluster.rank}.json").write_text(json.dumps({**result, "jit_compile": model.jit_compile}))


def _disagree(strategy: tf.distribute.Strategy, cluster: cluster_module.Cluster, out: Path) -> None:
    distribute.assert_workers_agree(strategy, "same on every worker", "a shared value")
    try:
        distribute.assert_workers_agree(strategy, f"worker {cluster.rank}", "a per-worker value")
    except DivergenceError as exc:
        result = {"raised": True, "message": str(exc)}
    else:
        result = {"raised": False, "message": ""}
    try:  # named values in one all-gather: the error names only the one that differs
        distribute.assert_workers_agree(
            strategy, {"data_fingerprint": "same", "steps_per_epoch": 5 + cluster.rank}, "trial 0")
    except DivergenceError as exc:
        result["named"] = str(exc)
    (out / f"disagree_{cluster.rank}.json").write_text(json.dumps(result))


def _reduce(strategy: tf.distribute.Strategy, cluster: cluster_module.Cluster, out: Path) -> None:
    """A step's logs reduced by the shim's one-collective path and one by one: values and collectives counted."""
    rank = float(cluster.rank)

    def logs() -> dict[str, tf.Tensor]:
        return {"loss": tf.constant(1.0) + rank, "accuracy": tf.constant(0.25) * (rank + 1),
                "confusion": tf.reshape(tf.range(4, dtype=tf.float32), (2, 2)) * (rank + 1),
                "seen": tf.constant(3, tf.int32) * (cluster.rank + 1)}

    together = tf.function(lambda: keras_shim.reduce_mean_together(strategy.run(logs), strategy))
    one_by_one = tf.function(lambda: tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None),
                                                           strategy.run(logs)))

    def collectives(function: Any) -> int:
        graph = function.get_concrete_function().graph.as_graph_def()
        nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
        return sum(n.op.startswith("CollectiveReduce") for n in nodes)

    results = {name: {k: np.asarray(v).tolist() for k, v in function().items()}
               for name, function in (("together", together), ("one_by_one", one_by_one))}
    results["collectives"] = {"together": collectives(together), "one_by_one": collectives(one_by_one)}
    (out / f"reduce_{cluster.rank}.json").write_text(json.dumps(results))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    mode, out = argv[0], Path(argv[1])
    if mode == "noshim":
        keras_shim._SHIM_VERSIONS = ((0, 0), (0, 0))  # as if the installed Keras were not known to be broken
    cluster = cluster_module.resolve(os.environ)
    os.environ.pop("TF_CONFIG", None)
    accelerator = distribute.choose_accelerator(tf.config.list_physical_devices(), mixed_precision="auto")
    distribute.apply(accelerator)
    strategy = distribute.make_strategy(cluster, accelerator=accelerator)
    modes = {"fit": _fit, "noshim": _noshim, "fault": _fault, "tuner": _tuner, "disagree": _disagree, "stuck": _stuck,
             "padded": _padded, "repeated": _repeated, "reduce": _reduce, "xla": _xla}
    modes[mode](strategy, cluster, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
