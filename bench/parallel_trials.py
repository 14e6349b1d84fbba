"""Benchmarks parallel trials: the same search with ``--groups 2 --workers 1`` vs ``--groups 1 --workers 1``.

    .venv/bin/python bench/parallel_trials.py                 # 4 trials x 6 epochs on the digits, 2 rounds
    .venv/bin/python bench/parallel_trials.py --rounds 3 --epochs 8 --max-trials 4

Each run is ``python -m trainer launch --groups G --workers 1 -- search ...`` exactly as a user types it,
on the embedded digits (1,797 images, small_cnn, random tuner with a fixed seed, so both settings search
the same 4 hyperparameter sets), in a fresh run directory. The two settings alternate (1, 2, 1, 2, ...)
so that noise from other programs hits both alike. Reported: wall time of the whole command (start-up,
trials, evaluation, export), the trial phase (first trial started to last trial ended), and the CPU
time of all its processes divided by the wall time (cores kept busy), per run; the ratio of medians
groups-2 / groups-1 (goal <= 0.6 on this 2-core machine: two trials at a time against one at a time).
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
    return parser.parse_args(argv)


def _run(groups: int, args: argparse.Namespace, work: Path) -> tuple[float, float, float, float]:
    """(wall seconds of the whole launch, first trial started, last trial completed, CPU seconds) of one search."""
    run = Path(tempfile.mkdtemp(prefix=f"groups{groups}-", dir=work))
    command = [
        sys.executable, "-m", "trainer", "launch", "--groups", str(groups), "--workers", "1", "--",
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


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    print(f"machine: {os.cpu_count()} CPUs; load before {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[int, list[tuple[float, float, float, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="tfstack-parallel-") as work:
        for round_ in range(args.rounds):
            for groups in (1, 2):
                wall, first, last, cpu = _run(groups, args, Path(work))
                results[groups].append((wall, first, last, cpu))
                print(f"round {round_ + 1} groups={groups}: {wall:6.1f} s wall, trials from {first:5.1f} s to "
                      f"{last:5.1f} s, {cpu:6.1f} CPU s ({cpu / wall:.2f} cores busy)", flush=True)
    medians = {g: (statistics.median(r[0] for r in r_), statistics.median(r[2] - r[1] for r in r_),
                   statistics.median(r[3] / r[0] for r in r_)) for g, r_ in results.items()}
    print(f"\n{args.max_trials} trials x {args.epochs} epochs, {args.rounds} rounds; load after "
          f"{os.getloadavg()[0]:.2f}")
    print("| setting | wall (median) | first trial started -> last trial ended (median) | cores busy (median) |")
    print("|---|---:|---:|---:|")
    for groups, (wall, trials, busy) in medians.items():
        print(f"| --groups {groups} --workers 1 | {wall:.1f} s | {trials:.1f} s | {busy:.2f} |")
    print(f"\nwall ratio groups 2 / groups 1: {medians[2][0] / medians[1][0]:.2f} (goal <= 0.6); "
          f"trials only: {medians[2][1] / medians[1][1]:.2f}; one search keeps {medians[1][2]:.2f} of "
          f"{os.cpu_count()} cores busy, so the best ratio here is about {medians[1][2] / (os.cpu_count() or 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
