"""Server-side batching (``--enable_batching``): concurrent predict calls on one signature run as one.

A small stand-in for TF Serving's batching session, driven by the same ``BatchingParameters`` file:
requests on the same servable and signature whose inputs agree in dtype and in every dimension but the
first are concatenated along dimension 0, run once, and the outputs split back by row counts. There are no
extra threads: the first caller becomes the batch's leader, waits up to ``batch_timeout_micros`` for the
batch to fill to ``max_batch_size`` rows, runs it, and hands leadership to the next waiting request; up to
``num_batch_threads`` batches run at once. Predict, classify and regress are batched alike.

As upstream (``batching_session.cc`` ``ProcessBatch``): a merged batch that fails gives its error to every
request in it (no request is run again); outputs that are not batch-major fail the batch ("Batched output
tensor has 0 dimensions" / "...does not match sum of task sizes"). The queue holds at most
``max_enqueued_batches`` batches (default 10, ``SharedBatchScheduler::QueueOptions``) of
``max_batch_size`` rows waiting for a thread; a request that does not fit is refused with UNAVAILABLE
"The batch scheduling queue to which this task was submitted is full" (``shared_batch_scheduler.h``).
A request whose deadline passed while it waited is dropped, not run, with DEADLINE_EXCEEDED (upstream
fails such a batch with RESOURCE_EXHAUSTED "Run() timeout exceeded while waiting in batching queue"
when every task in it timed out; a gRPC caller sees DEADLINE_EXCEEDED either way).

Requests are checked as TF Serving's batching session checks them (``batching_util.h``,
``SharedBatchScheduler``): every input needs a 0th dimension, all inputs the same one, and a request of more
rows than ``max_batch_size`` (the input batch size limit) is refused with "Task size N is larger than
maximum input batch size M". With ``enable_large_batch_splitting`` a request of up to ``max_batch_size``
rows runs in pieces of at most ``max_execution_batch_size`` rows (default ``max_batch_size``). Not reproduced:
padding to ``allowed_batch_sizes`` (a static-shape optimisation).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.model_server.config_protos import BatchingParameters
from serving.model_server.errors import DeadlineExceeded, Internal, InvalidArgument, Unavailable
from serving.model_server.metrics import ServerMetrics

__all__ = ["REQUEST_DEADLINE", "Batcher"]

#: The current request's deadline (``time.monotonic()``), set by the frontends (gRPC: the caller's deadline).
REQUEST_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("request_deadline", default=None)

RunFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(eq=False)
class _Task:
    inputs: Mapping[str, np.ndarray]
    rows: int
    key: tuple[Any, ...]
    run: RunFn
    deadline: float | None = None  # time.monotonic() past which the caller no longer waits
    lead: bool = False  # asked to lead a batch
    leading: bool = False  # leading one now
    finished: bool = False
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None
    enqueued: float = field(default_factory=time.monotonic)  # for the queuing-latency metric


@dataclass
class _Queue:
    pending: list[_Task] = field(default_factory=list)
    running: int = 0


class Batcher:
    """Merges concurrent calls; one instance per server, queues per ``(servable, signature)``."""

    def __init__(self, params: BatchingParameters,
                 metrics: ServerMetrics | None = None) -> None:
        self._metrics = metrics
        self.max_batch_size = params.max_batch_size.value if params.HasField("max_batch_size") else 1000
        self.timeout = (params.batch_timeout_micros.value if params.HasField("batch_timeout_micros") else 0) / 1e6
        self.num_batch_threads = max(params.num_batch_threads.value if params.HasField("num_batch_threads") else 1, 1)
        self.split = params.HasField("enable_large_batch_splitting") and params.enable_large_batch_splitting.value
        self.execution_batch_size = self.max_batch_size
        if self.split and params.HasField("max_execution_batch_size"):
            self.execution_batch_size = params.max_execution_batch_size.value
        self.max_enqueued_batches = params.max_enqueued_batches.value if params.HasField("max_enqueued_batches") \
            else 10
        self._lock = threading.Condition()
        self._queues: dict[Any, _Queue] = {}

    def queued(self, queue_key: Any) -> int:
        """How many requests wait on ``queue_key`` now (for tests and debugging)."""
        with self._lock:
            queue = self._queues.get(queue_key)
            return len(queue.pending) if queue else 0

    def run(self, queue_key: Any, inputs: Mapping[str, np.ndarray], run: RunFn,
            deadline: float | None = None) -> dict[str, np.ndarray]:
        """Run ``run(inputs)``, merged with concurrent calls on the same ``queue_key`` where possible.

        ``deadline`` (``time.monotonic()``): past it, a request still queued is dropped, not run."""
        if not inputs:
            raise InvalidArgument("Batching Run() must have at least one input tensor")
        if any(a.ndim == 0 for a in inputs.values()):
            raise InvalidArgument("Batching Run() input tensors must have at least one dimension")
        rows = {a.shape[0] for a in inputs.values()}
        if len(rows) != 1:
            raise InvalidArgument("Batching Run() input tensors must have equal 0th-dimension size")
        size = next(iter(rows))
        if size > self.max_batch_size:
            raise InvalidArgument(f"Task size {size} is larger than maximum input batch size {self.max_batch_size}")
        if self._metrics is not None:  # BatchingSession::ComputeInputSize: dimension 0 of every input
            self._metrics.batch_input([a.shape[0] for a in inputs.values()])
        if size > self.execution_batch_size:  # only with enable_large_batch_splitting
            step = self.execution_batch_size
            self._record([size - i if size - i < step else step for i in range(0, size, step)], [0.0])
            pieces = [run({k: v[i : i + step] for k, v in inputs.items()}) for i in range(0, size, step)]
            return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
        if size >= self.execution_batch_size:
            self._record([size], [0.0])
            return run(inputs)
        key = tuple(sorted((alias, a.dtype.str, a.shape[1:]) for alias, a in inputs.items()))
        task = _Task(inputs, size, key, run, deadline if deadline is not None else REQUEST_DEADLINE.get())
        with self._lock:
            queue = self._queues.setdefault(queue_key, _Queue())
            waiting = sum(t.rows for t in queue.pending if not t.leading)
            if waiting + size > self.max_enqueued_batches * self.max_batch_size:
                raise Unavailable("The batch scheduling queue to which this task was submitted is full")
            queue.pending.append(task)
            if queue.running < self.num_batch_threads:
                queue.running += 1
                task.lead = True
            else:
                self._lock.notify_all()  # a leader may be waiting for its batch to fill
        while True:
            if task.lead:
                self._lead(queue, task)
            with self._lock:
                while not task.finished and not task.lead:
                    self._lock.wait()
                if task.finished:
                    break
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    def _take(self, queue: _Queue, first: _Task) -> list[_Task]:
        now = time.monotonic()
        for task in [t for t in queue.pending if t.deadline is not None and t.deadline <= now]:
            queue.pending.remove(task)  # its caller gave up: dropped, not run
            task.error = DeadlineExceeded("Deadline exceeded while the request waited in the batching queue")
            task.finished = True
        candidates = ([first] if first in queue.pending else []) + [t for t in queue.pending if t is not first]
        batch, rows = [], 0
        for task in candidates:
            if task.key == first.key and rows + task.rows <= self.execution_batch_size:
                batch.append(task)
                rows += task.rows
                queue.pending.remove(task)
        return batch

    def _lead(self, queue: _Queue, first: _Task) -> None:
        with self._lock:
            first.lead, first.leading = False, True
        while True:
            with self._lock:
                if self.timeout > 0 and first in queue.pending:
                    deadline = time.monotonic() + self.timeout
                    while sum(t.rows for t in queue.pending if t.key == first.key) < self.execution_batch_size:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._lock.wait(remaining)
                batch = self._take(queue, first)
            if batch:
                now = time.monotonic()
                self._record([sum(t.rows for t in batch)], [now - t.enqueued for t in batch])
                self._execute(batch)
            with self._lock:
                for task in batch:
                    task.finished = True
                if first in queue.pending:
                    self._lock.notify_all()
                    continue  # our own request did not fit: lead another batch
                first.leading = False
                successor = next((t for t in queue.pending if not t.leading), None)
                if successor is not None:
                    successor.lead = True  # it wakes up and leads the next batch
                else:
                    queue.running -= 1
                self._lock.notify_all()
            return

    def _record(self, batch_sizes: list[int], queued_seconds: list[float]) -> None:
        """The batching session's series for batches about to run (no padding: sizes are as merged)."""
        if self._metrics is not None:
            for i, rows in enumerate(batch_sizes):
                self._metrics.batch_processed(rows, rows, queued_seconds if i == 0 else [])

    @staticmethod
    def _execute(batch: list[_Task]) -> None:
        if len(batch) == 1:
            _run_alone(batch[0])
            return
        total = sum(t.rows for t in batch)
        merged = {alias: np.concatenate([t.inputs[alias] for t in batch]) for alias in batch[0].inputs}
        try:
            outputs = batch[0].run(merged)
            del merged
            for alias, output in outputs.items():  # SplitOutputTensors (batching_session.cc)
                if output.ndim == 0:
                    raise Internal("Batched output tensor has 0 dimensions")
                if output.shape[0] != total:
                    raise Internal(f"Batched output tensor's 0th dimension does not equal the sum of the 0th "
                                   f"dimension sizes of the input tensors ({alias}: {output.shape[0]} != {total})")
        except BaseException as exc:  # as upstream: every request of the batch gets the batch's error
            for task in batch:
                task.error = exc
            return
        offset = 0
        for task in batch:
            task.result = {k: v[offset : offset + task.rows] for k, v in outputs.items()}
            offset += task.rows


def _run_alone(task: _Task) -> None:
    try:
        task.result = task.run(task.inputs)
    except BaseException as exc:  # handed to the request's own thread, which re-raises it
        task.error = exc
