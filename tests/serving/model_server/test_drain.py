"""SIGTERM drain of a real server process (issue 21): what rolling restarts, the client's retries (issue 22)
and the chart's preStop (issue 24) rely on.

At SIGTERM: grpc.health.v1 answers NOT_SERVING at once, the request in flight finishes OK, a new request
is refused with UNAVAILABLE (gRPC) / 503 (REST) while the ports stay open, and the process exits 0.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from .conftest import http, wait_until
from .test_process import ServerProcess, build_busy_model

pytestmark = pytest.mark.slow

SERVING, NOT_SERVING = 1, 2  # grpc/health/v1/health.proto HealthCheckResponse.ServingStatus


def _health(channel: grpc.Channel, service: str = "") -> int:
    """Check over the wire: HealthCheckRequest{service=1}, HealthCheckResponse{status=1} (a varint)."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    payload = service.encode()
    answer = check(bytes([0x0A, len(payload)]) + payload if payload else b"", timeout=10)
    assert answer[:1] == b"\x08" and len(answer) == 2, answer
    return answer[1]


def _grpc_in_flight(server: ServerProcess) -> int:
    """The server's own in-flight gauge (metrics page; the one tests/serving/model_server/test_process.py reads)."""
    page = http("GET", f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics")[1]
    match = re.search(r'^\S*requests_in_flight\{transport="grpc"\} (\S+)$', page, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def _busy(seconds: float) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "busy"
    request.inputs["seconds"].CopyFrom(tf.make_tensor_proto(np.float64(seconds)))
    return request


@pytest.fixture
def draining_server(tmp_path: Path) -> Iterator[ServerProcess]:
    build_busy_model(tmp_path / "busy" / "1")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    process = ServerProcess("--model_name=busy", f"--model_base_path={tmp_path / 'busy'}",
                            f"--monitoring_config_file={monitoring}",
                            "--file_system_poll_wait_seconds=0", "--enable_grpc_healthcheck_service",
                            "--drain_timeout_seconds=20")
    yield process
    process.stop()


def test_sigterm_drains_health_not_serving_in_flight_finishes_new_ones_unavailable_exit_0(
    draining_server: ServerProcess,
) -> None:
    server = draining_server
    server.wait_ready()
    rest = f"http://127.0.0.1:{server.rest_port}/v1/models/busy:predict"
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert _health(channel) == SERVING
        in_flight: Any = stub.Predict.future(_busy(4.0), timeout=60)
        wait_until(lambda: _grpc_in_flight(server) == 1, timeout=30)  # the slow call reached the server
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: _health(channel) == NOT_SERVING, timeout=10)
        assert _health(channel, "PredictionService") == NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(_busy(0.0), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "draining" in refused.value.details()
        status, body = http("POST", rest, '{"inputs": {"seconds": 0.0}}')
        assert status == 503 and "draining" in body["error"]
        assert not in_flight.done()  # all of the above happened while the slow request still ran
        response = in_flight.result()
    assert response.outputs["iterations"].int64_val[0] > 0
    assert server.process.wait(timeout=30) == 0
    assert any("draining" in line for line in server.lines)
