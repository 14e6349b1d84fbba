"""The whole search as a real two-process MultiWorkerMirroredStrategy job on loopback.

Each test runs ``python -m trainer launch --workers 2 -- search ...`` exactly as a user would and
checks what both workers logged and what the chief wrote.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.trainer.images import write_folder
from trainer.launch import free_ports

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TRIAL_LINE = re.compile(r"^\[worker (\d)\] .* trial (\S+) COMPLETED: val_accuracy=(\S+) \(best \S+\) (.*)$")
WEIGHTS_LINE = re.compile(r"^\[worker (\d)\] .* trial (\S+) weights: l2=(\S+) sha256=(\S+)$")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("mw") / "images", classes=3, per_class=16)


class _Job:
    """A running launcher whose merged output is collected line by line in a thread."""

    def __init__(self, cwd: Path, folder: Path, *extra: str, max_trials: int = 2, epochs: int = 3,
                 max_restarts: int = 0, launch: tuple[str, ...] = ()) -> None:
        command = [
            sys.executable, "-m", "trainer", "launch", "--workers", "2", "--max-restarts", str(max_restarts), *launch,
            "--",
            "search", "--data", str(folder), "--model-name", "toy", "--export-base", "models", "--run-dir", "runs",
            "--backbone", "small_cnn", "--image-size", "16", "--tuner", "random", "--max-trials", str(max_trials),
            "--epochs", str(epochs), "--batch-size", "4", "--patience", "10", *extra,
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, timeout: float = 600) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise
        self._reader.join(timeout=30)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _trials(lines: list[str]) -> dict[int, list[tuple[str, str, str]]]:
    by_worker: dict[int, list[tuple[str, str, str]]] = {0: [], 1: []}
    for line in lines:
        match = TRIAL_LINE.match(line)
        if match:
            by_worker[int(match[1])].append((match[2], match[3], match[4]))
    return by_worker


def _weights(lines: list[str]) -> dict[int, dict[str, tuple[float, str]]]:
    by_worker: dict[int, dict[str, tuple[float, str]]] = {0: {}, 1: {}}
    for line in lines:
        match = WEIGHTS_LINE.match(line)
        if match:
            by_worker[int(match[1])][match[2]] = (float(match[3]), match[4])
    return by_worker


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("tfstack_trainer_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_two_workers_agree_on_every_trial_and_the_chief_exports_once(
    tmp_path: Path, folder: Path, jobs: list[_Job]
) -> None:
    (metrics_port,) = free_ports(1)
    job = _Job(tmp_path, folder, "--metrics-port", str(metrics_port), max_trials=2)
    jobs.append(job)
    seen_completed: list[float] = []
    while job.process.poll() is None:  # scrape the chief while it searches
        try:
            values = _scrape(metrics_port)
        except OSError:
            values = {}  # not serving yet, or already finished
        if "tfstack_trainer_trials_completed_total" in values:
            seen_completed.append(values["tfstack_trainer_trials_completed_total"])
            assert values["tfstack_trainer_workers"] == 2
            assert values["tfstack_trainer_trials_planned"] == 2
        time.sleep(0.2)  # scrape interval; the assertions below do not depend on timing
    assert job.wait() == 0, job.output[-4000:]

    trials = _trials(job.lines)
    assert len(trials[0]) == 2, job.output[-4000:]
    assert trials[0] == trials[1], "workers disagree on trial hyperparameters or scores"
    weights = _weights(job.lines)
    assert set(weights[0]) == set(weights[1]) == {t[0] for t in trials[0]}
    for trial_id, (l2, digest) in weights[0].items():
        other_l2, other_digest = weights[1][trial_id]
        assert other_l2 == pytest.approx(l2, rel=1e-9) and other_digest == digest, f"trial {trial_id} weights differ"

    assert sorted(p.name for p in (tmp_path / "models" / "toy").iterdir()) == ["1"], "exactly one export"
    assert (tmp_path / "models" / "toy" / "1" / "saved_model.pb").is_file()
    summary = json.loads((tmp_path / "runs" / "toy" / "report" / "summary.json").read_text())
    assert summary["training"]["workers"] == 2 and summary["training"]["replicas"] == 2
    # Only the chief writes shared state: one TensorBoard tree, no scratch left behind by worker 1.
    scratch = re.search(r"\[worker 1\] .*worker 1 writes to private scratch (\S+)", job.output)
    assert scratch is not None and not Path(scratch[1]).exists(), "worker 1's scratch space was not removed"
    assert not list((tmp_path / "runs" / "toy" / "logs").rglob("*worker*"))

    # The chief scanned and prepared once; worker 1 read its manifest and its own block of the records.
    assert re.search(r"\[worker 1\] .*read the chief's manifest", job.output), job.output[-4000:]
    assert re.search(r"\[worker 0\] .*prepared set \S+: wrote", job.output)
    assert re.search(r"\[worker 1\] .*train input pipeline 1 of 2: reads \d+ prepared records", job.output)
    assert len(list((tmp_path / "runs" / "prepared").glob("*/manifest.json"))) == 1
    assert seen_completed, "never scraped the chief's metrics"
    assert seen_completed[0] < 2 and max(seen_completed) >= 1, f"trial count did not advance: {seen_completed}"


def _worker_pid(launcher_pid: int, rank: int, group: int | None = None) -> int | None:
    """The pid of the launcher's child whose TF_CONFIG names task index `rank` (in `group`, with --groups)."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        try:
            entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        environ = dict(entry.split(b"=", 1) for entry in entries if b"=" in entry)
        if b"TF_CONFIG" not in environ or json.loads(environ[b"TF_CONFIG"])["task"]["index"] != rank:
            continue
        if group is None or environ.get(b"TFSTACK_GROUP") == str(group).encode():
            return int(pid)
    return None


