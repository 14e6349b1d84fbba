"""SIGTERM in every role (trainer.preemption, docs/distributed.md "Preemption"), with real signals and processes.

Where PID 1 matters (a container without an init: the kernel drops SIGTERM to a PID 1 without a
handler), each process runs as PID 1 of a new PID namespace (``unshare --pid --fork --mount-proc``,
root only; skipped with a message elsewhere). Readiness is read from the processes' logs, never slept for.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.trainer.images import write_folder
from trainer import errors, preemption
from trainer.backup import backup_and_restore
from trainer.cluster import local_tf_configs
from trainer.launch import free_ports

ROOT = Path(__file__).resolve().parents[2]
CHILD = "tests.trainer.launch_child"


# --- the mechanics, in this process: a real SIGTERM mid-epoch, the save, the shortened resumed epoch ----------

@pytest.fixture
def own_sigterm() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    preemption.install(grace=30)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        preemption.reset()


def _model() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    return model


class _Steps(keras.callbacks.Callback):
    """Counts training steps per epoch; sends this process SIGTERM at the end of one chosen step."""

    def __init__(self, kill_at: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.kill_at = kill_at
        self.steps: dict[int, int] = {}
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        self.steps[self.epoch] = self.steps.get(self.epoch, 0) + 1
        if (self.epoch, batch) == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_mid_epoch_saves_that_step_and_the_rerun_trains_only_the_rest(
    tmp_path: Path, own_sigterm: None
) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 2, 40)
    fit = {"x": x, "y": y, "batch_size": 4, "epochs": 3, "shuffle": False, "verbose": 0}  # 10 steps an epoch

    first, killer = _model(), _Steps(kill_at=(1, 3))
    with pytest.raises(preemption.Preempted, match="saved at epoch 2 step 4"), preemption.training():
        first.fit(**fit, callbacks=[killer, backup_and_restore(tmp_path, delete_checkpoint=False)])
    assert killer.steps == {0: 10, 1: 4}, "the signal is acted on at the step it arrived in"
    assert json.loads((tmp_path / "training_metadata.json").read_text()) == {"epoch": 1, "batch": 4}
    saved = [w.copy() for w in first.get_weights()]

    preemption.reset()
    second, counter = _model(), _Steps()
    loaded: list[list[np.ndarray]] = []
    peek = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: loaded.append(second.get_weights()))
    with preemption.training():
        second.fit(**fit, callbacks=[backup_and_restore(tmp_path, delete_checkpoint=False), peek, counter])
    assert all(np.array_equal(a, b) for a, b in zip(loaded[0], saved, strict=True)), "resumed from the saved step"
    assert counter.steps == {1: 6, 2: 10}, "epoch 2 runs only its 6 remaining steps, then epoch 3 in full"
    assert int(second.optimizer.iterations.numpy()) == 30, "as many optimizer steps as an uninterrupted fit"
    assert json.loads((tmp_path / "training_metadata.json").read_text()) == {"epoch": 3, "batch": 0}


def test_sigterm_after_the_trials_stops_before_publishing(own_sigterm: None) -> None:
    with pytest.raises(preemption.Preempted, match="before evaluating or publishing"), preemption.training():
        os.kill(os.getpid(), signal.SIGTERM)
    assert errors.exit_code(preemption.preempted("x")) == errors.EXIT_PEER_LOST


def test_reset_also_forgets_a_sigterm_the_watcher_thread_has_not_read_yet(own_sigterm: None) -> None:
    # Python's C-level handler writes the signal number to the wakeup pipe; the watcher thread may read it
    # after the test has already reset. Before `reset` waited for the watcher, such a late read (a loaded
    # machine) armed a deadline that ended pytest with exit 4 some 25 s later (CI stop 28). Here the byte is
    # written just before `reset`, the likeliest moment for a late read; `reset` must leave nothing pending.
    os.write(preemption._state.wakeup_fd, bytes([signal.SIGTERM]))
    preemption.reset()
    assert not preemption.requested()
    for thread in threading.enumerate():
        if thread.name == "tfstack-sigterm-deadline":
            thread.join(timeout=10)
            assert not thread.is_alive(), "a deadline armed by the late read is still pending"


def test_the_grace_period_is_shared_with_the_chart_by_one_variable() -> None:
    assert preemption.GRACE_ENV == "TFSTACK_TERMINATION_GRACE_SECONDS"
    assert preemption.grace_from_env({}) == 30.0 and preemption.grace_from_env({preemption.GRACE_ENV: "90"}) == 90.0
    assert preemption.deadline_seconds(30) == 25.0 and preemption.deadline_seconds(4) == 2.0
    with pytest.raises(errors.ConfigError, match=preemption.GRACE_ENV):
        preemption.grace_from_env({preemption.GRACE_ENV: "0"})


# --- real processes ---------------------------------------------------------------------------------------------

def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **extra}


def _require_pid_namespaces() -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and util-linux unshare to run each process as PID 1 of its own PID namespace")


class _Process:
    """A command run as PID 1 of a new PID namespace (``pid1=True``) or plainly; output to a log file."""

    def __init__(self, cmd: list[str], log: Path, *, cwd: Path, env: dict[str, str], pid1: bool) -> None:
        self.log = log
        prefix = ["unshare", "--pid", "--fork", "--mount-proc"] if pid1 else []
        with log.open("w") as out:
            self.process = subprocess.Popen([*prefix, *cmd], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.pid1 = pid1

    def target(self) -> int:
        """The pid to signal: the PID 1 of the namespace (unshare's one child), else the process itself."""
        if not self.pid1:
            return self.process.pid
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = children.read_text().split() if children.exists() else []
            if text:
                inner = int(text[0])
                nspid = next(line for line in Path(f"/proc/{inner}/status").read_text().splitlines()
                             if line.startswith("NSpid:"))
                assert nspid.split()[-1] == "1", nspid  # its pid in its own namespace
                return inner
            time.sleep(0.01)  # polling /proc for unshare's child
        raise AssertionError(f"unshare {self.process.pid} started no child")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.process.poll() is None, f"exited before {needle!r}:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {needle!r} within {timeout}s:\n{self.text()[-3000:]}"
            time.sleep(0.05)  # polling the log for a readiness line

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def processes() -> Iterator[list[_Process]]:
    started: list[_Process] = []
    yield started
    for p in started:
        if p.pid1 and p.process.poll() is None:
            children = Path(f"/proc/{p.process.pid}/task/{p.process.pid}/children")
            for pid in (children.read_text().split() if children.exists() else []):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)  # PID 1 dies: the kernel kills the whole namespace
        p.kill()


