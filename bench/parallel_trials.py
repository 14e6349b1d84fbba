"""Benchmarks parallel trials: the same search with ``--groups 2 --workers 1`` vs ``--groups 1 --workers 1``.

    .venv/bin/python bench/parallel_trials.py                 # 4 trials x 6 epochs on the digits, 2 rounds
    .venv/bin/python bench/parallel_trials.py --rounds 3 --epochs 8 --max-trials 4
    .venv/bin/python bench/parallel_trials.py --rounds 3 --no-split   # + groups 2 with TensorFlow's default threads

Each run is ``python -m trainer launch --groups G --workers 1 -- search ...`` exactly as a user types it,
on the embedded digits (1,797 images, small_cnn, random tuner with a fixed seed, so both settings search
the same 4 hyperparameter sets), in a fresh run directory. The two settings alternate (1, 2, 1, 2, ...)
so that noise from other programs hits both alike. Reported: wall time of the whole command (start-up,
trials, evaluation, export), the trial phase (first trial started to last trial ended), and the CPU
time of all its processes divided by the wall time (cores kept busy), per run; the ratio of medians
groups-2 / groups-1 (issue 25's goal: <= 0.85 on this 2-core machine), and where the wall time goes: start-up
(launch to the first trial started), trials (first trial started to last trial ended), end (evaluation,
export, exit). The launcher gives each group's worker cores / groups TensorFlow threads (`trainer.launch`);
``--no-split`` also runs ``--groups 2 --threads-per-worker 0`` (TensorFlow's default pools, as before) in
the same rounds, side by side.
The cores one search keeps busy bound what parallel trials can gain: on C cores at most C / busy.
The load averages before and after are printed: compare them.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRIAL_STARTED = re.compile(r"trial \S+ started")
TRIAL_COMPLETED = re.compile(r"trial \S+ COMPLETED")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs per setting (default 2)")
    parser.add_argument("--max-trials", type=int, default=4, help="trials per search (default 4)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial (default 6)")
    parser.add_argument("--no-split", action="store_true",
                        help="also run --groups 2 with --threads-per-worker 0 (TensorFlow's default thread pools)")
    return parser.parse_args(argv)


def _run(groups: int, args: argparse.Namespace, work: Path, launch: tuple[str, ...] = ()
         ) -> tuple[float, float, float, float]:
    """(wall seconds of the whole launch, first trial started, last trial completed, CPU seconds) of one search."""
    run = Path(tempfile.mkdtemp(prefix=f"groups{groups}-", dir=work))
    command = [
        sys.executable, "-m", "trainer", "launch", "--groups", str(groups), "--workers", "1", *launch, "--",
        "search", "--run-dir", str(run / "runs"), "--export-base", str(run / "models"), "--model-name", "digits",
        "--backbone", "small_cnn", "--tuner", "random", "--max-trials", str(args.max_trials),
        "--epochs", str(args.epochs), "--publish", "always", "--seed", "7",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=run, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_trial = last_trial = 0.0
    assert process.stdout is not None
    log = []
    for line in process.stdout:
        log.append(line)
        if TRIAL_STARTED.search(line) and not first_trial:
            first_trial = time.monotonic() - start
        if TRIAL_COMPLETED.search(line):
            last_trial = time.monotonic() - start
    if process.wait() != 0:
        sys.exit(f"groups={groups}: the search failed:\n{''.join(log[-40:])}")
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the launcher waited for its workers: included
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    trials = len({m.group(0) for m in (re.search(r"trial (\S+) COMPLETED", x) for x in log) if m})
    if trials != args.max_trials:
        sys.exit(f"groups={groups}: expected {args.max_trials} completed trials, saw {trials}")
    return wall, first_trial, last_trial, cpu


SETTINGS = {"1": (1, ()), "2": (2, ()), "2 default threads": (2, ("--threads-per-worker", "0"))}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    settings = [name for name in SETTINGS if args.no_split or name != "2 default threads"]
    print(f"machine: {os.cpu_count()} CPUs; load before {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory(prefix="tfstack-parallel-") as work:
        for round_ in range(args.rounds):
            for name in settings:
                groups, launch = SETTINGS[name]
                wall, first, last, cpu = _run(groups, args, Path(work), launch)
                results[name].append((wall, first, last, cpu))
                print(f"round {round_ + 1} groups={name}: {wall:6.1f} s wall: start-up {first:5.1f} s, trials "
                      f"{last - first:5.1f} s, end {wall - last:4.1f} s; {cpu:6.1f} CPU s "
                      f"({cpu / wall:.2f} cores busy)", flush=True)
    median = statistics.median
    medians = {name: (median(r[0] for r in rows), median(r[1] for r in rows), median(r[2] - r[1] for r in rows),
                      median(r[0] - r[2] for r in rows), median(r[3] / r[0] for r in rows))
               for name, rows in results.items()}
    print(f"\n{args.max_trials} trials x {args.epochs} epochs, {args.rounds} rounds; load after "
          f"{os.getloadavg()[0]:.2f}")
    print("| setting | wall | start-up | trials | end | cores busy | wall / groups 1 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (wall, start, trials, end, busy) in medians.items():
        extra = " --threads-per-worker 0" if name == "2 default threads" else ""
        print(f"| --groups {name.split()[0]} --workers 1{extra} | {wall:.1f} s | {start:.1f} s | {trials:.1f} s | "
              f"{end:.1f} s | {busy:.2f} | {wall / medians['1'][0]:.2f} |")
    ratios = [results["2"][i][0] / results["1"][i][0] for i in range(args.rounds)]
    print(f"\n(medians of {args.rounds} rounds) wall ratio groups 2 / groups 1: "
          f"{medians['2'][0] / medians['1'][0]:.2f} "
          f"(goal <= 0.85; per round {', '.join(f'{r:.2f}' for r in ratios)}); trials only: "
          f"{medians['2'][2] / medians['1'][2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
