"""SIGTERM in every role: a save at one step agreed by every worker, then exit 4 within the grace period.

What Kubernetes sends on a drain, a preemption or a JobSet restart is SIGTERM, then SIGKILL after
``terminationGracePeriodSeconds``. Three facts shape this module (docs/distributed.md, "Preemption"):

- A process that is PID 1 of its PID namespace (a container without an init) and has no handler
  *ignores* SIGTERM: the kernel drops it. So `install` sets a handler explicitly, first thing.
- Once a ``tf.distribute`` multi-worker strategy exists, TensorFlow's C++ preemption notifier has
  taken SIGTERM over (it only records the signal); `install` is called again right after the
  strategy is made (`trainer.distribute.make_strategy`), which puts this handler back.
- A worker that got the signal cannot just stop: its peers would wait in the next collective. Every
  worker calls `agreed` at every training batch end (`trainer.backup`'s callback): one all-reduce of
  "did anyone get SIGTERM?", so all of them see the answer at the same step, the chief saves the
  trial's backup at that step and every worker exits with `EXIT_PEER_LOST` (4: "restart the group";
  the rerun resumes at the saved step). This is the guarantee of TensorFlow's
  ``tf.distribute.experimental.PreemptionCheckpointHandler`` (failure_handling.py: one step agreed
  through the coordination service, then ``exit_fn``), built for Keras 3 ``fit``, which offers that
  handler no per-step ``run`` hook, and for the trial's phase-aware backup instead of a
  ``tf.train.Checkpoint`` of its own.

Outside training (scanning data, forming the group, between trials, the oracle serving trials) there
is nothing to save: the handler raises `Preempted` (exit 4) in the main thread. In every case the
first SIGTERM starts a deadline thread that ends the process with ``os._exit(4)`` after
`deadline_seconds` (the grace period less a margin for the kubelet's SIGKILL), even when the main
thread is stuck inside a collective whose peer is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from trainer.errors import EXIT_PEER_LOST, ConfigError, PeerLostError

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "GRACE_ENV",
    "Preempted",
    "agreed",
    "deadline_seconds",
    "grace_from_env",
    "install",
    "preempted",
    "reinstall",
    "requested",
    "reset",
    "training",
]

log = logging.getLogger(__name__)

GRACE_ENV = "TFSTACK_TERMINATION_GRACE_SECONDS"
"""Seconds between SIGTERM and SIGKILL: the chart's ``terminationGracePeriodSeconds`` (the same value)."""
DEFAULT_GRACE_SECONDS = 30.0  # Kubernetes' default terminationGracePeriodSeconds


class Preempted(PeerLostError):
    """SIGTERM: what could be saved was saved; run the same command(s) again to resume (exit 4)."""


class _State:
    def __init__(self) -> None:
        self.requested = threading.Event()
        self.grace = DEFAULT_GRACE_SECONDS
        self.training = 0  # > 0 while a fit runs: the batch-end check saves and raises, not the handler
        self.installed = False
        self.cancel = threading.Event()  # ends a pending deadline (tests, via `reset`)
        self.deadline_started = False
        self.lock = threading.Lock()
        self.wakeup_fd: int | None = None  # the write end of the pipe `_watch` reads
        self.flushed = threading.Event()  # set by `_watch` when it reads `_FLUSH` (see `reset`)


_state = _State()
_FLUSH = 0  # a byte no signal number takes: `reset` writes it to the wakeup pipe and waits for `_watch` to read it


def deadline_seconds(grace: float) -> float:
    """How long after SIGTERM the process may take before ``os._exit``: the grace less a margin (5 s, or half)."""
    return max(grace / 2, grace - 5.0)


def grace_from_env(env: dict[str, str] | os._Environ[str] | None = None) -> float:
    """`GRACE_ENV` from the environment (default 30 s), for processes that do not read a SearchConfig."""
    text = (os.environ if env is None else env).get(GRACE_ENV, "")
    if not text:
        return DEFAULT_GRACE_SECONDS
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"Expected {GRACE_ENV} to be a number of seconds. Received: {text!r}") from None
    if not value > 0:
        raise ConfigError(f"Expected {GRACE_ENV} > 0. Received: {text!r}")
    return value


def install(grace: float | None = None) -> None:
    """Handle SIGTERM in this process (main thread only); call again after creating an MWMS strategy."""
    if grace is not None:
        _state.grace = grace
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        _state.installed = True
        if _state.wakeup_fd is None:
            read_fd, _state.wakeup_fd = os.pipe()
            os.set_blocking(_state.wakeup_fd, False)
            threading.Thread(target=_watch, args=(read_fd,), name="tfstack-sigterm-watch", daemon=True).start()
        signal.set_wakeup_fd(_state.wakeup_fd, warn_on_full_buffer=False)


