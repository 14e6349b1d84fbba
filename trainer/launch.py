"""The local launcher: N worker processes on one machine, wired by TF_CONFIG on loopback ports.

``python -m trainer launch --workers 2 -- search ...`` calls `launch`, which starts one
``python -m trainer search ...`` per worker. The launcher talks to its workers only through their
environment (as accelerate's launcher builds ``(cmd, env)``): each gets ``TF_CONFIG`` from
`trainer.cluster.local_tf_configs`, ``cluster: {"worker": [...]}`` with worker 0 the chief.

- Output: every line a worker writes is echoed with a ``[worker N]`` prefix, stdout to stdout and
  stderr to stderr.
- Failure: when a worker exits non-zero (and has no restarts left) the others get SIGTERM, then
  SIGKILL after `grace_period` seconds; `launch` logs which worker failed with its last error line
  and returns its exit status. Ctrl-C (or SIGTERM to the launcher) stops every worker the same way.
- Restarts: ``max_restarts=n`` restarts a dead worker up to n times with the same TF_CONFIG, as
  Kubernetes restarts a pod of an Indexed Job. Under MultiWorkerMirroredStrategy the surviving
  workers' collectives fail once a peer dies, so they exit and are restarted as well; the trial then
  resumes from the last epoch backup (`trainer.distribute.backup_and_restore`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from trainer.cluster import local_tf_configs
from trainer.errors import ConfigError

__all__ = ["free_ports", "launch", "worker_command"]

log = logging.getLogger(__name__)

_TAIL_LINES = 20


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free on `host` a moment ago (the OS picks them)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def worker_command(
    argv: Sequence[str], *, tf_config: Mapping[str, object], python: str, env: Mapping[str, str], module: str
) -> tuple[list[str], dict[str, str]]:
    """The ``(cmd, env)`` of one worker: ``python -m module argv...`` with its own TF_CONFIG."""
    child_env = {name: value for name, value in env.items() if name != "TF_CONFIG"}
    child_env["TF_CONFIG"] = json.dumps(tf_config)
    child_env["PYTHONUNBUFFERED"] = "1"
    return [python, "-m", module, *argv], child_env


@dataclass
class _Worker:
    rank: int
    cmd: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0
    restarts: int = 0
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    stdout_tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))

    def last_error_line(self) -> str:
        for lines in (self.tail, self.stdout_tail):
            for line in reversed(lines):
                if line.strip():
                    return line.strip()
        return "(no output)"


class _Stop(Exception):
    """The launcher itself was asked to stop (SIGTERM)."""


class _Launcher:
    def __init__(self, workers: list[_Worker], *, cwd: str | None, out: IO[str], err: IO[str]) -> None:
        self.workers = workers
        self.cwd = cwd
        self.out = out
        self.err = err
        self.lock = threading.Lock()
        self.events: queue.Queue[tuple[int, int, int]] = queue.Queue()

    def start(self, worker: _Worker) -> None:
        worker.generation += 1
        worker.process = subprocess.Popen(
            worker.cmd, env=worker.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        log.info("started worker %d (pid %d): %s", worker.rank, worker.process.pid, " ".join(worker.cmd))
        assert worker.process.stdout is not None and worker.process.stderr is not None
        readers = [
            threading.Thread(target=self._pump, args=(worker.process.stdout, self.out, worker.rank, worker.stdout_tail),
                             daemon=True),
            threading.Thread(target=self._pump, args=(worker.process.stderr, self.err, worker.rank, worker.tail),
                             daemon=True),
        ]
        for reader in readers:
            reader.start()
        threading.Thread(target=self._wait, args=(worker, worker.process, worker.generation, readers),
                         daemon=True).start()

    def _pump(self, pipe: IO[bytes], stream: IO[str], rank: int, tail: deque[str]) -> None:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line)
            with self.lock:
                stream.write(f"[worker {rank}] {line}\n")
                stream.flush()
        pipe.close()

    def _wait(self, worker: _Worker, process: subprocess.Popen[bytes], generation: int,
              readers: list[threading.Thread]) -> None:
        code = process.wait()
        for reader in readers:
            reader.join(timeout=5)
        self.events.put((worker.rank, generation, code))

    def stop(self, grace_period: float, *, reason: str) -> None:
        live = [w for w in self.workers if w.process is not None and w.process.poll() is None]
        if not live:
            return
        log.warning("stopping %s (%s)", ", ".join(f"worker {w.rank}" for w in live), reason)
        for worker in live:
            _signal_group(worker.process, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + grace_period
        for worker in live:
            assert worker.process is not None
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop within %.0fs: SIGKILL", worker.rank, grace_period)
                _signal_group(worker.process, signal.SIGKILL)
                worker.process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM to the launcher into `_Stop` (only possible from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N -> 128 + N, as a shell reports it


def launch(
    argv: Sequence[str],
    *,
    workers: int,
    env: Mapping[str, str],
    python: str = sys.executable,
    module: str = "trainer",
    max_restarts: int = 0,
    grace_period: float = 10.0,
    host: str = "127.0.0.1",
    cwd: str | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run ``python -m <module> <argv...>`` as `workers` local processes; return 0 when all succeed.

    Args:
        argv: the command for each worker, e.g. ``["search", "--max-trials", "2"]``.
        workers: how many worker processes (worker 0 is the chief).
        env: the base environment of every worker (the caller passes ``os.environ``); TF_CONFIG is
            replaced by each worker's own.
        python, module: the interpreter and module each worker runs.
        max_restarts: how many times each worker may be restarted after a non-zero exit.
        grace_period: seconds between SIGTERM and SIGKILL when stopping workers.
        host: loopback address the workers listen on.
        cwd: working directory of the workers (default: this process's).
        stdout, stderr: where prefixed worker output goes (default: this process's).

    Returns:
        0 when every worker exited 0; else the failed worker's exit status (128 + N when killed by
        signal N), or 130 when interrupted.
    """
    if workers < 1:
        raise ConfigError(f"Expected workers >= 1. Received: workers={workers}")
    if max_restarts < 0:
        raise ConfigError(f"Expected max_restarts >= 0. Received: max_restarts={max_restarts}")
    configs = local_tf_configs(free_ports(workers, host), host)
    pool = []
    for rank, tf_config in enumerate(configs):
        cmd, child_env = worker_command(argv, tf_config=tf_config, python=python, env=env, module=module)
        pool.append(_Worker(rank, cmd, child_env))
    launcher = _Launcher(pool, cwd=cwd, out=stdout or sys.stdout, err=stderr or sys.stderr)
    log.info("launching %d workers on %s: %s", workers, host,
             ", ".join(tf_config["cluster"]["worker"][rank] for rank, tf_config in enumerate(configs)))
    done: set[int] = set()
    with _sigterm_raises():
        try:
            for worker in pool:
                launcher.start(worker)
            while len(done) < workers:
                rank, generation, code = launcher.events.get()
                worker = pool[rank]
                if generation != worker.generation:
                    continue
                if code == 0:
                    log.info("worker %d finished", rank)
                    done.add(rank)
                    continue
                if worker.restarts < max_restarts:
                    worker.restarts += 1
                    log.warning("worker %d exited with status %d: %s; restarting it (%d of %d)", rank,
                                _exit_status(code), worker.last_error_line(), worker.restarts, max_restarts)
                    launcher.start(worker)
                    continue
                status = _exit_status(code)
                log.error("worker %d failed with exit status %d: %s", rank, status, worker.last_error_line())
                launcher.stop(grace_period, reason=f"worker {rank} failed")
                return status or 1
        except (KeyboardInterrupt, _Stop):
            log.warning("interrupted")
            launcher.stop(grace_period, reason="interrupted")
            return 130
        finally:
            launcher.stop(grace_period, reason="launcher exiting")
    log.info("all %d workers finished", workers)
    return 0
