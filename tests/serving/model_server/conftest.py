"""Fixtures for the model server tests: model directories, in-process servers on free ports, HTTP calls.

Servers run in this process on real loopback sockets (fast: TensorFlow is imported once); the CLI and
SIGTERM tests start real subprocesses instead. Readiness is polled, never slept on.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.upstream import SHARED_UPSTREAM, TF_SERVING_TESTDATA, tf_serving_testdata

#: Upstream's own saved_model_half_plus_two_cpu version 123 (shared/upstream; tests/upstream.py), unchanged.
HALF_PLUS_TWO = SHARED_UPSTREAM.joinpath(*TF_SERVING_TESTDATA, "saved_model_half_plus_two_cpu", "00000123")
START_TIMEOUT = 120.0
REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: bytes | str | None = None, timeout: float = 30.0) -> tuple[int, Any]:
    """One HTTP call; returns (status, parsed JSON or text)."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, kind = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in kind and raw else raw.decode()


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except (OSError, ValueError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)  # polling interval, not synchronisation


def available_versions(rest_port: int, model: str) -> set[int]:
    status, body = http("GET", f"http://127.0.0.1:{rest_port}/v1/models/{model}")
    if status != 200:
        return set()
    return {int(v["version"]) for v in body["model_version_status"] if v["state"] == "AVAILABLE"}


def add_version(base: Path, version: int | str, source: Path = HALF_PLUS_TWO) -> Path:
    """Copy a version in atomically, as the export contract requires (copy aside, then rename)."""
    if source == HALF_PLUS_TWO:
        source = tf_serving_testdata("saved_model_half_plus_two_cpu", "00000123")  # skips, naming it, if absent
    base.mkdir(parents=True, exist_ok=True)
    staging = base.parent / f".staging-{base.name}-{version}"
    shutil.copytree(source, staging)
    target = base / str(version)
    staging.rename(target)
    return target


def add_broken_version(base: Path, version: int) -> Path:
    staging = base.parent / f".staging-broken-{version}"
    staging.mkdir(parents=True)
    (staging / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    target = base / str(version)
    staging.rename(target)
    return target


@pytest.fixture
def model_base(tmp_path: Path) -> Path:
    """``<tmp>/models/half_plus_two`` with version 1 of the half_plus_two fixture."""
    base = tmp_path / "models" / "half_plus_two"
    add_version(base, 1)
    return base


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start in-process servers on free loopback ports; all are stopped at teardown."""
    from serving.model_server import ModelServer, parse_flags

    servers: list[Any] = []

    def start(*flags: str, **overrides: Any) -> Any:
        argv = ["--port=0", f"--rest_api_port={free_port()}", *flags]
        options = replace(parse_flags(argv), host="127.0.0.1", grace_period_seconds=5.0, **overrides)
        server = ModelServer(options)
        servers.append(server)
        server.start(timeout=START_TIMEOUT)
        return server

    yield start
    for server in servers:
        server.stop(grace=5.0)


def build_tagged_model(target: Path) -> Path:
    """A two-input model of ours (not an upstream one): ``predict_x_and_tag`` takes ``x`` float ``[None]`` and
    ``tag`` string ``[None]`` and answers ``y = 0.5 x + 2`` and ``tag_bytes`` (the tag echoed back)."""
    import tensorflow as tf

    class Tagged(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.string, name="tag")])
        def predict(self, x: tf.Tensor, tag: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 0.5 * x + 2.0, "tag_bytes": tf.identity(tag)}

    module = Tagged()
    tf.saved_model.save(module, str(target), signatures={"predict_x_and_tag": module.predict})
    return target


@pytest.fixture(scope="session")
def tagged_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One version directory of :func:`build_tagged_model`, built once per session."""
    return build_tagged_model(tmp_path_factory.mktemp("tagged") / "1")


@pytest.fixture
def hp2_server(start_server: Callable[..., Any], model_base: Path, tagged_version: Path) -> Any:
    """A server with models ``half_plus_two`` (version 1: upstream's saved_model_half_plus_two_cpu)
    and ``tagged`` (:func:`build_tagged_model`, version 1), and Prometheus metrics enabled."""
    root = model_base.parent.parent
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    add_version(root / "tagged", 1, tagged_version)
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "half_plus_two" base_path: "{model_base}" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "tagged" base_path: "{root / "tagged"}" model_platform: "tensorflow" }}\n'
        "}\n"
    )
    return start_server(f"--model_config_file={config}", f"--monitoring_config_file={monitoring}")


def write_tfrecord(path: Path, records: list[bytes]) -> None:
    """A TFRecord file written by TensorFlow's own writer (TF Serving's warm-up format)."""
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def build_contract_model(target: Path) -> Path:
    """A SavedModel following the trainer's export contract (images bytes -> probabilities, ...), 8x8 px."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    class Contract(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(4.0)
            self.names = tf.constant(["dark", "light"])

        def _head(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
            brightness = tf.reduce_mean(pixels, axis=[1, 2, 3]) / 255.0
            probabilities = tf.nn.softmax(tf.stack([1.0 - brightness, brightness], axis=1) * self.scale)
            class_id = tf.argmax(probabilities, axis=1)
            return {
                "probabilities": probabilities,
                "class_id": class_id,
                "class_name": tf.gather(self.names, class_id),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            def decode(data: tf.Tensor) -> tf.Tensor:
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.image.resize(tf.cast(image, tf.float32), [8, 8])

            return self._head(tf.map_fn(decode, images, fn_output_signature=tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="pixels")])
        def pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
            return self._head(pixels)

    module = Contract()
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve,
                                                         "predict_pixels": module.pixels})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.signature_name = "predict_pixels"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(tf.zeros([1, 8, 8, 3])))
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(request)
    write_tfrecord(target / "assets.extra" / "tf_serving_warmup_requests", [log.SerializeToString()])
    return target


@pytest.fixture(scope="session")
def contract_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One version directory of a contract-following model, built once per session."""
    return build_contract_model(tmp_path_factory.mktemp("contract") / "1")


def png(value: int, size: int = 8) -> bytes:
    """A grey PNG of ``value`` (0..255), encoded by TensorFlow."""
    import tensorflow as tf

    return tf.io.encode_png(tf.fill([size, size, 3], tf.constant(value, tf.uint8))).numpy()


def python() -> str:
    return sys.executable




def half_plus_two_warmup_record() -> bytes:
    """One warm-up record (TF Serving's PredictionLog) for half_plus_two's default signature: x = [1.0]."""
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].dtype = 1  # DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add(size=1)
    request.inputs["x"].float_val.append(1.0)
    return log.SerializeToString()