def _watch(read_fd: int) -> None:
    """Start the deadline at the signal itself. A Python handler runs only when the main thread is back in
    Python, which a collective blocked in C++ may never be; Python's C-level handler, though, writes every
    signal number to the wakeup fd at once, and this thread reads it."""
    while True:
        try:
            received = os.read(read_fd, 512)
        except OSError:
            return
        if not received:
            return
        for byte in received:  # in order: a SIGTERM written before a `_FLUSH` is handled before `reset` goes on
            if byte == signal.SIGTERM:
                _state.requested.set()
                _start_deadline()
            elif byte == _FLUSH:
                _state.flushed.set()


def reinstall() -> None:
    """Put the handler back if `install` set it (TensorFlow's preemption notifier takes SIGTERM over)."""
    if _state.installed:
        install()


def reset() -> None:
    """Forget a received SIGTERM and cancel its deadline (for tests that signal their own process).

    First waits until `_watch` has read every byte already in the wakeup pipe: a SIGTERM it read only
    after this reset would arm a deadline nobody cancels, and ``os._exit(4)`` would end the process
    (pytest itself) half a minute later.
    """
    if _state.wakeup_fd is not None:
        _state.flushed = threading.Event()
        os.write(_state.wakeup_fd, bytes([_FLUSH]))
        if not _state.flushed.wait(30):
            raise RuntimeError("the SIGTERM watcher thread did not read its pipe within 30 s")
    with _state.lock:
        _state.cancel.set()
        _state.cancel = threading.Event()
        _state.requested.clear()
        _state.deadline_started = False


def requested() -> bool:
    """True once this process got SIGTERM."""
    return _state.requested.is_set()


def _on_sigterm(signum: int, frame: object) -> None:
    _state.requested.set()
    _start_deadline()  # usually already started by `_watch`
    if _state.training == 0:
        raise Preempted(_message("stopped before training"))


def _start_deadline() -> None:
    """Once per SIGTERM (`reset` re-arms it): the thread that ends the process after the grace period."""
    with _state.lock:
        if _state.deadline_started:
            return
        _state.deadline_started = True
        cancel = _state.cancel
    limit = deadline_seconds(_state.grace)
    threading.Thread(target=_deadline, args=(limit, cancel), name="tfstack-sigterm-deadline", daemon=True).start()
    log.warning("SIGTERM: stopping (saving first if training); exit 4 within %.0fs at the latest", limit)


def _message(where: str) -> str:
    return (f"Received SIGTERM ({where}): exiting with code 4; run the same command again to resume "
            f"(--termination-grace-seconds {_state.grace:g})")


def _deadline(limit: float, cancel: threading.Event) -> None:
    if cancel.wait(limit):  # the one thing this thread does: wait out the grace period
        return
    message = f"SIGTERM {limit:.0f}s ago and the process has not ended (a collective may be stuck): exiting now"
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PEER_LOST)


@contextlib.contextmanager
def training() -> Iterator[None]:
    """While inside (the search's trials), SIGTERM only sets the flag: the batch-end check (`agreed`) saves and stops.

    Leaving the block normally after a SIGTERM raises `Preempted`.
    """
    _state.training += 1
    try:
        yield
    finally:
        _state.training -= 1
    if _state.requested.is_set() and _state.training == 0:
        raise preempted("after training, before evaluating or publishing")  # the trials are saved


def preempted(where: str) -> Preempted:
    """The error that ends a process after SIGTERM (exit 4), saying where it stopped."""
    return Preempted(_message(where))


_reducers: dict[int, object] = {}


def agreed(strategy: tf.distribute.Strategy, *, multi_worker: bool) -> bool:
    """Did any worker get SIGTERM? The same answer on every worker: a collective, call it at the same step.

    One worker: this process's flag. Several: an all-reduce (sum) of every worker's flag, compiled once
    per strategy (a few milliseconds a step on CPU; docs/distributed.md).
    """
    mine = _state.requested.is_set()
    if not multi_worker:
        return mine
    import tensorflow as tf

    reducer = _reducers.get(id(strategy))
    if reducer is None:
        @tf.function
        def reduce_flag(flag: tf.Tensor) -> tf.Tensor:
            # The flag is captured, not passed in `args`: MWMS's run inside a tf.function fails on a plain
            # tensor argument ("destinations can not be empty", TF 2.21). Eagerly this costs ~20 ms a call.
            def replica_fn() -> tf.Tensor:
                return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(flag))

            return strategy.experimental_local_results(strategy.run(replica_fn))[0]

        reducer = _reducers[id(strategy)] = reduce_flag
    return bool(reducer(tf.constant(1 if mine else 0, tf.int32)).numpy() > 0)  # type: ignore[operator]
