"""Prometheus metrics of one server instance, in its own ``CollectorRegistry``.

Exposed on the REST port at the path ``--monitoring_config_file`` names (TF Serving's default
``/monitoring/prometheus/metrics``), only when that file enables them, as TF Serving does:

- ``tfstack_model_server_requests_total{model, method, status}``: requests by canonical status code name
- ``tfstack_model_server_request_duration_seconds{model, method}``: latency histogram
- ``tfstack_model_server_model_versions{model, state}``: versions per state (``AVAILABLE`` = loaded)
- ``tfstack_model_server_version_load_failures_total{model}``: failed load attempts
- ``tfstack_model_server_requests_in_flight{transport}``: requests being processed now

``model`` is a configured model name, or ``<unknown>`` for any other name a request sends (bounded labels).
``method`` is ``predict | classify | regress | metadata | status | reload``; ``transport`` is ``grpc | rest``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from tensorflow_serving.apis import get_model_status_pb2

__all__ = ["UNKNOWN_MODEL", "ServerMetrics"]

UNKNOWN_MODEL = "<unknown>"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STATE_NAMES = {v.number: v.name for v in get_model_status_pb2.ModelVersionStatus.State.DESCRIPTOR.values}


class ServerMetrics:
    """The server's metric families; ``registry`` defaults to a fresh one per instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        common = {"namespace": "tfstack", "subsystem": "model_server", "registry": self.registry}
        self.requests = Counter(
            "requests", "Requests handled, by model, method, transport and status code.",
            ["model", "method", "transport", "status"], **common,
        )
        self.duration = Histogram(
            "request_duration", "Request latency, from request read to response written.",
            ["model", "method", "transport"], unit="seconds", buckets=_BUCKETS, **common,
        )
        self.versions = Gauge(
            "model_versions", "Model versions by state (AVAILABLE versions are loaded and serving).",
            ["model", "state"], **common,
        )
        self.in_flight = Gauge(
            "requests_in_flight", "Requests being processed now.", ["transport"], **common,
        )
        self.load_failures = Counter(
            "version_load_failures", "Failed attempts to load a model version.", ["model"], **common,
        )
        self._known_models: frozenset[str] = frozenset()
        self._children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._seen_states: set[tuple[str, str]] = set()

    def set_models(self, names: Collection[str]) -> None:
        if frozenset(names) != self._known_models:
            self._known_models = frozenset(names)
            self._children = {}

    def model_label(self, name: str) -> str:
        return name if name in self._known_models else UNKNOWN_MODEL

    def observe(self, model: str, method: str, transport: str, status: str, seconds: float) -> None:
        key = (model, method, transport, status)
        children = self._children.get(key)
        if children is None:  # labels() costs a lock and a few dict look-ups: done once per label set
            label = self.model_label(model)
            children = (self.requests.labels(label, method, transport, status),
                        self.duration.labels(label, method, transport))
            if len(self._children) < 10_000:
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

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
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
