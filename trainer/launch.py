"""The local launcher: N worker processes on one machine, wired by TF_CONFIG on loopback ports.

``python -m trainer launch --workers 2 -- search ...`` calls `launch`, which starts one
``python -m trainer search ...`` per worker. The launcher talks to its workers only through their
environment (as accelerate's launcher builds ``(cmd, env)``): each gets ``TF_CONFIG`` from
`trainer.cluster.local_tf_configs`, ``cluster: {"worker": [...]}`` with worker 0 the chief.

- Output: every line a worker writes is echoed with a ``[worker N]`` prefix, stdout to stdout and
  stderr to stderr.
- Failure: when a worker exits non-zero, the others get SIGTERM, then SIGKILL after `grace_period`
  seconds; `launch` logs which worker failed with its last error line.
- Restarts follow the trainer's exit-code contract (`trainer.errors`, docs/distributed.md): after
  exit code 4 (a peer was lost or the group could not form) or a crash (1, a signal, anything
  else), ``max_restarts=n`` restarts the *whole group* together, up to n times, on fresh ports:
  MultiWorkerMirroredStrategy cannot take one restarted worker back into a running group. The trial
  then resumes from the chief's epoch backup. Exit codes 2 (bad input: do not retry) and 3 (not
  published) are final: everyone is stopped and `launch` returns that code.
- Signals: Ctrl-C or SIGTERM to the launcher stops every worker and returns 130. The reader
  threads block SIGINT and SIGTERM, so the kernel delivers them to the main thread, which waits
  for worker events with a timeout and so runs Python signal handlers promptly wherever it is.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from trainer.cluster import local_tf_configs
from trainer.errors import EXIT_BAD_INPUT, EXIT_NOT_PUBLISHED, ConfigError

__all__ = ["free_ports", "launch", "worker_command"]

log = logging.getLogger(__name__)

_TAIL_LINES = 20
_FINAL_CODES = frozenset({0, EXIT_BAD_INPUT, EXIT_NOT_PUBLISHED})  # never restarted
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


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


def _start_thread(target: Callable[..., None], *args: object) -> None:
    """Start a daemon thread with SIGINT and SIGTERM blocked, so the kernel never delivers them to it.

    A thread inherits its creator's signal mask; blocking around ``start()`` closes the window in
    which the new thread could take a signal before it could block it itself.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        threading.Thread(target=target, args=args, daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Group:
    """One attempt: every worker started together; their exits arrive on `events`."""

    def __init__(self, workers: list[_Worker], *, cwd: str | None, out: IO[str], err: IO[str]) -> None:
        self.workers = workers
        self.cwd = cwd
        self.out = out
        self.err = err
        self.lock = threading.Lock()
        self.events: queue.Queue[tuple[int, int]] = queue.Queue()

    def start(self) -> None:
        for worker in self.workers:
            worker.process = subprocess.Popen(
                worker.cmd, env=worker.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
            log.info("started worker %d (pid %d): %s", worker.rank, worker.process.pid, " ".join(worker.cmd))
            _start_thread(self._watch, worker, worker.process)

    def _watch(self, worker: _Worker, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None and process.stderr is not None
        stderr_reader = threading.Thread(target=self._pump, args=(process.stderr, self.err, worker.rank, worker.tail),
                                         daemon=True)  # inherits this thread's blocked signals
        stderr_reader.start()
        self._pump(process.stdout, self.out, worker.rank, worker.stdout_tail)
        code = process.wait()
        stderr_reader.join(timeout=5)
        self.events.put((worker.rank, code))

    def _pump(self, pipe: IO[bytes], stream: IO[str], rank: int, tail: deque[str]) -> None:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line)
            with self.lock:
                stream.write(f"[worker {rank}] {line}\n")
                stream.flush()
        pipe.close()

    def wait(self) -> tuple[int, int] | None:
        """The first failure ``(rank, exit status)``, or None when every worker exited 0."""
        done = 0
        while done < len(self.workers):
            try:
                # A timeout, so the main thread returns to the interpreter and runs signal handlers.
                rank, code = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if code != 0:
                return rank, _exit_status(code)
            log.info("worker %d finished", rank)
            done += 1
        return None

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


def _new_group(argv: Sequence[str], workers: int, *, env: Mapping[str, str], python: str, module: str, host: str,
               cwd: str | None, out: IO[str], err: IO[str]) -> _Group:
    """Workers on fresh ports (a restarted group must not meet its predecessor's sockets)."""
    configs = local_tf_configs(free_ports(workers, host), host)
    pool = []
    for rank, tf_config in enumerate(configs):
        cmd, child_env = worker_command(argv, tf_config=tf_config, python=python, env=env, module=module)
        pool.append(_Worker(rank, cmd, child_env))
    log.info("launching %d workers on %s: %s", workers, host, ", ".join(configs[0]["cluster"]["worker"]))
    return _Group(pool, cwd=cwd, out=out, err=err)


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
        max_restarts: how many times the whole group may be restarted after a worker exits with 4
            (peer lost) or crashes; exit codes 2 and 3 are never retried.
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
    restarts = 0
    with _sigterm_raises():
        while True:
            group = _new_group(argv, workers, env=env, python=python, module=module, host=host, cwd=cwd,
                               out=stdout or sys.stdout, err=stderr or sys.stderr)
            try:
                group.start()
                failure = group.wait()
                if failure is None:
                    log.info("all %d workers finished", workers)
                    return 0
                rank, status = failure
                line = group.workers[rank].last_error_line()
                if status in _FINAL_CODES or restarts >= max_restarts:
                    log.error("worker %d failed with exit status %d: %s", rank, status, line)
                    group.stop(grace_period, reason=f"worker {rank} failed")
                    return status
                restarts += 1
                log.warning("worker %d exited with status %d: %s; restarting the whole group (%d of %d)", rank,
                            status, line, restarts, max_restarts)
                group.stop(grace_period, reason="restarting the group")
            except (KeyboardInterrupt, _Stop):
                log.warning("interrupted")
                group.stop(grace_period, reason="interrupted")
                return 130
            finally:
                group.stop(grace_period, reason="launcher exiting")
