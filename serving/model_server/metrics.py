"""The server's metrics: TF Serving's own series, names, labels, units and buckets, on one page.

Served on the REST port at the path of ``--monitoring_config_file`` (``prometheus_config { enable: true
path: ... }``; TF Serving's default ``/monitoring/prometheus/metrics``), only when that file enables them.
Every series is defined where tensorflow/serving (commit 9d981c5c) or tensorflow defines it, and written
as ``tensorflow_serving/util/prometheus_exporter.cc`` writes it: the metric name with every character
outside ``[a-zA-Z0-9_]`` turned into ``:`` (``/tensorflow/serving/request_count`` ->
``:tensorflow:serving:request_count``), a ``# TYPE`` line, histograms as cumulative ``_bucket{le=...}``
lines (the bound printed with six significant digits, as ``absl::StrCat(double)`` does; the last
bucket ``+Inf``), ``_sum`` and ``_count``. Latencies are MICROSECONDS.

Series (labels), and where upstream defines them:

- ``:tensorflow:serving:request_count{model_name,status}``: servables/tensorflow/util.cc
- ``:tensorflow:serving:request_latency{model_name,API,entrypoint}``: util.cc, Exponential(10, 1.8, 33)
- ``:tensorflow:serving:runtime_latency{model_name,API,runtime}``: util.cc, Exponential(10, 1.8, 33)
- ``:tensorflow:serving:model_warmup_latency{model_path,status}``: saved_model_warmup_util.cc, (10, 1.8, 33)
- ``:tensorflow:serving:model_warmup_records_read{model_path,status}``: saved_model_warmup_util.cc
- ``:tensorflow:cc:saved_model:load_attempt_count{model_path,status}``: tensorflow/cc/saved_model/loader.cc
- ``:tensorflow:cc:saved_model:load_latency{model_path}``: loader.cc (a counter of microseconds)
- ``:tensorflow:serving:batching_session:input_batch_size``, ``processed_batch_size`` and
  ``padding_size{execution_batch_size}``: batching/batching_util.h, Exponential(1, 2, 14)
- ``:tensorflow:serving:batching_session:queuing_latency{thread_pool_name}``: batching/batching_session.cc,
  Exponential(100, 1.2, 52)
- ``:tensorflow:serving:batching_session:wrapped_run_count``: batching_session.cc

When each is recorded follows upstream too (see :meth:`ServerMetrics.observe`): gRPC counts Predict,
Classify and Regress (``API="Predict"|"Classify"|"Regress"``, ``entrypoint="GRPC"``;
model_servers/prediction_service_impl.cc), REST counts every ``/v1/`` request (``API`` is the verb of
the URL, ``predict|classify|regress``, and empty for GETs; ``entrypoint="REST"``;
model_servers/http_server.cc); latency is recorded for successful requests only; ``status`` is the
canonical code name (``OK``, ``NOT_FOUND``, ...); ``runtime`` is ``TF1`` (the SavedModel-session
runtime's label, predict_util.cc, classifier.cc, regressor.cc). Not exported: util.cc's
``request_example_counts`` (upstream records it for MultiInference only, which this server does not
implement) and TensorFlow's own runtime series (``:tensorflow:core:*``), which live in TensorFlow's C++
registry that Python cannot read.

Two series have no upstream equivalent and keep the project's names (prometheus_client, same page):
``tfstack_model_server_model_versions{model,state}`` (versions per state; TF Serving exports no
servable-state metric) and ``tfstack_model_server_requests_in_flight{transport}``.

Deviations, all harmless to queries: a ``# HELP`` line per family (upstream writes none), ``_sum``
printed with full precision, label values with a newline escaped (the exposition format requires it),
and at most :data:`MAX_LABEL_SETS` label sets per family (request names are user input; upstream keeps
them all): observations for further sets are dropped and logged once.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from tensorflow_serving.apis import get_model_status_pb2

__all__ = ["MAX_LABEL_SETS", "Family", "ServerMetrics", "exponential_buckets"]

log = logging.getLogger(__name__)

MAX_LABEL_SETS = 10_000
_STATE_NAMES = {v.number: v.name for v in get_model_status_pb2.ModelVersionStatus.State.DESCRIPTOR.values}
#: gRPC methods TF Serving records, with their API label (model_servers/prediction_service_impl.cc).
_GRPC_API = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}
#: REST methods whose URL verb is the API label (http_rest_api_util.cc ParseModelInfo); GETs have none.
_REST_API = {"predict", "classify", "regress"}


def exponential_buckets(scale: float, growth_factor: float, bucket_count: int) -> tuple[float, ...]:
    """``monitoring::Buckets::Exponential`` (tensorflow/core/lib/monitoring/sampler.cc): ``bucket_count``
    upper bounds ``scale * growth_factor**i``, computed by repeated multiplication as upstream does; the
    implicit last bucket runs to DBL_MAX (``+Inf`` on the page)."""
    bounds, bound = [], scale
    for _ in range(bucket_count):
        bounds.append(bound)
        bound *= growth_factor
    return tuple(bounds)


def _escape(value: str) -> str:
    # prometheus_exporter.cc SanitizeLabelValue escapes \ and "; the newline escape is the format's own rule.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class _Histogram:
    counts: list[int]
    total: float = 0.0


@dataclass
class Family:
    """One TensorFlow monitoring metric: a ``Counter`` (``buckets`` empty) or a ``Sampler`` (histogram)."""

    name: str  # upstream's form, "/tensorflow/serving/request_count"
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    _cells: dict[tuple[str, ...], int | _Histogram] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _dropping: bool = field(default=False, repr=False)

    @property
    def prometheus_name(self) -> str:
        """prometheus_exporter.cc GetPrometheusMetricName: ``[^a-zA-Z0-9_]`` -> ``:``."""
        name = "".join(c if (c.isascii() and (c.isalnum() or c == "_")) else ":" for c in self.name)
        return "_" + name if name[:1].isdigit() else name

    def _admit(self, key: tuple[str, ...]) -> bool:
        if key in self._cells or len(self._cells) < MAX_LABEL_SETS:
            return True
        if not self._dropping:
            self._dropping = True
            log.warning("metric %s: more than %d label sets; new ones are not recorded", self.name, MAX_LABEL_SETS)
        return False

    def increment(self, *labels: str, by: int = 1) -> None:
        with self._lock:
            if self._admit(labels):
                self._cells[labels] = int(self._cells.get(labels, 0)) + by  # type: ignore[arg-type]

    def add(self, value: float, *labels: str) -> None:
        """Sampler::Add: the value lands in the first bucket whose bound is greater (tensorflow's
        Histogram::Add uses upper_bound), so a value equal to a bound counts in the next bucket."""
        index = bisect.bisect_right(self.buckets, value)
        with self._lock:
            if not self._admit(labels):
                return
            cell = self._cells.get(labels)
            if cell is None:
                cell = self._cells[labels] = _Histogram([0] * (len(self.buckets) + 1))
            assert isinstance(cell, _Histogram)
            cell.counts[index] += 1
            cell.total += value

    def value(self, *labels: str) -> int | _Histogram | None:
        """The cell's current value (a count, or the histogram), for tests."""
        with self._lock:
            return self._cells.get(labels)

    def lines(self) -> list[str]:
        name = self.prometheus_name
        with self._lock:
            cells = sorted(self._cells.items())
            cells = [(k, v if isinstance(v, int) else _Histogram(list(v.counts), v.total)) for k, v in cells]
        if not cells:
            return []
        kind = "histogram" if self.buckets else "counter"
        out = [f"# HELP {name} {self.help}", f"# TYPE {name} {kind}"]
        for key, cell in cells:
            labels = [f'{label}="{_escape(value)}"' for label, value in zip(self.labels, key, strict=True)]
            if isinstance(cell, int):
                out.append(f"{name}{{{','.join(labels)}}} {cell}")
                continue
            prefix = f"{name}_bucket{{{''.join(label + ',' for label in labels)}"
            cumulative = 0
            for i, count in enumerate(cell.counts):
                cumulative += count
                bound = f"{self.buckets[i]:.6g}" if i < len(self.buckets) else "+Inf"
                out.append(f'{prefix}le="{bound}"}} {cumulative}')
            out.append(f"{name}_sum{{{','.join(labels)}}} {_number(cell.total)}")
            out.append(f"{name}_count{{{','.join(labels)}}} {cumulative}")
        return out


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and math.isfinite(value) else repr(value)


