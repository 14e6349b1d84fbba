"""One worker of the `bench/scaling.py` benchmark: trains the search's model and times its epochs.

Started by `trainer.launch.launch` as ``python -m bench.scaling_worker --data DIR --out DIR ...``
with its own ``TF_CONFIG``; with one worker the strategy is TensorFlow's default (no MWMS), with
more it is ``MultiWorkerMirroredStrategy`` from `trainer.distribute.make_strategy` (which installs
the Keras MWMS shim). The model is the search's: `trainer.search_space.model_spec` for the embedded
digits with the ``small_cnn`` backbone and the ``flatten_dense_dropout`` head, built and compiled by
`trainer.hypermodel.TransferHyperModel` with fixed hyperparameters, under the search's step rules
(`trainer.search_space.model_spec`: steps per execution from the training and validation steps, synchronized
BatchNormalization only below 16 images per replica, `trainer.steps`). The training set is the
search's, `trainer.pipeline.distributed_dataset` (each worker decodes its own shard of the files, repeated,
with ``steps_per_epoch``) with ``pad_to_full_batches=True`` at every worker count, so each epoch runs
whole global batches and the same number of images whatever the count. The search's per-batch
callbacks run too (`trainer.progress.ProgressCallback`, the stall watchdog's beat). ``--global-batch G``
keeps the global batch at G at every worker count (G / workers per replica) instead of the per-replica
batch.

Every worker trains; the chief (rank 0) writes ``<out>/result.json``: the seconds of each epoch
(the first is the warm-up: tracing and the decode that fills the cache) and the global images/s
over the epochs after it: the median epoch's (robust to bursts of load from other programs) and
the mean (all measured images over all measured seconds). MWMS steps are synchronous, so the
chief's epoch time is the job's.

``--pin``: before TensorFlow starts, worker *i* pins every thread of its process to the *i*-th CPU
it may run on (``os.sched_setaffinity``), and TensorFlow's intra-op and inter-op pools get one
thread each. One core per worker, so N workers use N cores: the only set-up on a shared machine in
which adding a worker adds compute. One thread per pool because the worker owns exactly one core:
more threads on it can only take turns (Eigen's spinning intra-op threads then steal the core from
the thread with work, and from the gRPC and collective threads that move the all-reduce), and a
pinned process must not depend on TensorFlow guessing its pool sizes from the affinity mask.

``--repeat R`` makes each epoch R passes over the training split (more steps per epoch at large
batches). With several workers, after training, the chief also times the all-reduce the optimizer
runs every step: `ReplicaContext.all_reduce` ("SUM") of one tensor per trainable variable, as
Keras 3's TensorFlow optimizer does (``_all_reduce_sum_gradients``), inside a ``tf.function``
(``--allreduce-steps`` calls after 3 warm-up calls; every worker runs them, it is a collective),
and the same for one scalar: the latency of a collective, which a step pays for each of the
reductions of its loss and metrics too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from trainer.cluster import Cluster, resolve  # pure Python: no TensorFlow before the pinning

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
    parser.add_argument("--global-batch", type=int, default=0,
                        help="global batch at every worker count (per replica = global / workers); 0 = off")
    parser.add_argument("--image-size", type=int, required=True, help="square input size")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pin", action="store_true",
                        help="pin worker i to the i-th allowed CPU, one TensorFlow thread per pool")
    parser.add_argument("--tf-threads", type=str, default="1,1",
                        help="with --pin: TensorFlow's intra-op,inter-op pool sizes (0 = TensorFlow's choice)")
    parser.add_argument("--threads", type=str, default="",
                        help="INTRA,INTER: TensorFlow's pool sizes without pinning (a fixed count per worker)")
    parser.add_argument("--step-times", action="store_true",
                        help="also time every training step (adds a host sync per step: Keras converts the logs)")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the training split per epoch")
    parser.add_argument("--legacy", action="store_true",
                        help="the step before issue 25: finite data set (an iterator per epoch, an end-of-data "
                             "all-reduce per step), synchronized BatchNormalization, 1 step per execution, "
                             "callbacks that make Keras wait for every step")
    parser.add_argument("--allreduce-steps", type=int, default=30,
                        help="timed gradient all-reduces after training (several workers only)")
    return parser.parse_args(argv)


def pin_to_core(cluster: Cluster) -> int:
    """Pin every thread of this process to the CPU of index `cluster.rank` among those allowed; return it.

    ``sched_setaffinity(0, ...)`` moves only the calling thread (threads created later inherit its
    mask), so each thread already running (numpy's BLAS pool, ...) is moved by its id too.
    """
    allowed = sorted(os.sched_getaffinity(0))
    if cluster.rank >= len(allowed):
        raise SystemExit(f"error: Expected a CPU per pinned worker. Received: rank {cluster.rank}, "
                         f"allowed CPUs {allowed}")
    core = allowed[cluster.rank]
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task), {core})
    return core


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cluster = resolve(os.environ)
    core = pin_to_core(cluster) if args.pin else None

    from trainer import distribute, pipeline, scan  # imports TensorFlow: after the pinning
    from trainer.accelerator import xla_on
    from trainer.config import SearchConfig

    per_replica = args.global_batch // cluster.num_workers if args.global_batch else args.batch_size
    config = SearchConfig(
        backbone=(HYPERPARAMETERS["backbone"],), heads=(HYPERPARAMETERS["head"],), weights="none",
        image_size=args.image_size, batch_size=per_replica, epochs=args.epochs + 1, seed=args.seed,
    )
    splits = scan.scan(args.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                       seed=config.seed)

    import keras
    import keras_tuner as kt
    import tensorflow as tf

    from trainer.hypermodel import TransferHyperModel
    from trainer.progress import ProgressCallback, SearchMetrics
    from trainer.search_space import model_spec
    from trainer.steps import steps_per_epoch
    from trainer.watchdog import StallWatchdog

    threads = args.tf_threads if args.pin else args.threads
    if threads:
        intra, inter = (int(n) for n in threads.split(","))
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    accelerator = distribute.choose_accelerator(tf.config.list_physical_devices(),
                                                mixed_precision=config.mixed_precision, xla=config.xla)
    distribute.apply(accelerator)
    strategy = distribute.make_strategy(cluster, accelerator=accelerator)
    replicas = strategy.num_replicas_in_sync
    global_batch = pipeline.global_batch_size(config.batch_size, replicas)
    one_pass = steps_per_epoch(len(splits.train), global_batch)
    steps = one_pass * args.repeat
    images_per_epoch = steps * global_batch  # padded to whole global batches (padding has weight 0)
    spec = model_spec(config, splits.num_classes, replicas,
                      steps=(steps, steps_per_epoch(len(splits.val), global_batch)), workers=cluster.num_workers,
                      xla=xla_on(accelerator, cluster.num_workers))
    size = (spec.image_size, spec.image_size)
    # The search's pipeline: one per worker over its shard, repeated; fit runs `steps` per epoch.
    train_ds = pipeline.distributed_dataset(strategy, splits.train, size, global_batch, training=True, seed=config.seed,
                                        pad_to_full_batches=True, name="train",
                                        repeat=not args.legacy or args.repeat > 1)
    if args.legacy:
        spec = dataclasses.replace(spec, sync_batchnorm=True, steps_per_execution=1)

    hp = kt.HyperParameters()
    hp.values.update(HYPERPARAMETERS)  # registered values win over the defaults when build() declares them
    with strategy.scope():
        model = TransferHyperModel(spec).build(hp)

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self._started = self._cpu_started = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._started, self._cpu_started = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.seconds.append(time.perf_counter() - self._started)
            self.cpu_seconds.append(time.process_time() - self._cpu_started)  # all threads of this process

    class StepTimer(keras.callbacks.Callback):
        """Every step's seconds, and per epoch the time before its first step and after its last."""

        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.heads: list[float] = []  # epoch begin -> first step begins (iterator creation, ...)
            self.tails: list[float] = []  # last step ends -> epoch end (metric results, ...)
            self._started = self._epoch_started = self._last_end = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._epoch_started = time.perf_counter()
            self.heads.append(float("nan"))

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self._started = time.perf_counter()
            if batch == 0:
                self.heads[-1] = self._started - self._epoch_started

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self._last_end = time.perf_counter()
            self.seconds.append(self._last_end - self._started)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.tails.append(time.perf_counter() - self._last_end)

    timer = EpochTimer()
    step_timer = StepTimer()
    search_callbacks = [ProgressCallback(SearchMetrics(), global_batch), StallWatchdog(0).callback()]
    for callback in search_callbacks:
        callback.async_safe = not args.legacy
    history = model.fit(train_ds, epochs=config.epochs, verbose=0,
                        callbacks=[*search_callbacks, timer, *([step_timer] if args.step_times else [])],
                        steps_per_epoch=None if args.legacy and args.repeat == 1 else steps)
    threads = busiest_threads()  # before the all-reduce timing: training and start-up only
    allreduce = scalar = []
    if cluster.num_workers > 1:
        allreduce = time_allreduce(strategy, [v.shape for v in model.trainable_variables], args.allreduce_steps)
        scalar = time_allreduce(strategy, [()], args.allreduce_steps)
    if not cluster.is_chief:
        return 0
    measured = timer.seconds[1:]
    median_epoch = statistics.median(measured)
    result = {
        "workers": cluster.num_workers,
        "replicas": replicas,
        "strategy": f"MWMS ({accelerator.communication})" if cluster.num_workers > 1 else "default (1 process)",
        "per_replica_batch": config.batch_size,
        "steps_per_execution": spec.steps_per_execution,
        "legacy": args.legacy,
        "sync_batchnorm": spec.sync_batchnorm,
        "global_batch": global_batch,
        "image_size": spec.image_size,
        "train_images": len(splits.train),
        "steps_per_epoch": steps,
        "images_per_epoch": images_per_epoch,
        "epoch_seconds": timer.seconds,
        "warmup_seconds": timer.seconds[0],
        "images_per_s": statistics.median(images_per_epoch / seconds for seconds in measured),
        "images_per_s_mean": images_per_epoch * len(measured) / sum(measured),
        "step_seconds": median_epoch / steps,
        "busiest_threads": threads,
        "step_times": step_timer.seconds[steps:],  # after the warm-up epoch
        "epoch_heads": step_timer.heads[1:],
        "epoch_tails": step_timer.tails[1:],
        "cpu_share": sum(timer.cpu_seconds[1:]) / sum(measured),  # the chief's CPU seconds per wall second
        "allreduce_seconds": statistics.median(allreduce) if allreduce else 0.0,
        "scalar_allreduce_seconds": statistics.median(scalar) if scalar else 0.0,
        "allreduce_bytes": int(sum(int(v.numpy().nbytes) for v in model.trainable_variables)),
        "pinned_cores": sorted(os.sched_getaffinity(0)),
        "pinned_core": core,
        "tf_threads": [tf.config.threading.get_intra_op_parallelism_threads(),
                       tf.config.threading.get_inter_op_parallelism_threads()],
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


def busiest_threads(count: int = 6) -> list[tuple[str, float]]:
    """This process's `count` busiest threads since they started: (name, CPU seconds), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    threads: dict[str, float] = {}
    for task in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{task}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        threads[name] = threads.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return sorted(threads.items(), key=lambda item: -item[1])[:count]


def time_allreduce(strategy: Any, shapes: list[Any], calls: int) -> list[float]:
    """Seconds of each of `calls` all-reduces of tensors of `shapes`, after 3 warm-up calls (a collective)."""
    import tensorflow as tf

    def replica_fn() -> Any:
        return tf.distribute.get_replica_context().all_reduce("SUM", [tf.ones(shape) for shape in shapes])

    @tf.function
    def step() -> Any:
        return strategy.run(replica_fn)

    seconds = []
    for call in range(3 + calls):
        started = time.perf_counter()
        out = step()
        tf.nest.flatten(strategy.experimental_local_results(out))[0].numpy()  # wait for the result
        if call >= 3:
            seconds.append(time.perf_counter() - started)
    return seconds


if __name__ == "__main__":
    sys.exit(main())
