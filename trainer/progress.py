"""Search progress you can watch: Prometheus metrics served by the chief, and one log line per trial.

Metrics (namespace ``tfstack``, subsystem ``trainer``): trials planned and done, the current trial
and epoch, the best objective so far, training images per second, the worker count, and the publish
gate's decision with the held-out figures it compared (``model="candidate"`` and ``"current"``). Only the
chief serves them (``--metrics-port``); every metric lives in an injectable `CollectorRegistry`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import keras
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

__all__ = ["ProgressCallback", "SearchMetrics"]

log = logging.getLogger(__name__)


class SearchMetrics:
    """The trainer's Prometheus metrics, registered in `registry` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        common: dict[str, Any] = {"namespace": "tfstack", "subsystem": "trainer", "registry": self.registry}
        self.trials_planned = Gauge("trials_planned", "Trials the search plans to run.", **common)
        self.trials_done = Counter("trials_completed", "Trials finished in this process.", **common)
        self.trial = Gauge("current_trial", "Number of the trial in progress (1-based).", **common)
        self.epoch = Gauge("current_epoch", "Epoch in progress within the current trial (1-based).", **common)
        self.best = Gauge("best_objective", "Best val_accuracy of any finished trial.", **common)
        self.throughput = Gauge(
            "training_images_per_second", "Training images per second over the last epoch (global).", **common
        )
        self.images = Counter("training_images", "Training images processed (global batch count).", **common)
        self.workers = Gauge("workers", "Workers in the synchronous training job.", **common)
        self.published = Gauge(
            "published", "1 when the publish gate published the search's model, 0 when it refused it.", **common
        )
        self.held_out = Gauge(
            "held_out_balanced_accuracy", "Held-out balanced accuracy seen by the publish gate.", ["model"], **common
        )
        self._server: Any = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on `port` (0 picks a free one); returns the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        log.info("serving search metrics on http://%s:%d/metrics", addr, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class ProgressCallback(keras.callbacks.Callback):
    """Feeds `SearchMetrics` from Keras' epoch and batch hooks.

    Async-safe (it never reads the step's logs), so Keras need not wait for each step; with several
    steps per execution ``on_train_batch_end`` gets the index of the execution's last step, which is
    what the image count follows.
    """

    def __init__(self, metrics: SearchMetrics, global_batch_size: int) -> None:
        super().__init__()
        self.async_safe = True
        self.metrics = metrics
        self.global_batch_size = global_batch_size
        self._epoch_start = 0.0
        self._batches = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> ProgressCallback:
        # KerasTuner deep-copies callbacks for every trial; the copies must feed the same metrics.
        return ProgressCallback(self.metrics, self.global_batch_size)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.metrics.epoch.set(epoch + 1)
        self._epoch_start = time.perf_counter()
        self._batches = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        done = max(self._batches, batch + 1)  # `batch`: the last step of this execution, from 0 in the epoch
        self.metrics.images.inc((done - self._batches) * self.global_batch_size)
        self._batches = done

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        if elapsed > 0 and self._batches:
            self.metrics.throughput.set(self._batches * self.global_batch_size / elapsed)
