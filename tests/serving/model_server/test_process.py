"""The server as a subprocess, as users, the demo and e2e tests run it: ready line, status, SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from .conftest import REPO, available_versions, free_port, http, wait_until

pytestmark = pytest.mark.slow


def build_busy_model(target: Path) -> Path:
    """A model whose ``busy`` signature keeps the server busy for ``seconds`` (a graph loop on tf.timestamp)."""

    class Busy(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.float64, name="seconds")])
        def busy(self, seconds: tf.Tensor) -> dict[str, tf.Tensor]:
            start = tf.timestamp()
            (count,) = tf.while_loop(lambda i: tf.timestamp() - start < seconds, lambda i: (i + 1,),
                                     (tf.constant(0, tf.int64),))
            return {"iterations": count}

    module = Busy()
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.busy})
    return target


class ServerProcess:
    """``python -m serving.model_server`` with its stderr collected by a thread."""

    def __init__(self, *flags: str) -> None:
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.model_server", f"--port={self.grpc_port}",
             f"--rest_api_port={self.rest_port}", *flags],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self) -> str:
        def ready() -> str | None:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}: {self.lines[-10:]}")
            return next((line for line in self.lines if "serving.model_server ready" in line), None)

        return wait_until(ready, timeout=120)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)


@pytest.fixture
def busy_base(tmp_path: Path) -> Path:
    build_busy_model(tmp_path / "busy" / "1")
    return tmp_path / "busy"


@pytest.fixture
def server_process(busy_base: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    process = ServerProcess("--model_name=busy", f"--model_base_path={busy_base}",
                            f"--monitoring_config_file={monitoring}", "--file_system_poll_wait_seconds=0")
    yield process
    process.stop()


def test_ready_line_names_the_ports_and_status_is_available(server_process: ServerProcess) -> None:
    line = server_process.wait_ready()
    assert re.search(rf"gRPC on port {server_process.grpc_port}, REST on port {server_process.rest_port}", line)
    assert available_versions(server_process.rest_port, "busy") == {1}


def test_sigterm_lets_the_in_flight_request_finish_then_exits_0(server_process: ServerProcess) -> None:
    server_process.wait_ready()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "busy"
    request.inputs["seconds"].CopyFrom(tf.make_tensor_proto(np.float64(1.5)))
    metrics_url = f"http://127.0.0.1:{server_process.rest_port}/monitoring/prometheus/metrics"
    with grpc.insecure_channel(f"127.0.0.1:{server_process.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        future: Any = stub.Predict.future(request, timeout=60)
        busy = 'tfstack_model_server_requests_in_flight{transport="grpc"} 1.0'
        wait_until(lambda: busy in http("GET", metrics_url)[1])
        server_process.process.send_signal(signal.SIGTERM)
        response = future.result()
    assert response.outputs["iterations"].int64_val[0] > 0
    assert server_process.process.wait(timeout=60) == 0
    assert any("shutting down gracefully" in line for line in server_process.lines)
    assert any("serving.model_server stopped" in line for line in server_process.lines)


def test_a_bad_config_file_fails_start_up_with_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text("model_config_list { config { name: 'x' } }")
    result = subprocess.run(
        [sys.executable, "-m", "serving.model_server", f"--port={free_port()}", f"--model_config_file={config}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert f"Expected a base_path for model 'x'. Received: none in {config}" in result.stderr.strip().splitlines()[-1]


def test_rest_request_over_the_timeout_is_504(start_server: Any, busy_base: Path) -> None:
    server = start_server("--model_name=busy", f"--model_base_path={busy_base}", "--rest_api_timeout_in_ms=200")
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/busy:predict"
    status, body = http("POST", url, '{"inputs": {"seconds": 0.6}}')
    assert status == 504
    assert "--rest_api_timeout_in_ms=200" in body["error"]
    # The server answers normally afterwards (polled: on a loaded machine the abandoned 0.6 s run still
    # competes for the two cores, and the next request can itself pass the 200 ms timeout).
    wait_until(lambda: http("POST", url, '{"inputs": {"seconds": 0.0}}')[0] == 200, timeout=30)