def test_a_worker_killed_mid_trial_rejoins_and_the_search_completes(
    tmp_path: Path, folder: Path, jobs: list[_Job]
) -> None:
    job = _Job(tmp_path, folder, max_trials=2, epochs=4, max_restarts=2)
    jobs.append(job)
    backup = tmp_path / "runs" / "toy" / "backup"
    killed = None
    deadline = time.monotonic() + 400
    while killed is None and job.process.poll() is None and time.monotonic() < deadline:
        # Once the chief has written an epoch backup of the first trial, kill worker 1 like a lost pod.
        if list(backup.glob("trial_*/phase1/*.json")):
            pid = _worker_pid(job.process.pid, 1)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.05)  # polling interval for the backup file
    assert killed is not None, "never saw a backup to kill worker 1 after:\n" + job.output[-3000:]
    assert job.wait() == 0, job.output[-5000:]
    assert re.search(r"worker \d exited with status \S+.*restarting the whole group", job.output), job.output[-3000:]

    trials = _trials(job.lines)
    ids = [t[0] for t in trials[0]]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 2, f"a trial was lost or repeated: {ids}\n" + job.output
    assert trials[0] == trials[1]
    rows = (tmp_path / "runs" / "toy" / "report" / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and all(",COMPLETED," in row for row in rows[1:])
    assert sorted(p.name for p in (tmp_path / "models" / "toy").iterdir()) == ["1"]
    assert (tmp_path / "models" / "toy" / "1" / "saved_model.pb").is_file()


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local MobileNetV2 weights file (random values): --weights FILE makes the backbone pretrained,
    so each trial has a phase 2, without downloading ImageNet weights."""
    import keras

    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_32.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    return path


def test_a_worker_killed_in_phase_2_resumes_phase_2_and_the_trial_completes_once(
    tmp_path: Path, folder: Path, backbone_weights: Path, jobs: list[_Job]
) -> None:
    job = _Job(tmp_path, folder, "--backbone", "mobilenet_v2", "--image-size", "32", "--weights",
               str(backbone_weights), "--unfreeze-depths", "1.0", "--head-epochs", "1", "--heads", "gap_dense",
               "--publish", "always",  # random backbone weights: about resuming, not about quality
               max_trials=1, epochs=4, max_restarts=2)
    jobs.append(job)
    phase2 = tmp_path / "runs" / "toy" / "backup"
    killed = None
    deadline = time.monotonic() + 500
    while killed is None and job.process.poll() is None and time.monotonic() < deadline:
        # Once phase 2 has a backup (its first epoch is done), kill worker 1 like a lost pod.
        if list(phase2.glob("trial_*/phase2/training_metadata.json")):
            killed = _worker_pid(job.process.pid, 1)
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)  # polling interval for the backup file
    assert killed is not None, "never saw a phase-2 backup:\n" + job.output[-3000:]
    assert job.wait() == 0, job.output[-5000:]
    restart = next(i for i, line in enumerate(job.lines) if "restarting the whole group" in line)
    after = [int(m[1]) for m in (re.match(r"^\[worker 0\] Epoch (\d+)/4$", line) for line in job.lines[restart:]) if m]
    assert after and min(after) >= 3, f"phase 1 replayed or phase 2 restarted from its start: epochs {after}"
    trials = _trials(job.lines)
    assert len(trials[0]) == 1 and trials[0] == trials[1], job.output[-3000:]
    history = json.loads(next((tmp_path / "runs" / "toy" / "histories").glob("trial_*/history.json")).read_text())
    assert len(history["val_accuracy"]) == 4, f"every epoch once, none lost or repeated: {history}"
    assert sorted(p.name for p in (tmp_path / "models" / "toy").iterdir()) == ["1"]
