"""Benchmarks XLA on vs off for the search's train step with the default augmentation, and what the
augmentation costs per image on a CPU.

    .venv/bin/python bench/xla.py                                  # small_cnn and mobilenet_v2 at 32 px
    .venv/bin/python bench/xla.py --steps 40 --rounds 2

Part 1, the train step: for each backbone (weights=None, ``gap_dense`` head, the default augmentation
``--rotation 0.05 --zoom 0.1`` as `trainer.hypermodel` builds it) a trial model is compiled with
``jit_compile=False`` and ``True`` and trained on in-memory uint8 batches (a repeated tf.data set, one
step per execution). The first epoch (tracing, XLA compilation) is timed on its own as the start-up
cost; the median step time of the second is the step cost. Rounds alternate the order (off, on then
on, off) so load from other programs hits both alike.

Part 2, augmentation per image: rotation then zoom on a batch, with Keras's layers
(``ImageProjectiveTransformV3``, the CPU kernel a tf.data variant would run on the worker's CPUs) and
with `trainer.affine`'s layers eagerly and XLA-compiled on the CPU: microseconds of one core per image.

TensorFlow runs with ``--threads`` threads per pool (default 1: figures per core, and less noise from
other programs on a shared machine). Prints the machine, versions and load averages before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


class _StepTimes:
    def __init__(self) -> None:
        self.ends: list[float] = []

    def callback(self) -> object:
        import keras

        times = self

        class Record(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                times.ends.append(time.perf_counter())

            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                times.ends.append(time.perf_counter())

        return Record()


def train_step(
    backbone: str, size: int, batch: int, steps: int, xla: bool, augment: bool = True
) -> tuple[float, float]:
    """(first epoch s, median ms/step of the second) for one trial model."""
    import keras
    import keras_tuner as kt
    import numpy as np
    import tensorflow as tf

    from trainer.hypermodel import ModelSpec, TransferHyperModel

    keras.backend.clear_session()
    spec = ModelSpec(num_classes=10, image_size=size, backbones=(backbone,), weights="none", heads=("gap_dense",),
                     augmentation=(("rotation", 0.05), ("zoom", 0.1)) if augment else (), jit_compile=xla)
    model = TransferHyperModel(spec).build(kt.HyperParameters())
    assert model.jit_compile is xla
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch * 4, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, batch * 4)
    data = tf.data.Dataset.from_tensor_slices((pixels, labels)).batch(batch).repeat().prefetch(2)
    times = _StepTimes()
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)  # trace (and compile) + 2 steps
    first = time.perf_counter() - start
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[times.callback()])
    # The epoch's first step waits for input: left out.
    gaps = [b - a for a, b in zip(times.ends, times.ends[1:], strict=False)][1:]
    return first, 1000 * statistics.median(gaps)


def augmentation_cost(size: int, batch: int, repeats: int) -> dict[str, float]:
    """Microseconds per image of rotation + zoom on this CPU, by implementation."""
    import keras
    import numpy as np
    import tensorflow as tf

    from trainer import affine

    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    variants = {
        "keras layers (ImageProjectiveTransformV3)": (keras.layers.RandomRotation(0.05, seed=1),
                                                      keras.layers.RandomZoom(0.1, seed=1), False),
        "trainer.affine, no XLA": (affine.RandomRotation(0.05, seed=1), affine.RandomZoom(0.1, seed=1), False),
        "trainer.affine, XLA": (affine.RandomRotation(0.05, seed=1), affine.RandomZoom(0.1, seed=1), True),
    }
    result = {}
    for name, (rotation, zoom, xla) in variants.items():
        fn = tf.function(lambda x, r=rotation, z=zoom: z(r(x, training=True), training=True), jit_compile=xla)
        fn(images).numpy()  # trace / compile
        start = time.perf_counter()
        for _ in range(repeats):
            fn(images).numpy()
        result[name] = 1e6 * (time.perf_counter() - start) / (repeats * batch)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="small_cnn,mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--aug-sizes", default="32,224")
    parser.add_argument("--no-augmentation", action="store_true", help="Train steps without the augmentation layers.")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; TF {tf.__version__}, "
          f"Keras {keras.__version__}; {args.threads or 'default'} thread(s) per pool; load before {_load()}")
    augmentation = "none" if args.no_augmentation else "rotation 0.05 + zoom 0.1"
    print(f"train step: batch {args.batch}, {args.image_size} px, augmentation {augmentation}, "
          f"{args.steps} measured steps, {args.rounds} round(s)")
    print(f"{'backbone':<14} {'XLA':<4} {'first epoch s':>14} {'ms/step':>9}")
    for backbone in args.backbones.split(","):
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for round_ in range(args.rounds):
            for xla in ((False, True) if round_ % 2 == 0 else (True, False)):
                runs[xla].append(train_step(backbone, args.image_size, args.batch, args.steps, xla,
                                            augment=not args.no_augmentation))
        for xla in (False, True):
            first = statistics.median(r[0] for r in runs[xla])
            step = statistics.median(r[1] for r in runs[xla])
            print(f"{backbone:<14} {'on' if xla else 'off':<4} {first:>14.1f} {step:>9.1f}", flush=True)
        off, on = (statistics.median(r[1] for r in runs[x]) for x in (False, True))
        print(f"{backbone:<14} step ratio on/off: {on / off:.2f}")
    for size in (int(s) for s in args.aug_sizes.split(",") if s):
        batch = 32 if size <= 64 else 8
        for name, micros in augmentation_cost(size, batch, repeats=20 if size <= 64 else 5).items():
            print(f"augmentation {size:>3} px, {name:<42} {micros:>9.1f} us/image")
    print(f"load after {_load()}")


if __name__ == "__main__":
    main()
