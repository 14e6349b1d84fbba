"""Benchmarks the trainer's image-folder input pipeline against the same images held in memory.

    .venv/bin/python bench/input_pipeline.py                       # embedded digits, 32x32, small CNN
    .venv/bin/python bench/input_pipeline.py --image-size 64 --epochs 6 --backbone mobilenet_v2
    .venv/bin/python bench/input_pipeline.py --data path/to/folder

One model trains on three feeds, their epochs interleaved (A B C A B C ...) so machine noise
hits them alike, after one warm-up epoch each (tracing; for the folder pipeline also the decode
that fills its cache):

1. ``folder``: `trainer.pipeline.make_dataset` over the image files (decode + resize once, cached,
   shuffled, batched, prefetched), exactly what the search trains on.
2. ``memory``: the same pixels decoded once by `trainer.pipeline.load_arrays`, fed as
   ``from_tensor_slices -> shuffle -> batch -> prefetch``.
3. ``numpy``: ``model.fit`` on the numpy arrays (Keras's own array adapter).

Reports training images/s per feed (median over the measured epochs) and folder / memory, the
share of throughput the input pipeline keeps (target >= 0.95), plus the pipeline alone (no
model), the cold first epoch of the folder feed, and the scan time.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from trainer import pipeline, scan  # noqa: E402  (after the sys.path line, like the other benches)

log = logging.getLogger("bench.input_pipeline")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="image folder (default: the embedded digits)")
    parser.add_argument("--image-size", type=int, default=32, help="square input size (default 32)")
    parser.add_argument("--epochs", type=int, default=8, help="measured epochs per feed, after 1 warm-up (default 8)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size (default 64)")
    parser.add_argument("--backbone", choices=("small_cnn", "mobilenet_v2"), default="small_cnn",
                        help="small_cnn (default) or MobileNetV2(alpha=0.35, weights=None)")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def _model(backbone: str, size: int, classes: int, seed: int) -> keras.Model:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), dtype="float32")
    x = keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)
    if backbone == "mobilenet_v2":
        base = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=0.35, weights=None,
                                              include_top=False)
        x = keras.layers.GlobalAveragePooling2D()(base(x))
    else:
        for filters in (16, 32, 64):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes)(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="tfstack-bench-") as scratch:
        root = args.data or scan.ensure_digits(Path(scratch) / "digits")
        started = time.perf_counter()
        splits = scan.scan(root, seed=args.seed)
        scan_s = time.perf_counter() - started
        return _run(args, splits, scan_s)


def _run(args: argparse.Namespace, splits: scan.DataSplits, scan_s: float) -> int:
    import keras
    import numpy as np
    import tensorflow as tf

    size = (args.image_size, args.image_size)
    files = splits.train
    n = len(files)
    folder = pipeline.make_dataset(files, size, args.batch_size, training=True, seed=args.seed)
    x, y = pipeline.load_arrays(files, size)
    memory = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(n, seed=args.seed)
              .batch(args.batch_size).prefetch(tf.data.AUTOTUNE))

    def pipeline_only(dataset: tf.data.Dataset) -> float:
        started = time.perf_counter()
        for _ in dataset:
            pass
        return n / (time.perf_counter() - started)

    model = _model(args.backbone, args.image_size, splits.num_classes, args.seed)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds = time.perf_counter() - self.started

    timer = Timer()
    feeds = {
        "folder": lambda: model.fit(folder, epochs=1, shuffle=False, verbose=0, callbacks=[timer]),
        "memory": lambda: model.fit(memory, epochs=1, shuffle=False, verbose=0, callbacks=[timer]),
        "numpy": lambda: model.fit(x, y, batch_size=args.batch_size, shuffle=True, epochs=1, verbose=0,
                                   callbacks=[timer]),
    }
    rates: dict[str, list[float]] = {name: [] for name in feeds}
    warmup: dict[str, float] = {}
    for round_ in range(args.epochs + 1):
        for name, fit in feeds.items():
            fit()
            if round_ == 0:
                warmup[name] = n / timer.seconds
            else:
                rates[name].append(n / timer.seconds)
    alone = {"folder": statistics.median(pipeline_only(folder) for _ in range(3)),
             "memory": statistics.median(pipeline_only(memory) for _ in range(3))}
    median = {name: statistics.median(values) for name, values in rates.items()}
    ratio = median["folder"] / median["memory"]

    print(f"data: {splits.root} ({n} training images, {splits.num_classes} classes), image {size[0]}x{size[1]}, "
          f"batch {args.batch_size}, backbone {args.backbone}, {args.epochs} measured epochs per feed after 1 warm-up")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.2f}")
    print(f"scan (Pillow verify + fingerprint, no TensorFlow): {scan_s:.2f} s")
    print(f"{'feed':<8} {'train img/s (median)':>21} {'min':>8} {'max':>8} {'pipeline alone img/s':>21}")
    for name in feeds:
        values = rates[name]
        print(f"{name:<8} {median[name]:>21.0f} {min(values):>8.0f} {max(values):>8.0f} "
              f"{alone.get(name, float('nan')):>21.0f}")
    print(f"cold first epoch of the folder feed (decode + fill cache + trace): {warmup['folder']:.0f} img/s")
    verdict = "meets" if ratio >= 0.95 else "misses"
    print(f"folder / memory = {ratio:.3f} ({verdict} the >= 0.95 target); "
          f"folder / numpy = {median['folder'] / median['numpy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
