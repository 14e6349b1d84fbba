"""The local launcher: N worker processes on one machine, wired by TF_CONFIG on loopback ports.

``python -m trainer launch --workers 2 -- search ...`` calls `launch`, which starts one
``python -m trainer search ...`` per worker. The launcher talks to its workers only through their
environment (as accelerate's launcher builds ``(cmd, env)``): each gets ``TF_CONFIG`` from
`trainer.cluster.local_tf_configs`, ``cluster: {"worker": [...]}`` with worker 0 the chief.

Parallel trials, ``launch --groups G --workers W``: G groups of W workers (each group its own
TF_CONFIG, ``TFSTACK_GROUP=g``) and one oracle process (``TFSTACK_ROLE=oracle``) that hands out the
trials and publishes the best model (`trainer.trials`, `trainer.cluster`). ``--groups 1`` is the
plain launch above, with no oracle.

- Threads: every training process gets ``TF_NUM_INTRAOP_THREADS`` and ``TF_NUM_INTEROP_THREADS`` =
  the machine's cores / the processes that train at once (G x W, at least 1) when there are several, so
  that they take a core each instead of all fighting over all of them with TensorFlow's default pools
  (one thread per core each). A variable already in the environment wins; ``threads_per_worker`` sets
  another count, 0 leaves TensorFlow's defaults. The oracle keeps the defaults: it trains nothing, and
  it evaluates and exports alone once the groups are done.
- Output: every line a worker writes is echoed with a ``[worker N]`` prefix (``[group G worker N]``,
  ``[oracle]`` with groups), stdout to stdout and stderr to stderr.
- Failure: when a worker exits non-zero, the others get SIGTERM, then SIGKILL after `grace_period`
  seconds; `launch` logs which worker failed with its last error line.
- Restarts follow the trainer's exit-code contract (`trainer.errors`, docs/distributed.md): after
  exit code 4 (a peer was lost or the group could not form) or a crash (1, a signal, anything
  else), ``max_restarts=n`` restarts the *whole group* together, up to n times in all, on fresh
  ports: MultiWorkerMirroredStrategy cannot take one restarted worker back into a running group. The
  trial then resumes from the chief's epoch backup. With several groups only the failed group is
  restarted (the oracle gives it its trial back); a failed oracle restarts everything (it reloads
  its state and hands the running trials out again). Exit codes 2 (bad input: do not retry) and 3 (not
  published) are final: everyone is stopped and `launch` returns that code.
- Signals: SIGTERM to the launcher (a preemption) is passed on to every process, which saves and exits
  4 (`trainer.preemption`); the launcher waits for them up to the termination grace period less 4 s
  (then SIGKILL) and returns 4: run the same command again to resume. Ctrl-C stops every worker the
  same way and returns 130. The reader
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

from trainer import preemption
from trainer.cluster import GROUP_VARIABLES, local_tf_configs
from trainer.errors import EXIT_BAD_INPUT, EXIT_NOT_PUBLISHED, EXIT_PEER_LOST, ConfigError

__all__ = ["TF_THREAD_VARIABLES", "free_ports", "launch", "thread_env", "worker_command"]

log = logging.getLogger(__name__)

_TAIL_LINES = 20
_FINAL_CODES = frozenset({0, EXIT_BAD_INPUT, EXIT_NOT_PUBLISHED})  # never restarted
_SIGNALS = {signal.SIGINT, signal.SIGTERM}
TF_THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
"""TensorFlow's intra-op and inter-op pool sizes, read from the environment at start-up
(tensorflow/core/common_runtime/process_util.cc); 0 or unset: one thread per core each."""


def thread_env(env: Mapping[str, str], *, processes: int, cores: int,
               threads_per_worker: int | None = None) -> dict[str, str]:
    """The TF_THREAD_VARIABLES to add for each of `processes` training processes that share `cores`.

    None (auto): ``cores // processes`` threads (at least 1) when several processes train at once, none
    for one. 0: none (TensorFlow's defaults). A variable already in `env` is never replaced.
    """
    if threads_per_worker is None:
        threads_per_worker = max(1, cores // processes) if processes > 1 else 0
    if threads_per_worker <= 0:
        return {}
    return {name: str(threads_per_worker) for name in TF_THREAD_VARIABLES if not env.get(name, "").strip()}


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
    argv: Sequence[str], *, tf_config: Mapping[str, object] | None, python: str, env: Mapping[str, str], module: str,
    placement: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The ``(cmd, env)`` of one process: ``python -m module argv...`` with its own TF_CONFIG (None: none).

    `placement`: the group variables (`trainer.cluster.GROUP_VARIABLES`) this process gets; those of the
    launcher's own environment are never passed on.
    """
    child_env = {name: value for name, value in env.items() if name != "TF_CONFIG" and name not in GROUP_VARIABLES}
    if tf_config is not None:
        child_env["TF_CONFIG"] = json.dumps(tf_config)
    child_env.update(placement or {})
    child_env["PYTHONUNBUFFERED"] = "1"
    return [python, "-m", module, *argv], child_env


@dataclass
class _Worker:
    rank: int
    label: str
    """The prefix of its output lines: ``worker 1``, ``group 0 worker 1``, ``oracle``."""
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


_ORACLE = -1
"""The key of the oracle in `_Launch.running` (groups are 0..G-1)."""


class _Group:
    """One attempt of what restarts together (a group's workers, or the oracle); exits go to `events`."""

    def __init__(self, key: int, workers: list[_Worker], *, events: queue.Queue[tuple[_Group, int, int]],
                 lock: threading.Lock, cwd: str | None, out: IO[str], err: IO[str]) -> None:
        self.key = key
        self.workers = workers
        self.events = events
        self.lock = lock  # one per launch: lines from different processes never interleave
        self.cwd = cwd
        self.out = out
        self.err = err
        self.finished = 0

    def start(self) -> None:
        for worker in self.workers:
            worker.process = subprocess.Popen(
                worker.cmd, env=worker.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
            log.info("started %s (pid %d): %s", worker.label, worker.process.pid, " ".join(worker.cmd))
            _start_thread(self._watch, worker, worker.process)

    def _watch(self, worker: _Worker, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None and process.stderr is not None
        stderr_reader = threading.Thread(target=self._pump, args=(process.stderr, self.err, worker.label, worker.tail),
                                         daemon=True)  # inherits this thread's blocked signals
        stderr_reader.start()
        self._pump(process.stdout, self.out, worker.label, worker.stdout_tail)
        code = process.wait()
        stderr_reader.join(timeout=5)
        self.events.put((self, worker.rank, code))

    def _pump(self, pipe: IO[bytes], stream: IO[str], label: str, tail: deque[str]) -> None:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line)
            with self.lock:
                stream.write(f"[{label}] {line}\n")
                stream.flush()
        pipe.close()

    def stop(self, grace_period: float, *, reason: str) -> None:
        live = [w for w in self.workers if w.process is not None and w.process.poll() is None]
        if not live:
            return
        log.warning("stopping %s (%s)", ", ".join(w.label for w in live), reason)
        for worker in live:
            _signal_group(worker.process, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + grace_period
        for worker in live:
            assert worker.process is not None
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs: SIGKILL", worker.label, grace_period)
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


class _Launch:
    """The processes of one launch: G groups of W workers, and the oracle when G > 1."""

    def __init__(self, argv: Sequence[str], *, workers: int, groups: int, env: Mapping[str, str], python: str,
                 module: str, host: str, cwd: str | None, out: IO[str], err: IO[str],
                 threads: Mapping[str, str]) -> None:
        self.argv, self.workers, self.groups, self.env, self.threads = argv, workers, groups, env, threads
        self.python, self.module, self.host, self.cwd, self.out, self.err = python, module, host, cwd, out, err
        self.events: queue.Queue[tuple[_Group, int, int]] = queue.Queue()
        self.lock = threading.Lock()
        self.running: dict[int, _Group] = {}
        self.oracle = ""

    def start_all(self) -> None:
        """Every process on fresh ports (a restarted oracle must not meet its predecessor's clients)."""
        if self.groups > 1:
            self.oracle = f"{self.host}:{free_ports(1, self.host)[0]}"
            self.start(_ORACLE)
        for group in range(self.groups):
            self.start(group)

    def start(self, key: int) -> None:
        """Start the oracle or group `key` (replacing its previous attempt)."""
        if key == _ORACLE:
            placement = {"TFSTACK_ROLE": "oracle", "TFSTACK_GROUPS": str(self.groups), "TFSTACK_ORACLE": self.oracle}
            cmd, env = worker_command(self.argv, tf_config=None, python=self.python, env=self.env,
                                      module=self.module, placement=placement)
            pool = [_Worker(0, "oracle", cmd, env)]
            log.info("launching the oracle of %d groups on %s", self.groups, self.oracle)
        else:
            configs = local_tf_configs(free_ports(self.workers, self.host), self.host)
            placement = ({"TFSTACK_GROUPS": str(self.groups), "TFSTACK_GROUP": str(key), "TFSTACK_ORACLE": self.oracle}
                         if self.groups > 1 else {})
            placement = {**placement, **self.threads}
            prefix = f"group {key} " if self.groups > 1 else ""
            pool = []
            for rank, tf_config in enumerate(configs):
                cmd, env = worker_command(self.argv, tf_config=tf_config, python=self.python, env=self.env,
                                          module=self.module, placement=placement)
                pool.append(_Worker(rank, f"{prefix}worker {rank}", cmd, env))
            log.info("launching %s%d workers on %s: %s", prefix, self.workers, self.host,
                     ", ".join(configs[0]["cluster"]["worker"]))
        group = _Group(key, pool, events=self.events, lock=self.lock, cwd=self.cwd, out=self.out, err=self.err)
        self.running[key] = group
        group.start()

    def stop_all(self, grace_period: float, *, reason: str) -> None:
        for group in self.running.values():
            group.stop(grace_period, reason=reason)

    def next_exit(self) -> tuple[_Group, int, int]:
        """The next exit ``(group, rank, exit status)`` of a current attempt (not of a stopped one)."""
        while True:
            try:
                # A timeout, so the main thread returns to the interpreter and runs signal handlers.
                group, rank, code = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if self.running.get(group.key) is group:
                return group, rank, _exit_status(code)


def launch(
    argv: Sequence[str],
    *,
    workers: int,
    env: Mapping[str, str],
    groups: int = 1,
    python: str = sys.executable,
    module: str = "trainer",
    max_restarts: int = 0,
    grace_period: float = 10.0,
    host: str = "127.0.0.1",
    cwd: str | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    termination_grace: float | None = None,
    threads_per_worker: int | None = None,
    cores: int | None = None,
) -> int:
    """Run ``python -m <module> <argv...>`` as `groups` x `workers` local processes (+ an oracle); 0 when all succeed.

    Args:
        argv: the command for each worker, e.g. ``["search", "--max-trials", "2"]``.
        workers: how many worker processes per group (worker 0 of each group is its chief).
        env: the base environment of every worker (the caller passes ``os.environ``); TF_CONFIG and the
            group variables are replaced by each process's own.
        groups: how many groups train trials in parallel; above 1 an oracle process hands out the trials.
        python, module: the interpreter and module each worker runs.
        max_restarts: how many restarts in all (of a group, or of everything when the oracle fails) after an
            exit with 4 (peer lost) or a crash; exit codes 2 and 3 are never retried.
        grace_period: seconds between SIGTERM and SIGKILL when stopping workers.
        host: loopback address the workers listen on.
        cwd: working directory of the workers (default: this process's).
        stdout, stderr: where prefixed worker output goes (default: this process's).
        termination_grace: seconds between a SIGTERM to the launcher and its SIGKILL (default:
            ``TFSTACK_TERMINATION_GRACE_SECONDS`` in `env`, else 30); the children, which get it in their
            environment, save and exit within it.
        threads_per_worker: TensorFlow intra-op and inter-op threads of each training process (`thread_env`):
            None = cores / (groups x workers) when that is more than one process, 0 = TensorFlow's defaults.
        cores: the cores they share (default: the CPUs this process may run on).

    Returns:
        0 when every process exited 0; else the failed process's exit status (128 + N when killed by
        signal N), 4 after SIGTERM (preempted: rerun to resume), or 130 after Ctrl-C.
    """
    if workers < 1:
        raise ConfigError(f"Expected workers >= 1. Received: workers={workers}")
    if groups < 1:
        raise ConfigError(f"Expected groups >= 1. Received: groups={groups}")
    if max_restarts < 0:
        raise ConfigError(f"Expected max_restarts >= 0. Received: max_restarts={max_restarts}")
    if termination_grace is None:
        termination_grace = preemption.grace_from_env(dict(env))
    elif termination_grace <= 0:
        raise ConfigError(f"Expected termination_grace > 0. Received: termination_grace={termination_grace}")
    if threads_per_worker is not None and threads_per_worker < 0:
        raise ConfigError(f"Expected threads_per_worker >= 0. Received: threads_per_worker={threads_per_worker}")
    env = {**env, preemption.GRACE_ENV: f"{termination_grace:g}"}
    cores = cores or len(os.sched_getaffinity(0))
    threads = thread_env(env, processes=groups * workers, cores=cores, threads_per_worker=threads_per_worker)
    if threads:
        log.info("TensorFlow threads per training process: %s (%d cores, %d processes training at once)",
                 ", ".join(f"{k}={v}" for k, v in threads.items()), cores, groups * workers)
    run = _Launch(argv, workers=workers, groups=groups, env=env, python=python, module=module, host=host, cwd=cwd,
                  out=stdout or sys.stdout, err=stderr or sys.stderr, threads=threads)
    restarts = 0
    with _sigterm_raises():
        try:
            run.start_all()
            while True:
                group, rank, status = run.next_exit()
                worker = group.workers[rank]
                if status == 0:
                    log.info("%s finished", worker.label)
                    group.finished += 1
                    if all(g.finished == len(g.workers) for g in run.running.values()):
                        log.info("all %d processes finished", sum(len(g.workers) for g in run.running.values()))
                        return 0
                    continue
                line = worker.last_error_line()
                if status in _FINAL_CODES or restarts >= max_restarts:
                    log.error("%s failed with exit status %d: %s", worker.label, status, line)
                    run.stop_all(grace_period, reason=f"{worker.label} failed")
                    return status
                restarts += 1
                if group.key == _ORACLE or groups == 1:
                    log.warning("%s exited with status %d: %s; restarting %s (%d of %d)", worker.label, status, line,
                                "everything" if groups > 1 else "the whole group", restarts, max_restarts)
                    run.stop_all(grace_period, reason="restarting everything" if groups > 1 else "restarting the group")
                    run.start_all()
                else:
                    log.warning("%s exited with status %d: %s; restarting group %d (%d of %d)", worker.label, status,
                                line, group.key, restarts, max_restarts)
                    group.stop(grace_period, reason=f"restarting group {group.key}")
                    run.start(group.key)
        except _Stop:
            # Preempted: the children got SIGTERM too, save at one step and exit 4 within their deadline.
            log.warning("SIGTERM: passing it on to every process")
            run.stop_all(max(1.0, termination_grace - 4.0), reason="SIGTERM")
            return EXIT_PEER_LOST
        except KeyboardInterrupt:
            log.warning("interrupted")
            run.stop_all(grace_period, reason="interrupted")
            return 130
        finally:
            run.stop_all(grace_period, reason="launcher exiting")
