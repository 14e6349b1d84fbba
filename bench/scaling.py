"""Benchmarks synchronous data-parallel training with 1 and 2 local workers: images/s and scaling ratio.

    .venv/bin/python bench/scaling.py                       # 1 and 2 workers, 6 measured epochs each
    .venv/bin/python bench/scaling.py --epochs 10 --workers 1,2,3 --image-size 64

For each worker count the local launcher (`trainer.launch.launch`) starts that many processes of
``python -m bench.scaling_worker`` wired by TF_CONFIG on loopback, as ``python -m trainer launch``
does for the search. One worker trains with TensorFlow's default strategy (no MWMS), several with
``MultiWorkerMirroredStrategy`` (RING all-reduce on CPUs). Each run trains the search's model for
the embedded digits (``small_cnn`` backbone, ``flatten_dense_dropout`` head, fixed hyperparameters)
on the digits' training split, per-replica batch 32 by default (global batch = 32 x workers),
padded to whole global batches. The first epoch (tracing, and the decode that fills the cache) is
the warm-up and is not measured; the chief reports the global training images/s of the median
epoch after it (and the mean) in a JSON file, read back here.

Prints one row per worker count (global batch, images/s, per-worker images/s, ratio to 1 worker),
the machine (CPUs, CPU model, RAM), the TensorFlow and Keras versions and the load averages before
and after. The worker counts run one after another, so load from other programs on the machine can
hit them unequally: compare the load averages.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from trainer import data  # noqa: E402  (after the sys.path line, like the other benches)
from trainer.launch import launch  # noqa: E402

WORKER_MODULE = "bench.scaling_worker"
RESULT_FILE = "result.json"  # written by the chief of each run (bench/scaling_worker.py)


def _worker_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        counts = ()
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"Expected comma-separated worker counts >= 1. Received: {text!r}")
    return counts


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="measured epochs per run, after 1 warm-up (default 6)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size per replica (default 32)")
    parser.add_argument("--image-size", type=int, default=32, help="square input size (default 32, the digits')")
    parser.add_argument("--workers", type=_worker_counts, default=(1, 2),
                        help="comma-separated worker counts, run in this order (default 1,2)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.image_size < 8:
        parser.error(f"Expected epochs >= 1, batch size >= 1, image size >= 8. Received: {args.epochs}, "
                     f"{args.batch_size}, {args.image_size}")
    return args


def machine() -> dict[str, Any]:
    """CPUs (visible to this process, and online), CPU model and RAM, from /proc where there is one."""
    fields: dict[str, str] = {}
    ram_gib = float("nan")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if not name.strip() and fields:
                break  # the first processor's block is enough
            fields.setdefault(name.strip(), value.strip())
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = int(line.split()[1]) / 1024**2
                break
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        model += f" (family {fields['cpu family']}, model {fields['model']})"
    if "hypervisor" in fields.get("flags", "").split():
        model += ", virtual machine"
    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"nproc": visible, "cpus_online": os.cpu_count(), "cpu_model": model, "ram_gib": ram_gib}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def run_one(workers: int, args: argparse.Namespace, digits: Path, scratch: Path) -> dict[str, Any]:
    """Train once with `workers` local processes; return the chief's result (raises on failure)."""
    out = scratch / f"workers-{workers}"
    argv = ["--data", str(digits), "--out", str(out), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--seed", str(args.seed)]
    output = io.StringIO()
    started = time.perf_counter()
    status = launch(argv, workers=workers, env=dict(os.environ), module=WORKER_MODULE, cwd=str(ROOT),
                    stdout=output, stderr=output)
    wall = time.perf_counter() - started
    result_path = out / RESULT_FILE
    if status != 0 or not result_path.is_file():
        sys.stderr.write(output.getvalue())
        found = "present" if result_path.is_file() else "missing"
        raise RuntimeError(f"Expected the {workers}-worker run to exit 0 with {result_path}. "
                           f"Received: exit status {status}, result file {found}")
    result: dict[str, Any] = json.loads(result_path.read_text())
    result["wall_seconds"] = wall
    return result


def report(results: list[dict[str, Any]], host: dict[str, Any], loads: tuple[str, str], epochs: int) -> str:
    """The table and the notes, as printed."""
    base = next((r["images_per_s"] for r in results if r["workers"] == 1), None)
    first = results[0]
    lines = [
        f"machine: {host['nproc']} CPUs visible ({host['cpus_online']} online), {host['cpu_model']}, "
        f"{host['ram_gib']:.1f} GiB RAM; {platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"TensorFlow {first['tensorflow']}, Keras {first['keras']}, keras-tuner {_version('keras-tuner')}",
        f"model: {first['model']} ({first['params']:,} parameters), "
        + ", ".join(f"{k}={v}" for k, v in first["hyperparameters"].items() if k not in ("backbone", "head")),
        f"data: embedded digits, {first['train_images']} training images at {first['image_size']}px square, "
        f"padded to whole global batches; {epochs} measured epochs after 1 warm-up epoch per run",
        "",
        f"{'workers':>7}  {'strategy':<21} {'global batch':>12} {'images/epoch':>12} {'images/s':>9} "
        f"{'per worker':>10} {'vs 1 worker':>11} {'epoch min..max img/s':>20} {'warm-up s':>9} {'wall s':>7}",
    ]
    for r in results:
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "n/a"
        per_epoch = [r["images_per_epoch"] / seconds for seconds in r["epoch_seconds"][1:]]
        spread = f"{min(per_epoch):.0f}..{max(per_epoch):.0f}"
        lines.append(
            f"{r['workers']:>7}  {r['strategy']:<21} {r['global_batch']:>12} {r['images_per_epoch']:>12} "
            f"{r['images_per_s']:>9.0f} {r['images_per_s'] / r['workers']:>10.0f} {ratio:>11} {spread:>20} "
            f"{r['warmup_seconds']:>9.1f} {r['wall_seconds']:>7.1f}"
        )
    lines += [
        "",
        "images/s: global (all workers together), median of the measured epochs; mean over them: "
        + ", ".join(f"{r['images_per_s_mean']:.0f} ({r['workers']} worker(s))" for r in results) + ".",
        "scaling ratio = images/s(N workers) / images/s(1 worker).",
        f"load average (1, 5, 15 min): before {loads[0]}; after {loads[1]}",
    ]
    largest = max(r["workers"] for r in results)
    if largest > 1:
        lines.append(
            f"note: the workers are local processes on one {host['nproc']}-CPU machine and share the same cores "
            f"(each TensorFlow process sizes its thread pools to all of them), so the ratio measures the "
            "cost of synchronisation (all-reduce over loopback, lockstep steps), not a speed-up; a real speed-up "
            "needs a worker per machine or per set of cores."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    host = machine()
    load_before = _load()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tfstack-scaling-") as scratch:
        digits = data.ensure_digits(Path(scratch) / "digits")
        for workers in args.workers:
            print(f"training with {workers} worker(s) ...", file=sys.stderr, flush=True)
            result = run_one(workers, args, digits, Path(scratch))
            results.append(result)
    print(report(results, host, (load_before, _load()), args.epochs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
