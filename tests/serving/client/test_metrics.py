"""Prometheus metrics after real calls, in an injected registry, and the /metrics helper."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from serving.client import Client, MockTransport, ModelNotFound, Reply, RetryPolicy, serve_metrics
from serving.client._metrics import metrics_for
from tests.serving.client.servers import ToyModel


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_metric_values_after_real_calls(grpc_target: str, toy: ToyModel, registry: CollectorRegistry) -> None:
    policy = RetryPolicy(initial_backoff=0.0, max_backoff=0.0)
    x = np.ones((4, 3), np.float32)
    with Client(grpc_target, "toy", registry=registry, retry=policy) as client:
        client.predict({"x": x})  # metadata (cached from now on), then predict
        toy.fail_next = 1
        client.predict({"x": x})  # one UNAVAILABLE, one retry
        with pytest.raises(ModelNotFound):
            client.predict({"x": x}, version=9)  # its metadata call fails: nothing predicted
    with Client(grpc_target, "toy", registry=registry, validate=False) as unchecked, pytest.raises(ModelNotFound):
        unchecked.predict({"x": x}, version=9)
    call = {"model": "toy", "method": "predict", "transport": "grpc"}
    metadata = {**call, "method": "metadata"}
    assert _value(registry, "tfstack_client_requests_total", **call, code="OK") == 2
    assert _value(registry, "tfstack_client_requests_total", **call, code="NOT_FOUND") == 1
    assert _value(registry, "tfstack_client_requests_total", **metadata, code="OK") == 1
    assert _value(registry, "tfstack_client_requests_total", **metadata, code="NOT_FOUND") == 1
    assert _value(registry, "tfstack_client_retries_total", **call, code="UNAVAILABLE") == 1
    assert _value(registry, "tfstack_client_request_duration_seconds_count", **call, code="OK") == 2
    assert _value(registry, "tfstack_client_request_duration_seconds_sum", **call, code="OK") > 0
    assert _value(registry, "tfstack_client_request_duration_seconds_bucket", **call, code="OK", le="+Inf") == 2
    assert _value(registry, "tfstack_client_request_duration_seconds_bucket", **call, code="OK", le="60.0") == 2
    assert _value(registry, "tfstack_client_requests_in_flight", **call) == 0
    sent = _value(registry, "tfstack_client_request_bytes_total", **call)
    received = _value(registry, "tfstack_client_response_bytes_total", **call)
    assert sent >= 2 * x.nbytes and received >= 2 * (4 * 3 * 4 + 4 * 8)


def test_in_flight_gauge_counts_calls_under_way(registry: CollectorRegistry) -> None:
    seen: list[float] = []

    def handler(request: object) -> Reply:
        seen.append(_value(registry, "tfstack_client_requests_in_flight", model="m", method="status",
                           transport="mock"))
        from serving.client import ModelStatus

        return Reply(ModelStatus("m", ()), sent_bytes=5, received_bytes=7)

    with Client("unused:1", "m", transport=MockTransport(handler), registry=registry) as client:
        client.status()
    assert seen == [1.0]
    assert _value(registry, "tfstack_client_requests_in_flight", model="m", method="status", transport="mock") == 0
    assert _value(registry, "tfstack_client_request_bytes_total", model="m", method="status", transport="mock") == 5
    assert _value(registry, "tfstack_client_response_bytes_total", model="m", method="status", transport="mock") == 7


def test_clients_share_one_registry_and_default_to_the_global_one() -> None:
    registry = CollectorRegistry()
    assert metrics_for(registry) is metrics_for(registry)
    import prometheus_client

    assert metrics_for() is metrics_for(prometheus_client.REGISTRY)
    Client("unused:1", "a", registry=registry).close()
    Client("unused:1", "b", registry=registry).close()  # no duplicate-registration error


def test_serve_metrics_exposes_the_registry(grpc_target: str, registry: CollectorRegistry) -> None:
    with Client(grpc_target, "toy", registry=registry) as client:
        client.status()
    server, thread = serve_metrics(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            page = response.read().decode()
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert 'tfstack_client_requests_total{code="OK",method="status",model="toy",transport="grpc"} 1.0' in page
    assert "# TYPE tfstack_client_request_duration_seconds histogram" in page
    families = {f.name: f for f in text_string_to_metric_families(page)}
    histogram = families["tfstack_client_request_duration_seconds"]
    buckets = [s for s in histogram.samples if s.name.endswith("_bucket")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf" and counts[-1] == 1.0
    assert {"tfstack_client_requests", "tfstack_client_requests_in_flight", "tfstack_client_request_bytes",
            "tfstack_client_response_bytes", "tfstack_client_retries"} <= set(families)
