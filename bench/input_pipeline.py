"""Benchmarks the trainer's input pipelines: images/s per core, and training fed by the folder vs memory.

    .venv/bin/python bench/input_pipeline.py                       # per core: folder, prepared, memory
    .venv/bin/python bench/input_pipeline.py --sizes 32,224 --threads 1 --rounds 5
    .venv/bin/python bench/input_pipeline.py --train               # the older training comparison
    .venv/bin/python bench/input_pipeline.py --train --image-size 64 --epochs 6 --backbone mobilenet_v2

Default (per core, issue 25): one pass of each training pipeline, no model, no cache, shuffled and
batched as the search reads it, at each size of ``--sizes``:

1. ``folder``: `trainer.pipeline.make_dataset(cache="none")`: read, decode and resize every file, every epoch.
2. ``prepared``: `trainer.prepared.make_dataset` over the pre-resized TFRecords (`trainer.prepared`).
3. ``memory``: the same decoded pixels held in memory, ``from_tensor_slices -> shuffle -> batch``.

At 32 px the data are the embedded digits (32x32 PNGs); at larger sizes generated photo-like
480x360 JPEGs (smooth gradients, shapes and noise, quality 90) resized to the size. tf.data runs on a
private thread pool of ``--threads`` threads with intra-op parallelism 1, TensorFlow's own pools at 1.
The figure per core is images per CPU-second of the whole process (``resource.getrusage``: every
thread counted): on a shared machine other processes take cores away and move the wall figures
(shown with the cores the pass kept busy, CPU seconds / wall seconds), not the CPU seconds an image
costs, which is what sizes CPUs per GPU. Passes are
interleaved (folder, prepared, memory, folder, ...) so machine noise hits them alike; medians.

``--train`` runs the earlier comparison: one model trained on the folder pipeline (cached), on the same
pixels in memory and on numpy arrays, epochs interleaved (folder / memory target >= 0.95).
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
    parser.add_argument("--train", action="store_true", help="the training comparison instead of the per-core table")
    parser.add_argument("--sizes", default="32,224", help="per core: image sizes, comma-separated (default 32,224)")
    parser.add_argument("--threads", type=int, default=1, help="per core: tf.data threads (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="per core: passes per feed and size (default 5)")
    parser.add_argument("--jpegs", type=int, default=600, help="per core: generated JPEGs above 32 px (default 600)")
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
    if not args.train:
        return _per_core(args)
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


def _write_jpegs(root: Path, count: int, seed: int) -> Path:
    """`count` photo-like 480x360 JPEGs in 4 classes: gradients, a bright disc and noise, quality 90."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:360, 0:480]
    for i in range(count):
        folder = root / f"class_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        base = (xx * rng.uniform(0.1, 0.5) + yy * rng.uniform(0.1, 0.5))[..., None] * rng.uniform(0.3, 1.0, 3)
        cy, cx, r = rng.uniform(60, 300), rng.uniform(60, 420), rng.uniform(20, 80)
        base = base + 120 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None]
        pixels = np.clip(base + rng.normal(0, 12, (360, 480, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def _per_core(args: argparse.Namespace) -> int:
    import resource

    import numpy as np
    import tensorflow as tf

    from trainer import prepared

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    options = tf.data.Options()
    options.threading.private_threadpool_size = args.threads
    options.threading.max_intra_op_parallelism = 1
    options.autotune.cpu_budget = args.threads

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def one_pass(dataset: tf.data.Dataset) -> tuple[float, float, int]:
        images = 0
        wall, spent = time.perf_counter(), cpu()
        for batch in dataset:
            images += int(batch[0].shape[0])
        return time.perf_counter() - wall, cpu() - spent, images

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs visible, tf.data threads {args.threads} "
          f"(private pool, intra-op 1, TF inter/intra-op 1), batch {args.batch_size}, {args.rounds} passes per feed, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'size':>5} {'feed':<9} {'images':>6} {'img/s (wall)':>13} {'cores busy':>11} {'img per CPU-s':>14} "
          f"{'vs folder':>10}")
    with tempfile.TemporaryDirectory(prefix="tfstack-bench-") as scratch:
        for size in (int(v) for v in args.sizes.split(",")):
            if size <= 32:
                root = scan.ensure_digits(Path(scratch) / "digits")
            else:
                root = _write_jpegs(Path(scratch) / f"jpegs-{size}", args.jpegs, args.seed)
            splits = scan.scan(root, seed=args.seed)
            started = time.perf_counter()
            records = prepared.ensure_prepared(splits, (size, size), Path(scratch) / "prepared", seed=args.seed)
            prepare_s = time.perf_counter() - started
            x, y = pipeline.load_arrays(splits.train, (size, size))
            feeds = {
                "folder": pipeline.make_dataset(splits.train, (size, size), args.batch_size, training=True,
                                            seed=args.seed, cache="none"),
                "prepared": prepared.make_dataset(records, "train", args.batch_size, training=True, seed=args.seed,
                                                  cache="none"),
                "memory": tf.data.Dataset.from_tensor_slices((x.astype(np.uint8), y)).shuffle(len(y), seed=args.seed)
                .batch(args.batch_size).prefetch(tf.data.AUTOTUNE),
            }
            feeds = {name: dataset.with_options(options) for name, dataset in feeds.items()}
            for dataset in feeds.values():
                one_pass(dataset)  # warm-up: tracing, page cache
            results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in feeds}
            for _ in range(args.rounds):
                for name, dataset in feeds.items():
                    results[name].append(one_pass(dataset))
            folder_rate = statistics.median(n / c for _, c, n in results["folder"])
            for name, runs in results.items():
                rate = statistics.median(n / w for w, _, n in runs)
                busy = statistics.median(c / w for w, c, _ in runs)
                per_cpu = statistics.median(n / c for _, c, n in runs)
                print(f"{size:>5} {name:<9} {runs[0][2]:>6} {rate:>13.0f} {busy:>11.2f} {per_cpu:>14.0f} "
                      f"{per_cpu / folder_rate:>9.1f}x")
            print(f"{size:>5} prepare once: {len(splits.train) + len(splits.val) + len(splits.test)} images in "
                  f"{prepare_s:.1f} s (all threads), {records.record_bytes / 1024:.1f} KiB per record")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