_LATENCY = exponential_buckets(10, 1.8, 33)  # "Scale of 10, power of 1.8 with bucket count 33 (~20 minutes)"
_BATCH = exponential_buckets(1, 2, 14)  # "Exponential buckets [1*2^0, ..., 1*2^13, DBL_MAX]"


class ServerMetrics:
    """Every family of one server instance (fresh per instance, so tests never share state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.request_count = Family("/tensorflow/serving/request_count", "The total number of requests.",
                                    ("model_name", "status"))
        self.request_latency = Family(
            "/tensorflow/serving/request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"), _LATENCY)
        self.runtime_latency = Family(
            "/tensorflow/serving/runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ("model_name", "API", "runtime"), _LATENCY)
        self.warmup_latency = Family(
            "/tensorflow/serving/model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.", ("model_path", "status"), _LATENCY)
        self.warmup_records_read = Family("/tensorflow/serving/model_warmup_records_read",
                                          "Total number of warmup records read during model warmup.",
                                          ("model_path", "status"))
        self.load_attempt_count = Family("/tensorflow/cc/saved_model/load_attempt_count",
                                         "The number of times a SavedModel was successfully loaded.",
                                         ("model_path", "status"))
        self.load_latency = Family("/tensorflow/cc/saved_model/load_latency",
                                   "Latency in microseconds for SavedModels that were successfully loaded.",
                                   ("model_path",))
        self.input_batch_size = Family("/tensorflow/serving/batching_session/input_batch_size",
                                       "Tracks the batch size distribution on the inputs.", (), _BATCH)
        self.processed_batch_size = Family("/tensorflow/serving/batching_session/processed_batch_size",
                                           "Tracks the batch size distribution on processing.", (), _BATCH)
        self.padding_size = Family("/tensorflow/serving/batching_session/padding_size",
                                   "Tracks the padding size distribution on batches.", ("execution_batch_size",),
                                   _BATCH)
        self.queuing_latency = Family("/tensorflow/serving/batching_session/queuing_latency",
                                      "Distribution of wall time spent (in microseconds) in queuing",
                                      ("thread_pool_name",), exponential_buckets(100, 1.2, 52))
        self.wrapped_run_count = Family("/tensorflow/serving/batching_session/wrapped_run_count",
                                        "Total count of run calls on the wrapped session", ())
        self.families = sorted((v for v in vars(self).values() if isinstance(v, Family)), key=lambda f: f.name)
        # No upstream equivalent: kept under the project's names (module docstring).
        self.registry = registry if registry is not None else CollectorRegistry()
        common = {"namespace": "tfstack", "subsystem": "model_server", "registry": self.registry}
        self.versions = Gauge("model_versions", "Model versions by state (AVAILABLE versions are loaded and serving).",
                              ["model", "state"], **common)
        self.in_flight = Gauge("requests_in_flight", "Requests being processed now.", ["transport"], **common)
        self._seen_states: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------------------------ requests

    def observe(self, model: str, method: str, transport: str, status: str, seconds: float) -> None:
        """One finished request, recorded where TF Serving records it (module docstring).

        ``method`` is the server's name for the call (``predict``, ``classify``, ``regress``, ``metadata``,
        ``status``, ``reload``, ...), ``transport`` ``grpc`` or ``rest``, ``status`` a canonical code name.
        """
        if transport == "grpc":
            api = _GRPC_API.get(method)
            if api is None:
                return  # GetModelMetadata, GetModelStatus, reload, MultiInference: not recorded upstream
            entrypoint = "GRPC"
        else:
            api, entrypoint = (method if method in _REST_API else ""), "REST"
        if status == "OK":
            self.request_latency.add(seconds * 1e6, model, api, entrypoint)
        self.request_count.increment(model, status)

    def runtime(self, model: str, method: str, seconds: float) -> None:
        """RecordRuntimeLatency around the model run of a predict, classify or regress (runtime ``TF1``)."""
        self.runtime_latency.add(seconds * 1e6, model, _GRPC_API.get(method, method), "TF1")

    # ------------------------------------------------------------------------------------ loading

    def load_attempt(self, model_path: str, ok: bool, seconds: float) -> None:
        """LoadSavedModel: one attempt, ``success`` or ``fail``; the latency counter on success only."""
        self.load_attempt_count.increment(model_path, "success" if ok else "fail")
        if ok:
            self.load_latency.increment(model_path, by=int(seconds * 1e6))

    def warmup(self, model_path: str, status: str, seconds: float, records: int) -> None:
        """RunSavedModelWarmup's two series; ``status`` is ``absl::Status::ToString()`` (``OK``, or
        ``DATA_LOSS: <message>``)."""
        self.warmup_latency.add(seconds * 1e6, model_path, status)
        self.warmup_records_read.increment(model_path, status, by=records)

    # ------------------------------------------------------------------------------------ batching

    def batch_input(self, rows: Sequence[int]) -> None:
        """ComputeInputSize: the 0th dimension of each input tensor of a request."""
        for size in rows:
            self.input_batch_size.add(size)

    def batch_processed(self, size: int, padded_size: int, queued_seconds: Sequence[float]) -> None:
        """MergeInputTensors and ProcessBatch: one merged batch, its padding, each task's time queued."""
        self.padding_size.add(padded_size - size, str(padded_size))
        self.processed_batch_size.add(padded_size)
        for seconds in queued_seconds:
            self.queuing_latency.add(seconds * 1e6, "")  # CreateBatchingSession passes thread_pool_name ""
        self.wrapped_run_count.increment()

    # ------------------------------------------------------------------------------------ versions

    def set_version_counts(self, counts: Mapping[str, Mapping[int, int]]) -> None:
        """Update the per-state gauge; states that emptied are set to 0 rather than dropped."""
        current = set()
        for model, per_state in counts.items():
            for state, count in per_state.items():
                key = (model, _STATE_NAMES.get(state, str(state)))
                current.add(key)
                self.versions.labels(*key).set(count)
        for key in self._seen_states - current:
            self.versions.labels(*key).set(0)
        self._seen_states |= current

    def exposition(self) -> tuple[bytes, str]:
        """The metrics page body and its content type."""
        lines = [line for family in self.families for line in family.lines()]
        page = ("\n".join(lines) + "\n").encode() if lines else b""
        return page + generate_latest(self.registry), CONTENT_TYPE_LATEST
