"""Parallel trials as real processes: ``python -m trainer launch --groups 2 --workers 2 -- search ...``.

An oracle process and two MultiWorkerMirroredStrategy groups of two workers on loopback, exactly as a
user runs them. What a trial's fate is comes from KerasTuner's own files (``trial.json``,
``oracle.json``), not from our logs; the logs give the order of events (the launcher writes lines as
they arrive).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.trainer.images import write_folder
from tests.trainer.test_multiworker_search import _Job, _worker_pid

pytestmark = pytest.mark.slow

HANDED = re.compile(r"^\[oracle\] .* trial (\S+) to group(\d+): ")
COMPLETED = re.compile(r"^\[group (\d) worker 0\] .* trial (\S+) COMPLETED: ")
WEIGHTS = re.compile(r"^\[group (\d) worker (\d)\] .* trial (\S+) weights: (.*)$")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("groups") / "images", classes=3, per_class=16)


def _grouped(tmp_path: Path, folder: Path, *, max_trials: int, epochs: int, max_restarts: int = 0) -> _Job:
    return _Job(tmp_path, folder, "--publish", "always", max_trials=max_trials, epochs=epochs,
                max_restarts=max_restarts, launch=("--groups", "2"))


def _kerastuner_trials(tmp_path: Path) -> tuple[dict[str, str], list[str]]:
    """Each trial's status in its trial.json, and the oracle's end order (KerasTuner's own records)."""
    project = tmp_path / "runs" / "toy" / "tuner" / "toy"
    statuses = {json.loads(p.read_text())["trial_id"]: json.loads(p.read_text())["status"]
                for p in project.glob("trial_*/trial.json")}
    return statuses, json.loads((project / "oracle.json").read_text())["end_order"]


def _spans(lines: list[str]) -> dict[str, tuple[int, int, int]]:
    """trial id -> (group, line where the oracle handed it out first, line where its chief completed it)."""
    spans: dict[str, tuple[int, int, int]] = {}
    for index, line in enumerate(lines):
        if match := HANDED.match(line):
            spans.setdefault(match[1], (int(match[2]), index, -1))
        elif match := COMPLETED.match(line):
            group, start, _ = spans[match[2]]
            assert group == int(match[1]), f"trial {match[2]} handed to group {group}, completed by group {match[1]}"
            spans[match[2]] = (group, start, index)
    return spans


def test_two_groups_run_trials_at_the_same_time_and_each_trial_completes_once(
    tmp_path: Path, folder: Path, jobs: list[_Job]
) -> None:
    job = _grouped(tmp_path, folder, max_trials=4, epochs=3)
    jobs.append(job)
    assert job.wait() == 0, job.output[-5000:]

    statuses, end_order = _kerastuner_trials(tmp_path)
    assert statuses == {t: "COMPLETED" for t in statuses} and len(statuses) == 4
    assert sorted(end_order) == sorted(statuses), f"a trial ended twice or never: {end_order}"
    spans = _spans(job.lines)
    assert sorted(spans) == sorted(statuses) and all(end > start for _, start, end in spans.values())
    by_group = {g: [(s, e) for group, s, e in spans.values() if group == g] for g in (0, 1)}
    assert by_group[0] and by_group[1], f"one group got every trial: {spans}"
    overlapping = [(a, b) for a in by_group[0] for b in by_group[1] if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, f"no two trials of different groups overlapped in time: {spans}"

    weights: dict[tuple[int, str], set[str]] = {}
    for line in job.lines:
        if match := WEIGHTS.match(line):
            weights.setdefault((int(match[1]), match[3]), set()).add(match[4])
    assert {trial for _, trial in weights} == set(statuses)
    assert all(len(digests) == 1 for digests in weights.values()), f"a group's workers diverged: {weights}"
    assert sorted(p.name for p in (tmp_path / "models" / "toy").iterdir()) == ["1"]
    summary = json.loads((tmp_path / "runs" / "toy" / "report" / "summary.json").read_text())
    assert summary["training"]["groups"] == 2 and summary["training"]["replicas"] == 2
    assert summary["training"]["trials"] == 4


def test_a_group_killed_mid_trial_restarts_alone_and_resumes_its_trial(
    tmp_path: Path, folder: Path, jobs: list[_Job]
) -> None:
    job = _grouped(tmp_path, folder, max_trials=3, epochs=4, max_restarts=1)
    jobs.append(job)
    backup = tmp_path / "runs" / "toy" / "backup"
    killed, trial = None, None
    deadline = time.monotonic() + 400
    while killed is None and job.process.poll() is None and time.monotonic() < deadline:
        # Once group 1's chief has written an epoch backup of its trial, kill its worker 1 like a lost pod.
        group1 = [t for t, (g, _, end) in _spans(list(job.lines)).items() if g == 1 and end < 0]
        if group1 and list(backup.glob(f"trial_{group1[0]}/phase1/*.json")):
            killed = _worker_pid(job.process.pid, 1, group=1)
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
                trial = group1[0]
        time.sleep(0.05)  # polling interval for the backup file
    assert killed is not None and trial is not None, "never saw group 1's backup:\n" + job.output[-3000:]
    assert job.wait() == 0, job.output[-5000:]

    assert "restarting group 1 (1 of 1)" in job.output and "restarting group 0" not in job.output
    assert "restarting everything" not in job.output
    handed = [m[2] for m in map(HANDED.match, job.lines) if m and m[1] == trial]
    assert handed == ["1", "1"], f"trial {trial} was not handed back to the restarted group: {handed}"
    statuses, end_order = _kerastuner_trials(tmp_path)
    assert statuses == {t: "COMPLETED" for t in statuses} and len(statuses) == 3
    assert sorted(end_order) == sorted(statuses), f"a trial ended twice or never: {end_order}"
    history = json.loads((tmp_path / "runs" / "toy" / "histories" / f"trial_{trial}" / "history.json").read_text())
    assert len(history["val_accuracy"]) == 4, f"every epoch of the resumed trial once: {history}"
    assert sorted(p.name for p in (tmp_path / "models" / "toy").iterdir()) == ["1"]
