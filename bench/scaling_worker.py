"""One worker of the `bench/scaling.py` benchmark: trains the search's model and times its epochs.

Started by `trainer.launch.launch` as ``python -m bench.scaling_worker --data DIR --out DIR ...``
with its own ``TF_CONFIG``; with one worker the strategy is TensorFlow's default (no MWMS), with
more it is ``MultiWorkerMirroredStrategy`` from `trainer.distribute.make_strategy` (which installs
the Keras MWMS shim). The model is the search's: `trainer.search.model_spec` for the embedded
digits with the ``small_cnn`` backbone and the ``flatten_dense_dropout`` head, built and compiled by
`trainer.hypermodel.TransferHyperModel` with fixed hyperparameters. The training set is the
search's, `trainer.data.distributed_dataset` (each worker decodes its own shard of the files) with
``pad_to_full_batches=True`` at every worker count, so each epoch runs whole global batches and the
same number of images whatever the count.

Every worker trains; the chief (rank 0) writes ``<out>/result.json``: the seconds of each epoch
(the first is the warm-up: tracing and the decode that fills the cache) and the global images/s
over the epochs after it: the median epoch's (robust to bursts of load from other programs) and
the mean (all measured images over all measured seconds). MWMS steps are synchronous, so the
chief's epoch time is the job's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from trainer import data, distribute
from trainer.cluster import resolve
from trainer.config import SearchConfig

RESULT_FILE = "result.json"
HYPERPARAMETERS = {"backbone": "small_cnn", "head": "flatten_dense_dropout", "units": 128, "dropout": 0.2,
                   "learning_rate": 1e-3}
"""The fixed trial every run trains (one point of the search space)."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the embedded digits folder (ensure_digits)")
    parser.add_argument("--out", type=Path, required=True, help=f"folder the chief writes {RESULT_FILE} into")
    parser.add_argument("--epochs", type=int, required=True, help="measured epochs, after 1 warm-up epoch")
    parser.add_argument("--batch-size", type=int, required=True, help="batch size per replica")
    parser.add_argument("--image-size", type=int, required=True, help="square input size")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cluster = resolve(os.environ)
    config = SearchConfig(
        backbone=(HYPERPARAMETERS["backbone"],), heads=(HYPERPARAMETERS["head"],), weights="none",
        image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs + 1, seed=args.seed,
    )
    splits = data.scan(args.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                       seed=config.seed)

    import keras
    import keras_tuner as kt
    import tensorflow as tf

    from trainer.hypermodel import TransferHyperModel
    from trainer.search import model_spec

    accelerator = distribute.choose_accelerator(tf.config.list_physical_devices(),
                                                mixed_precision=config.mixed_precision, xla=config.xla)
    distribute.apply(accelerator)
    strategy = distribute.make_strategy(cluster, accelerator=accelerator)
    replicas = strategy.num_replicas_in_sync
    global_batch = data.global_batch_size(config.batch_size, replicas)
    spec = model_spec(config, splits.num_classes, replicas)
    size = (spec.image_size, spec.image_size)
    # The search's own input: each worker reads and decodes only its shard of the files.
    train_ds = data.distributed_dataset(strategy, splits.train, size, global_batch, training=True, seed=config.seed,
                                        pad_to_full_batches=True, name="train")
    steps = -(-len(splits.train) // global_batch)
    images_per_epoch = steps * global_batch  # padded to whole global batches (padding has weight 0)

    hp = kt.HyperParameters()
    hp.values.update(HYPERPARAMETERS)  # registered values win over the defaults when build() declares them
    with strategy.scope():
        model = TransferHyperModel(spec).build(hp)

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._started = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.seconds.append(time.perf_counter() - self._started)

    timer = EpochTimer()
    history = model.fit(train_ds, epochs=config.epochs, verbose=0, callbacks=[timer])
    if not cluster.is_chief:
        return 0
    measured = timer.seconds[1:]
    result = {
        "workers": cluster.num_workers,
        "replicas": replicas,
        "strategy": f"MWMS ({accelerator.communication})" if cluster.num_workers > 1 else "default (1 process)",
        "per_replica_batch": config.batch_size,
        "global_batch": global_batch,
        "image_size": spec.image_size,
        "train_images": len(splits.train),
        "steps_per_epoch": steps,
        "images_per_epoch": images_per_epoch,
        "epoch_seconds": timer.seconds,
        "warmup_seconds": timer.seconds[0],
        "images_per_s": statistics.median(images_per_epoch / seconds for seconds in measured),
        "images_per_s_mean": images_per_epoch * len(measured) / sum(measured),
        "final_loss": float(history.history["loss"][-1]),
        "model": model.name,
        "params": int(model.count_params()),
        "hyperparameters": HYPERPARAMETERS,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    staging = args.out / f".{RESULT_FILE}.tmp"
    staging.write_text(json.dumps(result, indent=1) + "\n")
    staging.replace(args.out / RESULT_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
