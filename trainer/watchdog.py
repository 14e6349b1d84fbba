"""A stall watchdog: a worker whose training makes no progress for too long exits with code 4.

A peer that is alive but stuck (a deadlocked input pipeline, a collective whose partner never
arrives because the workers' step counts differ) is invisible to MultiWorkerMirroredStrategy's
health check, which only pings peers' gRPC servers (``_check_health`` in
tensorflow/python/distribute/collective_all_reduce_strategy.py). TensorFlow's own bound,
``CommunicationOptions(timeout_seconds=...)``, starts one sleeping thread per collective
(tensorflow/python/distribute/collective_util.py: "should only be used for debugging since it
creates a new thread for each collective, i.e. an overhead of timeout_seconds *
num_collectives_per_second more threads"): with a generous timeout that is thousands of threads.

Instead, `StallWatchdog` is one thread per process. Training calls `beat()` at every batch end
(`StallWatchdog.callback`) and at each trial start; when no beat arrives within `timeout` seconds
while armed, the watchdog logs which stage stalled and ends the process with `EXIT_PEER_LOST` (the
main thread is blocked inside TensorFlow and cannot be interrupted), so the whole group restarts.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from trainer.errors import EXIT_PEER_LOST

__all__ = ["StallWatchdog"]

log = logging.getLogger(__name__)


def _exit_now(code: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class StallWatchdog:
    """Ends the process when armed and not fed a `beat` for `timeout` seconds.

    Args:
        timeout: seconds without progress before the process exits (0 or None: never).
        on_stall: what to do on a stall (default: log, flush and ``os._exit(EXIT_PEER_LOST)``);
            tests pass a recorder.
        clock: a monotonic clock.
    """

    def __init__(self, timeout: float | None, *, on_stall: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout or 0.0
        self.clock = clock
        self.on_stall = on_stall or self._exit
        self.stage = ""
        self._last = clock()
        self._armed = False
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def _exit(self, message: str) -> None:
        log.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        _exit_now(EXIT_PEER_LOST)

    def beat(self, stage: str | None = None) -> None:
        """Record progress (and optionally name the stage now running)."""
        self._last = self.clock()
        if stage is not None:
            self.stage = stage

    @contextmanager
    def armed(self, stage: str) -> Iterator[StallWatchdog]:
        """Watch the block: a stall inside it ends the process."""
        self.beat(stage)
        self._armed = True
        if self.timeout > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="tfstack-watchdog", daemon=True)
            self._thread.start()
        try:
            yield self
        finally:
            self._armed = False

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()

    def check(self) -> bool:
        """Fire `on_stall` if armed and stalled; True when it fired."""
        idle = self.clock() - self._last
        if self._armed and self.timeout > 0 and idle >= self.timeout:
            self.on_stall(
                f"No training progress for {idle:.0f}s during {self.stage or 'training'} "
                f"(--collective-timeout {self.timeout:.0f}s): a peer is stuck or a collective hangs. "
                "Exiting so that the whole group restarts."
            )
            return True
        return False

    def _watch(self) -> None:
        with self._wake:
            while not self._closed:
                # Wake well within the timeout; a stall is reported at most timeout/10 late.
                self._wake.wait(max(0.05, self.timeout / 10))
                if not self._closed and self.check():
                    return

    def callback(self) -> Any:
        """A Keras callback that beats at every train, test and predict batch end."""
        import keras

        watchdog = self

        class _Beat(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.async_safe = True  # beats from Keras's callback thread while the next step runs

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                watchdog.beat()

            def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
                watchdog.beat()

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                watchdog.beat()

            def on_test_begin(self, logs: Any = None) -> None:
                watchdog.beat()

        return _Beat()
