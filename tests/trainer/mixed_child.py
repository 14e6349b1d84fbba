"""One worker of the mixed_float16 overflow test: ``python -m tests.trainer.mixed_child OPTIMIZER OUTDIR``.

Two MWMS workers on CPU train a tiny Dense model under ``mixed_float16`` for 8 steps. Worker 1's
4th batch is scaled by 1e6, beyond float16's range (65504), so only *its* gradients overflow at that
step. OPTIMIZER is ``agreed`` (`trainer.loss_scale.for_policy`) or ``upstream`` (Keras's own
``LossScaleOptimizer``). A 20 s `StallWatchdog` turns a hang into exit code 4. Each worker writes
``OUTDIR/<optimizer>_<rank>.json``: the loss scale and the applied-step count after every step, and
a digest of the final weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from trainer import cluster as cluster_module
from trainer import distribute
from trainer.loss_scale import for_policy
from trainer.watchdog import StallWatchdog

STEPS, PER_REPLICA, FEATURES, OVERFLOW_STEP = 8, 4, 6, 3


def _dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
    rng = np.random.default_rng(context.input_pipeline_id)
    x = rng.normal(size=(STEPS * PER_REPLICA, FEATURES)).astype("float32")
    if context.input_pipeline_id == 1:
        x[OVERFLOW_STEP * PER_REPLICA:(OVERFLOW_STEP + 1) * PER_REPLICA] *= 1e6  # inf once cast to float16
    y = (x[:, 0] > 0).astype("int64")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(PER_REPLICA)


class _Record(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.scales: list[float] = []
        self.applied: list[int] = []

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        optimizer = self.model.optimizer
        self.scales.append(float(optimizer.dynamic_scale.numpy()))
        self.applied.append(int(optimizer.iterations.numpy()))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    which, out = argv[0], Path(argv[1])
    cluster = cluster_module.resolve(os.environ)
    os.environ.pop("TF_CONFIG", None)
    accelerator = distribute.choose_accelerator(["CPU"], mixed_precision="mixed_float16")
    strategy = distribute.make_strategy(cluster, accelerator=accelerator)
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, activation="relu", dtype="mixed_float16"),
            keras.layers.Dense(2, activation="softmax", dtype="float32"),
        ])
        sgd = keras.optimizers.SGD(0.01)
        optimizer = for_policy(sgd, "mixed_float16") if which == "agreed" else keras.optimizers.LossScaleOptimizer(sgd)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", jit_compile=False)
    record = _Record()
    watchdog = StallWatchdog(20.0)
    with watchdog.armed("fit"):
        model.fit(strategy.distribute_datasets_from_function(_dataset), epochs=1, verbose=0,
                  callbacks=[watchdog.callback(), record])
    watchdog.close()
    digest = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.get_weights())).hexdigest()
    (out / f"{which}_{cluster.rank}.json").write_text(json.dumps(
        {"optimizer": type(model.optimizer).__name__, "scales": record.scales, "applied": record.applied,
         "weights": digest}
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
