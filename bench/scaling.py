"""Benchmarks synchronous data-parallel training with 1 and 2 local workers: images/s and scaling ratio.

    .venv/bin/python bench/scaling.py                       # 1 and 2 workers, 6 measured epochs each
    .venv/bin/python bench/scaling.py --epochs 10 --workers 1,2,3 --image-size 64
    .venv/bin/python bench/scaling.py --global-batch 32 --threads 1,1 --rounds 2   # issue 25's target (+ --legacy)
    flock /tmp/tfstack-heavy.lock .venv/bin/python bench/scaling.py --pin --rounds 3   # one core per worker

For each worker count the local launcher (`trainer.launch.launch`) starts that many processes of
``python -m bench.scaling_worker`` wired by TF_CONFIG on loopback, as ``python -m trainer launch``
does for the search. One worker trains with TensorFlow's default strategy (no MWMS), several with
``MultiWorkerMirroredStrategy`` (RING all-reduce on CPUs). Each run trains the search's model for
the embedded digits (``small_cnn`` backbone, ``flatten_dense_dropout`` head, fixed hyperparameters)
on the digits' training split, per-replica batch 32 by default (global batch = 32 x workers),
padded to whole global batches. The first epoch (tracing, and the decode that fills the cache) is
the warm-up and is not measured; the chief reports the global training images/s of the median
epoch after it (and the mean) in a JSON file, read back here.

``--global-batch G`` keeps the global batch at G for every worker count (issue 25's comparison: the
2-worker step against 1.5 x the 1-worker step + 5 ms, printed as "target"); ``--threads INTRA,INTER``
fixes TensorFlow's thread pools per worker without pinning; ``--legacy`` measures the step as it was
before issue 25 (finite data set, synchronized BatchNormalization, one step per execution).

Prints one row per worker count (global batch, images/s, per-worker images/s, ratio to 1 worker),
the machine (CPUs, CPU model, RAM), the TensorFlow and Keras versions and the load averages before
and after. The worker counts run one after another, so load from other programs on the machine can
hit them unequally: compare the load averages, and use ``--rounds R``, which runs every worker count
R times, alternating the order (1,2 then 2,1 then 1,2 ...), and reports each count's median run and
every round's ratio, so that noise from other programs hits both counts alike.

``--pin`` gives every worker its own core (bench/scaling_worker.py: worker i on the i-th allowed CPU,
one TensorFlow thread per pool; the 1-worker run on the first CPU), so N workers have N times the
compute of 1 and the run measures scaling itself, reported as the efficiency per worker =
(images/s with N workers / N) / (images/s with 1 worker) (1.0 = linear). Nothing else may run on
those cores meanwhile: take the machine's lock. With several workers it also prints the time per
step next to the gradient all-reduce time per step that the chief measured after training, which
is what synchronisation adds to the 1-worker step. ``--repeat R`` runs R passes over the data per
epoch (more steps at a large per-replica batch).
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

from trainer import scan  # noqa: E402  (after the sys.path line, like the other benches)
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
    parser.add_argument("--global-batch", type=int, default=0,
                        help="the same global batch at every worker count (per replica = G / workers; "
                             "default 0: --batch-size per replica)")
    parser.add_argument("--threads", default="", metavar="INTRA,INTER",
                        help="TensorFlow's intra-op,inter-op pool sizes per worker without pinning (a fixed "
                             "thread count per worker on a shared machine)")
    parser.add_argument("--legacy", action="store_true",
                        help="measure the step as it was before issue 25 (finite data set, synchronized "
                             "BatchNormalization, 1 step per execution, blocking callbacks)")
    parser.add_argument("--image-size", type=int, default=32, help="square input size (default 32, the digits')")
    parser.add_argument("--workers", type=_worker_counts, default=(1, 2),
                        help="comma-separated worker counts, run in this order (default 1,2)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pin", action="store_true",
                        help="one core per worker: worker i pinned to the i-th allowed CPU, one TF thread per pool")
    parser.add_argument("--tf-threads", default="1,1", metavar="INTRA,INTER",
                        help="with --pin: TensorFlow's intra-op,inter-op thread pool sizes (default 1,1; 0 = "
                             "TensorFlow's choice)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs per worker count, the order alternating every round (default 1)")
    parser.add_argument("--step-times", action="store_true",
                        help="also print percentiles of single step times (adds a host sync per step)")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the training split per epoch (default 1)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.image_size < 8 or args.rounds < 1 or args.repeat < 1:
        parser.error(f"Expected epochs, batch size, rounds, repeat >= 1 and image size >= 8. Received: "
                     f"{args.epochs}, {args.batch_size}, {args.rounds}, {args.repeat}, {args.image_size}")
    if args.global_batch and any(args.global_batch % n for n in args.workers):
        parser.error(f"Expected --global-batch divisible by every worker count. Received: {args.global_batch}")
    parts = args.tf_threads.split(",")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        parser.error(f"Expected --tf-threads INTRA,INTER as two integers >= 0. Received: {args.tf_threads!r}")
    cpus = len(os.sched_getaffinity(0))
    if args.pin and max(args.workers) > cpus:
        parser.error(f"Expected at most one pinned worker per CPU. Received: --workers "
                     f"{','.join(map(str, args.workers))} with {cpus} CPUs")
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
            "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--seed", str(args.seed),
            "--repeat", str(args.repeat)]
    argv += ["--step-times"] if args.step_times else []
    argv += ["--global-batch", str(args.global_batch)] if args.global_batch else []
    argv += ["--threads", args.threads] if args.threads else []
    argv += ["--legacy"] if args.legacy else []
    argv += ["--pin", "--tf-threads", args.tf_threads] if args.pin else []
    output = io.StringIO()
    started = time.perf_counter()
    status = launch(argv, workers=workers, env=dict(os.environ), module=WORKER_MODULE, cwd=str(ROOT),
                    stdout=output, stderr=output)
    wall = time.perf_counter() - started
    result_path = out / RESULT_FILE
    if status == 0 and result_path.is_file():
        result: dict[str, Any] = json.loads(result_path.read_text())
        result_path.unlink()  # the next round of this count writes its own
        result["wall_seconds"] = wall
        return result
    sys.stderr.write(output.getvalue())
    found = "present" if result_path.is_file() else "missing"
    raise RuntimeError(f"Expected the {workers}-worker run to exit 0 with {result_path}. "
                       f"Received: exit status {status}, result file {found}")


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median images/s (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r["images_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def report(rounds: list[dict[int, dict[str, Any]]], host: dict[str, Any], loads: tuple[str, str],
           args: argparse.Namespace) -> str:
    """The table and the notes, as printed."""
    counts = list(rounds[0])
    results = [_median_run([r[n] for r in rounds]) for n in counts]
    base = next((r["images_per_s"] for r in results if r["workers"] == 1), None)
    first = results[0]
    pinning = (f"one core per worker (worker i on CPU i; TF intra,inter-op threads {args.tf_threads})" if args.pin
               else "unpinned (every worker may use every CPU)")
    lines = [
        f"machine: {host['nproc']} CPUs visible ({host['cpus_online']} online), {host['cpu_model']}, "
        f"{host['ram_gib']:.1f} GiB RAM; {platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"TensorFlow {first['tensorflow']}, Keras {first['keras']}, keras-tuner {_version('keras-tuner')}",
        f"model: {first['model']} ({first['params']:,} parameters, {first['allreduce_bytes'] / 2**20:.2f} MiB of "
        "gradients), " + ", ".join(f"{k}={v}" for k, v in first["hyperparameters"].items()
                                   if k not in ("backbone", "head")),
        f"data: embedded digits, {first['train_images']} training images at {first['image_size']}px square, "
        f"x{args.repeat} per epoch, padded to whole global batches; per-replica batch {first['per_replica_batch']}; "
        f"{args.epochs} measured epochs after 1 warm-up epoch per run; {len(rounds)} round(s), order alternating",
        f"placement: {pinning}; step: "
        f"{'LEGACY (before issue 25)' if args.legacy else 'repeated data set, async-safe callbacks'}; per worker count "
        "(steps per execution, BatchNormalization): " + ", ".join(
            f"{r['workers']}: ({r.get('steps_per_execution', 1)}, "
            f"{'synchronized' if r.get('sync_batchnorm', True) and r['workers'] > 1 else 'per replica'})"
            for r in results),
        "",
        f"{'workers':>7}  {'strategy':<21} {'global batch':>12} {'steps/epoch':>11} {'images/s':>9} "
        f"{'per worker':>10} {'vs 1 worker':>11} {'efficiency':>10} {'rounds img/s':>20} {'wall s':>7}",
    ]
    for n, r in zip(counts, results, strict=True):
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "n/a"
        efficiency = f"{r['images_per_s'] / n / base:.2f}" if base else "n/a"
        spread = ", ".join(f"{rnd[n]['images_per_s']:.0f}" for rnd in rounds)
        lines.append(
            f"{r['workers']:>7}  {r['strategy']:<21} {r['global_batch']:>12} {r['steps_per_epoch']:>11} "
            f"{r['images_per_s']:>9.0f} {r['images_per_s'] / r['workers']:>10.0f} {ratio:>11} {efficiency:>10} "
            f"{spread:>20} {r['wall_seconds']:>7.1f}"
        )
    lines += [
        "",
        "images/s: global (all workers together), median epoch of a run; the row is the median run over the rounds.",
        "scaling ratio = images/s(N) / images/s(1); efficiency per worker = (images/s(N) / N) / images/s(1).",
    ]
    if 1 in counts:
        for n in counts:
            if n == 1:
                continue
            per_round = [rnd[n]["images_per_s"] / n / rnd[1]["images_per_s"] for rnd in rounds]
            lines.append(f"efficiency per worker, {n} workers, each round: "
                         + ", ".join(f"{e:.2f}" for e in per_round))
        one = results[counts.index(1)]
        lines.append("")
        lines.append(f"{'workers':>7} {'step ms':>8} {'1-worker step ms':>16} {'added ms':>8} "
                     f"{'all-reduce ms':>13} {'all-reduce / step':>17} {'scalar all-reduce ms':>20} "
                     f"{'chief CPU busy':>14}")
        for n, r in zip(counts, results, strict=True):
            step, compute = r["step_seconds"] * 1e3, one["step_seconds"] * 1e3
            reduce_ms = r["allreduce_seconds"] * 1e3
            lines.append(f"{n:>7} {step:>8.1f} {compute:>16.1f} {step - compute:>8.1f} {reduce_ms:>13.2f} "
                         f"{reduce_ms / step:>17.0%} {r['scalar_allreduce_seconds'] * 1e3:>20.2f} "
                         f"{r['cpu_share']:>14.0%}")
        lines.append("step ms: the median epoch / steps per epoch (" + (
                     "same global batch at every count: the target compares these" if args.global_batch else
                     "same per-replica batch at every count, so the 1-worker step is the compute of one step")
                     + "); all-reduce ms: median of the chief's timed "
                     "gradient-sized all-reduces after training, the same collective the optimizer runs per step; "
                     "scalar: the same for one float (a collective's latency); chief CPU busy: the chief "
                     "process's CPU seconds (all threads) per wall second over the measured epochs.")
        for n, r in zip(counts, results, strict=True):
            if n > 1 and r["global_batch"] == one["global_batch"]:
                limit = 1.5 * one["step_seconds"] * 1e3 + 5
                verdict = "met" if r["step_seconds"] * 1e3 <= limit else "missed"
                lines.append(f"target (same global batch {r['global_batch']}): {n}-worker step "
                             f"{r['step_seconds'] * 1e3:.1f} ms <= 1.5 x {one['step_seconds'] * 1e3:.1f} + 5 = "
                             f"{limit:.1f} ms: {verdict}")
    for n, r in zip(counts, results, strict=True):
        if r["step_times"]:
            ordered = sorted(r["step_times"])
            marks = ", ".join(f"p{q} {ordered[min(len(ordered) - 1, q * len(ordered) // 100)] * 1e3:.1f}"
                              for q in (5, 25, 50, 75, 95))
            lines.append(f"single steps, {n} worker(s), ms ({len(ordered)} steps): {marks}, "
                         f"max {ordered[-1] * 1e3:.1f}")
            median = ordered[len(ordered) // 2]
            slow = [(i, t) for i, t in enumerate(r["step_times"]) if t > 5 * median]
            per_epoch = r["steps_per_epoch"]
            lines.append(f"  steps over 5x the median: {len(slow)}, {sum(t for _, t in slow):.2f} s in all; "
                         "(epoch, step in epoch, ms): "
                         + ", ".join(f"({i // per_epoch + 2}, {i % per_epoch}, {t * 1e3:.0f})" for i, t in slow[:12]))
            lines.append(f"  measured epochs {sum(r['epoch_seconds'][1:]):.2f} s, of which in steps "
                         f"{sum(r['step_times']):.2f} s; per epoch, before the first step: "
                         + ", ".join(f"{t:.2f}" for t in r["epoch_heads"]) + " s; after the last: "
                         + ", ".join(f"{t:.2f}" for t in r["epoch_tails"]) + " s")
        lines.append(f"chief's busiest threads, {n} worker(s) (CPU s, whole run): "
                     + ", ".join(f"{name} {seconds:.1f}" for name, seconds in r["busiest_threads"]))
    lines.append(f"load average (1, 5, 15 min): before {loads[0]}; after {loads[1]}")
    largest = max(counts)
    if largest > 1 and not args.pin:
        lines.append(
            f"note: the workers are local processes on one {host['nproc']}-CPU machine and share the same cores "
            f"(each TensorFlow process sizes its thread pools to all of them), so the ratio measures the "
            "cost of synchronisation (all-reduce over loopback, lockstep steps), not a speed-up; a real speed-up "
            "needs a worker per machine or per set of cores (--pin)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    host = machine()
    load_before = _load()
    rounds: list[dict[int, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="tfstack-scaling-") as scratch:
        digits = scan.ensure_digits(Path(scratch) / "digits")
        for index in range(args.rounds):
            order = args.workers if index % 2 == 0 else tuple(reversed(args.workers))
            results: dict[int, dict[str, Any]] = {}
            for workers in order:
                print(f"round {index + 1}/{args.rounds}: training with {workers} worker(s) ...", file=sys.stderr,
                      flush=True)
                results[workers] = run_one(workers, args, digits, Path(scratch))
                print(f"  {results[workers]['images_per_s']:.0f} images/s (load {_load()})", file=sys.stderr,
                      flush=True)
            rounds.append({n: results[n] for n in args.workers})
    print(report(rounds, host, (load_before, _load()), args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
