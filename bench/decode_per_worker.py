"""Benchmark (b): CPU time each worker spends decoding its images, with 2 workers vs 1.

    .venv/bin/python bench/decode_per_worker.py                    # 800 synthetic 320x240 JPEGs -> 224 px
    .venv/bin/python bench/decode_per_worker.py --data path/to/folder --image-size 224 --repeats 5

One pass of the search's real input pipeline (`trainer.pipeline.distributed_dataset`: read, decode,
resize, cast to uint8, fill the memory cache, shuffle, batch; no model) over the training split,
run as the only worker, then as worker 0 and as worker 1 of 2. Each run is a fresh process (the
same script with ``--child``) so that no cache, thread pool or traced function carries over; the
three runs are interleaved and repeated (medians reported), so machine noise hits them alike.

A child does not form a MultiWorkerMirroredStrategy cluster: the pipeline function gets the same
``tf.distribute.InputContext`` (``num_input_pipelines``, ``input_pipeline_id``, replicas) that
``distribute_datasets_from_function`` gives it under MWMS, and nothing else of the strategy touches
the input pipeline; a real cluster would add gRPC and collective threads to the CPU time measured.
CPU time is the child's own user + system time (``resource.getrusage(RUSAGE_SELF)``) over the pass
alone, after TensorFlow is imported and the pipeline built; it counts every tf.data thread.

Prints the files each run decoded, its CPU seconds and the ratio worker / single (goal about 0.5:
before files were sharded, every worker decoded every file, a ratio of about 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from trainer import pipeline, scan  # noqa: E402  (after the sys.path line, like the other benches)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="image folder (default: synthetic JPEGs written to a temporary folder)")
    parser.add_argument("--images", type=int, default=800, help="synthetic images to write (default 800)")
    parser.add_argument("--image-size", type=int, default=224, help="square size the pipeline resizes to")
    parser.add_argument("--batch-size", type=int, default=32, help="per-replica batch (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--child", nargs=2, type=int, metavar=("WORKERS", "INDEX"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _write_jpegs(root: Path, count: int, seed: int) -> Path:
    """`count` 320x240 JPEGs in 4 classes: smooth gradients plus noise, about the size of a photo thumbnail."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:320]
    for i in range(count):
        folder = root / f"class_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        base = (xx * rng.uniform(0.2, 0.8) + yy * rng.uniform(0.2, 0.8))[..., None] * rng.uniform(0.3, 1.0, 3)
        pixels = np.clip(base + rng.normal(0, 20, (240, 320, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


class _InputContexts:
    """The one thing a strategy does for the pipeline: call its function with this worker's input context."""

    def __init__(self, workers: int, index: int) -> None:
        self.workers, self.index = workers, index

    def distribute_datasets_from_function(self, fn: Any) -> Any:
        import tensorflow as tf

        return fn(tf.distribute.InputContext(self.workers, self.index, self.workers))  # 1 replica per worker


def _child(args: argparse.Namespace) -> int:
    workers, index = args.child
    splits = scan.scan(args.data, seed=args.seed)
    size = (args.image_size, args.image_size)
    global_batch = pipeline.global_batch_size(args.batch_size, workers)
    dataset = pipeline.distributed_dataset(_InputContexts(workers, index), splits.train, size, global_batch,
                                       training=True, seed=args.seed, cache="memory",
                                       pad_to_full_batches=workers > 1, name="train")
    shard = pipeline.shard_files(splits.train, global_batch, num_shards=workers, index=index, training=True,
                             seed=args.seed, pad_to_full_batches=workers > 1)
    before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    batches = sum(1 for _ in dataset)  # one full pass: decode + resize + cache fill
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"workers": workers, "index": index, "files": len(shard.files), "total": len(splits.train),
                      "batches": batches, "cpu_s": cpu, "wall_s": wall}))
    return 0


def _run_child(args: argparse.Namespace, root: Path, workers: int, index: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(workers), str(index), "--data", str(root),
               "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"child {workers}/{index} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        return _child(args)
    with tempfile.TemporaryDirectory(prefix="tfstack-bench-decode-") as scratch:
        root = args.data or _write_jpegs(Path(scratch) / "jpegs", args.images, args.seed)
        runs: dict[str, list[dict[str, Any]]] = {"1 worker": [], "worker 0 of 2": [], "worker 1 of 2": []}
        for _ in range(args.repeats):
            for name, (workers, index) in zip(runs, [(1, 0), (2, 0), (2, 1)], strict=True):
                runs[name].append(_run_child(args, root, workers, index))
    single = statistics.median(r["cpu_s"] for r in runs["1 worker"])
    first = runs["1 worker"][0]
    print(f"data: {root if args.data else f'{args.images} synthetic 320x240 JPEGs'} ({first['total']} training "
          f"images), resized to {args.image_size} px, per-replica batch {args.batch_size}, memory cache, "
          f"{args.repeats} interleaved repeats, {os.cpu_count()} CPUs visible, load {os.getloadavg()[0]:.2f}")
    print(f"{'run':<15} {'files decoded':>13} {'CPU s (median)':>15} {'min':>7} {'max':>7} {'wall s':>7} "
          f"{'CPU / 1 worker':>15}")
    for name, results in runs.items():
        cpu = [r["cpu_s"] for r in results]
        median = statistics.median(cpu)
        print(f"{name:<15} {results[0]['files']:>13} {median:>15.2f} {min(cpu):>7.2f} {max(cpu):>7.2f} "
              f"{statistics.median(r['wall_s'] for r in results):>7.2f} {median / single:>15.3f}")
    worst = max(statistics.median(r["cpu_s"] for r in runs[name]) for name in ("worker 0 of 2", "worker 1 of 2"))
    print(f"decode CPU per worker, 2 workers vs 1: {worst / single:.3f} (the busier worker; goal about 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