def _wait_all(procs: list[_Process], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.process.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(-999)
    return codes


SEARCH = [
    sys.executable, "-m", "trainer", "search", "--data", "images", "--model-name", "toy", "--run-dir", "runs",
    "--export-base", "models", "--backbone", "small_cnn", "--weights", "none", "--image-size", "8",
    "--tuner", "random", "--max-trials", "1", "--epochs", "2", "--batch-size", "1", "--patience", "5",
    "--publish", "always", "--termination-grace-seconds", "30",
]


@pytest.mark.slow
def test_two_pid1_workers_sigtermed_mid_epoch_save_one_step_exit_4_and_rerun_to_one_version(
    tmp_path: Path, processes: list[_Process]
) -> None:
    """The issue's "done when": kubelet-style SIGTERM to both PID 1s mid-epoch; the same commands resume."""
    _require_pid_namespaces()
    write_folder(tmp_path / "images", classes=2, per_class=40, size=8)  # 56 train images: 28 steps of 2
    configs = [json.dumps(c) for c in local_tf_configs(free_ports(2))]

    def start(run: str) -> list[_Process]:
        procs = [_Process(SEARCH, tmp_path / f"{run}-worker{rank}.log", cwd=tmp_path,
                          env=_env(TF_CONFIG=config), pid1=True) for rank, config in enumerate(configs)]
        processes.extend(procs)
        return procs

    first = start("first")
    first[0].wait_for("Epoch 2/")  # the chief started epoch 2: epoch 1 is backed up, epoch 2 is running
    targets = [p.target() for p in first]
    signalled = time.monotonic()
    for pid in targets:
        os.kill(pid, signal.SIGTERM)
    codes = _wait_all(first, timeout=30)
    took = time.monotonic() - signalled
    logs = [p.text() for p in first]
    assert codes == [errors.EXIT_PEER_LOST] * 2, "\n".join(log[-2000:] for log in logs)
    assert took < 30, f"took {took:.1f}s: the kubelet would have sent SIGKILL"
    (meta,) = (tmp_path / "runs" / "toy" / "backup").glob("trial_*/phase1/training_metadata.json")
    saved = json.loads(meta.read_text())
    assert saved["epoch"] == 1 and 0 < saved["batch"] < 28, saved  # mid-epoch 2, not at an epoch boundary
    step = f"epoch 2 step {saved['batch']}"
    assert f"saved at {step}" in logs[0] and f"{step}, saved by the chief" in logs[1], "both stopped at one step"
    assert not (tmp_path / "models").exists()

    again = start("again")
    codes = _wait_all(again, timeout=600)
    logs = [p.text() for p in again]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    for log in logs:
        assert f"resuming epoch 2 at step {saved['batch']} (saved on SIGTERM)" in log
        assert "Epoch 1/" not in log, "the rerun went back before the saved point"
    assert sorted(p.name for p in (tmp_path / "models" / "toy").iterdir()) == ["1"]


@pytest.mark.slow
def test_a_stuck_collective_cannot_hold_the_exit_past_the_deadline(tmp_path: Path, processes: list[_Process]) -> None:
    # Worker 1 is frozen (SIGSTOP): worker 0's next collective never completes, and its main thread never
    # returns to Python. The deadline thread still ends it with exit 4 (grace 6 s: deadline 3 s).
    write_folder(tmp_path / "images", classes=2, per_class=40, size=8)
    configs = [json.dumps(c) for c in local_tf_configs(free_ports(2))]
    command = [*SEARCH[:-1], "6"]
    procs = [_Process(command, tmp_path / f"worker{rank}.log", cwd=tmp_path, env=_env(TF_CONFIG=config), pid1=False)
             for rank, config in enumerate(configs)]
    processes.extend(procs)
    procs[0].wait_for("Epoch 2/")
    os.kill(procs[1].process.pid, signal.SIGSTOP)
    signalled = time.monotonic()
    os.kill(procs[0].process.pid, signal.SIGTERM)
    (code,) = _wait_all(procs[:1], timeout=30)
    took = time.monotonic() - signalled
    assert code == errors.EXIT_PEER_LOST, procs[0].text()[-3000:]
    assert took < 6, f"took {took:.1f}s with --termination-grace-seconds 6"
    assert "a collective may be stuck" in procs[0].text()


@pytest.mark.slow
def test_the_oracle_as_pid1_exits_4_promptly(tmp_path: Path, processes: list[_Process]) -> None:
    _require_pid_namespaces()
    write_folder(tmp_path / "images", classes=2, per_class=10, size=8)
    env = _env(TFSTACK_ROLE="oracle", TFSTACK_GROUPS="2", TFSTACK_ORACLE=f"127.0.0.1:{free_ports(1)[0]}")
    oracle = _Process(SEARCH, tmp_path / "oracle.log", cwd=tmp_path, env=env, pid1=True)
    processes.append(oracle)
    oracle.wait_for("oracle serving trials")
    signalled = time.monotonic()
    os.kill(oracle.target(), signal.SIGTERM)
    (code,) = _wait_all([oracle], timeout=30)
    assert code == errors.EXIT_PEER_LOST, oracle.text()[-3000:]
    assert time.monotonic() - signalled < 10
    assert "Received SIGTERM (stopped before training)" in oracle.text()


@pytest.mark.slow
def test_sigterm_to_the_launcher_reaches_every_worker_and_exits_4(tmp_path: Path, processes: list[_Process]) -> None:
    script = (
        "import os, sys, logging; logging.basicConfig(level=logging.INFO)\n"
        "from trainer.launch import launch\n"
        f"sys.exit(launch(['block', {str(tmp_path)!r}], workers=2, env=dict(os.environ), module={CHILD!r},"
        " termination_grace=10))\n"
    )
    launcher = _Process([sys.executable, "-c", script], tmp_path / "launcher.log", cwd=ROOT, env=_env(), pid1=False)
    processes.append(launcher)
    launcher.wait_for("[worker 0] ready")
    launcher.wait_for("[worker 1] ready")
    signalled = time.monotonic()
    launcher.process.send_signal(signal.SIGTERM)
    (code,) = _wait_all([launcher], timeout=30)
    assert code == errors.EXIT_PEER_LOST, launcher.text()[-3000:]
    assert time.monotonic() - signalled < 10
    assert "SIGTERM: passing it on to every process" in launcher.text()
    for rank in range(2):
        pid = int((tmp_path / f"pid{rank}").read_text())
        assert not _alive(pid), f"worker {rank} outlived the launcher"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()



@pytest.mark.slow
def test_hyperband_sigtermed_mid_search_resumes_in_a_rerun_of_two_workers(
    tmp_path: Path, processes: list[_Process]
) -> None:
    """Hyperband's continuing trials load an earlier trial's checkpoint on every worker: stop the group once
    the first round is done (SIGTERM to the launcher, passed on), run the same command again."""
    write_folder(tmp_path / "images", classes=2, per_class=12, size=8)
    command = [sys.executable, "-m", "trainer", "launch", "--workers", "2", "--termination-grace-seconds", "30", "--",
               "search", "--data", "images", "--model-name", "toy", "--run-dir", "runs", "--export-base", "models",
               "--backbone", "small_cnn", "--weights", "none", "--image-size", "8", "--tuner", "hyperband",
               "--epochs", "3", "--batch-size", "4", "--patience", "5", "--publish", "always"]
    first = _Process(command, tmp_path / "first.log", cwd=tmp_path, env=_env(), pid1=False)
    processes.append(first)
    deadline = time.monotonic() + 600
    while first.text().count(" COMPLETED: ") < 2 * 3:  # both workers logged the first round's three trials
        assert first.process.poll() is None and time.monotonic() < deadline, first.text()[-3000:]
        time.sleep(0.1)  # polling the launcher's output for the first round's three trials
    first.process.send_signal(signal.SIGTERM)
    (code,) = _wait_all([first], timeout=30)
    assert code == errors.EXIT_PEER_LOST, first.text()[-3000:]
    done_before = _completed(first.text())

    again = _Process(command, tmp_path / "again.log", cwd=tmp_path, env=_env(), pid1=False)
    processes.append(again)
    (code,) = _wait_all([again], timeout=600)
    assert code == 0, again.text()[-4000:]
    assert f"{len(done_before)} trials already completed" in again.text()
    trials = {}
    for path in (tmp_path / "runs" / "toy" / "tuner").glob("*/trial_*/trial.json"):
        record = json.loads(path.read_text())
        trials[record["trial_id"]] = record
    statuses = {trial_id: t["status"] for trial_id, t in trials.items()}
    assert statuses and set(statuses.values()) == {"COMPLETED"}, statuses
    continuing = [t for t in trials.values() if t["hyperparameters"]["values"].get("tuner/trial_id")]
    assert continuing, "no Hyperband trial continued an earlier one"
    rerun = _completed(again.text())
    assert not set(rerun) & set(done_before), "a trial completed before the SIGTERM ran again"
    assert sorted(set(rerun) | set(done_before)) == sorted(trials), "every trial completed exactly once"
    for trial in rerun:  # both workers of the group ended each rerun trial with the same weights
        digests = {line.split(" weights: ")[1] for line in again.text().splitlines()
                   if f"trial {trial} weights: " in line}
        assert len(digests) == 1, (trial, digests)
    assert sorted(p.name for p in (tmp_path / "models" / "toy").iterdir()) == ["1"]


def _completed(text: str) -> list[str]:
    """Trial ids the chief logged as COMPLETED."""
    return [line.split(" trial ")[1].split()[0] for line in text.splitlines()
            if line.startswith("[worker 0]") and " COMPLETED: " in line]
