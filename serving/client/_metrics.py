"""The client's Prometheus metrics: one collector per registry, and a helper that serves ``/metrics``.

Names are built from ``namespace="tfstack"``, ``subsystem="client"``, the name and the unit, as
prometheus-client does for its own metric classes:

- ``tfstack_client_requests_total{model,method,transport,code}``: calls, by outcome code (``OK`` or
  the gRPC status name of the error);
- ``tfstack_client_request_duration_seconds{model,method,transport,code}`` (histogram): call
  latency, retries and backoff included;
- ``tfstack_client_requests_in_flight{model,method,transport}``: calls under way;
- ``tfstack_client_request_bytes_total`` / ``tfstack_client_response_bytes_total``
  ``{model,method,transport}``: message payload bytes sent and received;
- ``tfstack_client_retries_total{model,method,transport,code}``: retries, by the code that caused them;
- ``tfstack_client_retries_throttled_total{model,method,transport}``: failures not retried because the
  retry budget (gRFC A6 token bucket) was spent.

The values live in plain Python numbers behind one lock and are turned into metric families when
the registry is collected (a custom collector). A call then costs two short critical sections
instead of the eight locked updates six prometheus-client metric objects would take, which matters
next to a sub-millisecond loopback call.
"""

from __future__ import annotations

import bisect
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # prometheus-client is imported when the first client is made
    from prometheus_client import CollectorRegistry

__all__ = ["BUCKETS", "CallStats", "ClientMetrics", "metric_name", "metrics_for", "serve_metrics"]

NAMESPACE = "tfstack"
SUBSYSTEM = "client"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the duration histogram's buckets; +Inf is implied."""

_CALL = ["model", "method", "transport"]


def metric_name(name: str, unit: str = "") -> str:
    """``tfstack_client_<name>[_<unit>]``, prometheus-client's naming rule."""
    full = f"{NAMESPACE}_{SUBSYSTEM}_{name}"
    return f"{full}_{unit}" if unit and not full.endswith(f"_{unit}") else full


class CallStats:
    """Everything counted for one (model, method, transport); updated under the collector's lock."""

    __slots__ = ("by_code", "in_flight", "labels", "request_bytes", "response_bytes", "retries", "throttled")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.in_flight = 0
        self.request_bytes = 0
        self.response_bytes = 0
        self.by_code: dict[str, list[Any]] = {}  # code -> [count, sum of seconds, bucket counts]
        self.retries: dict[str, int] = {}
        self.throttled = 0


class ClientMetrics:
    """The client's metrics in one registry (register once; :func:`metrics_for` does)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str, str], CallStats] = {}

    def stats(self, model: str, method: str, transport: str) -> CallStats:
        key = (model, method, transport)
        stats = self._stats.get(key)
        if stats is None:
            with self._lock:
                stats = self._stats.setdefault(key, CallStats(key))
        return stats

    def started(self, stats: CallStats) -> float:
        """Marks a call in flight; returns its start time."""
        with self._lock:
            stats.in_flight += 1
        return time.perf_counter()

    def finished(self, stats: CallStats, start: float, code: str, sent: int = 0, received: int = 0) -> None:
        """Counts and times a finished call (retries included) and its payload bytes."""
        elapsed = time.perf_counter() - start
        bucket = bisect.bisect_left(BUCKETS, elapsed)
        with self._lock:
            stats.in_flight -= 1
            entry = stats.by_code.get(code)
            if entry is None:
                entry = stats.by_code[code] = [0, 0.0, [0] * (len(BUCKETS) + 1)]
            entry[0] += 1
            entry[1] += elapsed
            entry[2][bucket] += 1
            stats.request_bytes += sent
            stats.response_bytes += received

    def retried(self, stats: CallStats, code: str) -> None:
        with self._lock:
            stats.retries[code] = stats.retries.get(code, 0) + 1

    def throttled(self, stats: CallStats) -> None:
        with self._lock:
            stats.throttled += 1

    # -- prometheus-client collector protocol --------------------------------------------------------

    def _families(self) -> dict[str, Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        coded = [*_CALL, "code"]
        return {
            "requests": CounterMetricFamily(metric_name("requests"), "Client calls by outcome code.",
                                            labels=coded),
            "duration": HistogramMetricFamily(metric_name("request_duration", "seconds"),
                                              "Client call latency, retries included.", labels=coded,
                                              unit="seconds"),
            "in_flight": GaugeMetricFamily(metric_name("requests_in_flight"), "Client calls under way.",
                                           labels=_CALL),
            "request_bytes": CounterMetricFamily(metric_name("request", "bytes"), "Request payload bytes sent.",
                                                 labels=_CALL, unit="bytes"),
            "response_bytes": CounterMetricFamily(metric_name("response", "bytes"),
                                                  "Response payload bytes received.", labels=_CALL, unit="bytes"),
            "retries": CounterMetricFamily(metric_name("retries"), "Retried attempts by the code that caused them.",
                                           labels=coded),
            "throttled": CounterMetricFamily(metric_name("retries_throttled"),
                                             "Failures not retried because the retry budget was spent.",
                                             labels=_CALL),
        }

    def describe(self) -> Iterator[Any]:
        yield from self._families().values()

    def collect(self) -> Iterator[Any]:
        families = self._families()
        with self._lock:
            snapshot = [
                (s.labels, s.in_flight, s.request_bytes, s.response_bytes,
                 {code: (e[0], e[1], list(e[2])) for code, e in s.by_code.items()}, dict(s.retries), s.throttled)
                for s in self._stats.values()
            ]
        bounds = [*(repr(float(b)) for b in BUCKETS), "+Inf"]
        for labels, in_flight, sent, received, by_code, retries, throttled in snapshot:
            families["in_flight"].add_metric(list(labels), in_flight)
            families["throttled"].add_metric(list(labels), throttled)
            families["request_bytes"].add_metric(list(labels), sent)
            families["response_bytes"].add_metric(list(labels), received)
            for code, (count, total, buckets) in sorted(by_code.items()):
                families["requests"].add_metric([*labels, code], count)
                cumulative, running = [], 0
                for bound, hits in zip(bounds, buckets, strict=True):
                    running += hits
                    cumulative.append((bound, running))
                families["duration"].add_metric([*labels, code], cumulative, total)
            for code, count in sorted(retries.items()):
                families["retries"].add_metric([*labels, code], count)
        yield from families.values()


_LOCK = threading.Lock()
_BY_REGISTRY: weakref.WeakKeyDictionary[Any, ClientMetrics] = weakref.WeakKeyDictionary()


def metrics_for(registry: CollectorRegistry | None = None) -> ClientMetrics:
    """Returns the client's metrics in ``registry`` (default: prometheus-client's global one),
    registering them on first use, so many clients can share one registry."""
    import prometheus_client

    registry = prometheus_client.REGISTRY if registry is None else registry
    with _LOCK:
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = ClientMetrics()
            registry.register(metrics)  # a Collector by protocol: describe() and collect()
            _BY_REGISTRY[registry] = metrics
        return metrics


def serve_metrics(
    port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> tuple[Any, threading.Thread]:
    """Serves ``registry`` (default: the global one) at ``http://addr:port/metrics`` from a daemon
    thread; returns ``(server, thread)``: call ``server.shutdown()`` to stop it."""
    import prometheus_client

    registry = prometheus_client.REGISTRY if registry is None else registry
    server, thread = prometheus_client.start_http_server(port, addr=addr, registry=registry)
    return server, thread
