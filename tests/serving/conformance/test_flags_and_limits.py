"""tensorflow_model_server's flags (model_servers/main.cc, server.cc), gRPC TLS and health, deadlines, limits.

- main.cc: every flag is implemented with upstream's meaning or refused by name;
- server.cc BuildSslServerCredentials: SSLConfig {server_key, server_cert, custom_ca, client_verify};
- server.cc: EnableDefaultHealthCheckService + SetServingStatus("ModelService"/"PredictionService", true);
- ours (documented in docs/model_server.md): a bound on one request's decoded tensors.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.model_server import FlagError, parse_flags
from serving.model_server.flags import FLAG_NAMES, OUR_FLAGS, UNSUPPORTED_UPSTREAM_FLAGS

from .conftest import wait_until

#: The flags tensorflow_model_server defines (tensorflow_serving/model_servers/main.cc, 2.21-era source).
UPSTREAM_FLAGS = [
    "allow_version_labels_for_unavailable_models", "batching_parameters_file", "enable_batching",
    "enable_grpc_healthcheck_service", "enable_model_warmup", "enable_per_model_batching_parameters",
    "enable_profiler", "enable_serialization_as_tensor_content", "enable_signature_method_name_check",
    "file_system_poll_wait_seconds", "flush_filesystem_caches", "grpc_channel_arguments", "grpc_max_threads",
    "grpc_socket_path", "load_retry_interval_micros", "max_num_load_retries", "mixed_precision", "model_base_path",
    "model_config_file", "model_config_file_poll_wait_seconds", "model_name", "monitoring_config_file",
    "num_load_threads", "num_request_iterations_for_warmup", "num_tflite_interpreters_per_pool", "num_tflite_pools",
    "num_unload_threads", "per_process_gpu_memory_fraction", "platform_config_file", "port", "prefer_tflite_model",
    "remove_unused_fields_from_bundle_metagraph", "rest_api_enable_cors_support", "rest_api_num_threads",
    "rest_api_port", "rest_api_timeout_in_ms", "saved_model_tags", "skip_initialize_tpu", "ssl_config_file",
    "tensorflow_inter_op_parallelism", "tensorflow_intra_op_parallelism", "tensorflow_session_config_file",
    "tensorflow_session_parallelism", "thread_pool_factory_config_file", "use_alts_credentials", "version",
    "xla_cpu_compilation_enabled", "xla_gpu_compilation_enabled",
]


def test_every_upstream_flag_is_implemented_or_refused_by_name() -> None:
    for name in UPSTREAM_FLAGS:
        assert (name in FLAG_NAMES) != (name in UNSUPPORTED_UPSTREAM_FLAGS), name
        if name in UNSUPPORTED_UPSTREAM_FLAGS:
            with pytest.raises(FlagError, match=f"Flag --{name} is a tensorflow_model_server flag"):
                parse_flags([f"--{name}=1", "--model_base_path=/m"])
    for name in ("allow_version_labels_for_unavailable_models", "enable_signature_method_name_check",
                 "ssl_config_file", "enable_grpc_healthcheck_service"):
        assert name in FLAG_NAMES
    assert set(FLAG_NAMES) - OUR_FLAGS <= set(UPSTREAM_FLAGS)
    assert not OUR_FLAGS & set(UPSTREAM_FLAGS)  # ours (docs/model_server.md, "Flags"): upstream has no such flag


def test_batching_parameters_without_enable_batching_is_refused() -> None:
    """server.cc BuildAndStart: batching_parameters_file set without enable_batching is INVALID_ARGUMENT."""
    with pytest.raises(FlagError, match="batching_parameters_file is set without setting"):
        parse_flags(["--model_base_path=/m", "--batching_parameters_file=/b.config"])


# ------------------------------------------------------------------------------------------ TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=tfstack test CA", cwd=d)
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        extra = ["-extfile", "server.ext"] if name == "server" else []
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", *extra, cwd=d)
    return {p.name: p.read_bytes() for p in d.iterdir() if p.suffix in (".pem", ".key")}


def _ssl_config(path: Path, certs: dict[str, bytes], client_verify: bool) -> Path:
    def quoted(data: bytes) -> str:
        return '"' + data.decode().replace("\n", "\\n") + '"'

    path.write_text(
        f"server_key: {quoted(certs['server.key'])}\nserver_cert: {quoted(certs['server.pem'])}\n"
        f"custom_ca: {quoted(certs['ca.pem'])}\nclient_verify: {'true' if client_verify else 'false'}\n"
    )
    return path


def _predict(channel: grpc.Channel) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add(size=1)
    request.inputs["x"].float_val.append(2.0)
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return float(response.outputs["y"].float_val[0])


def test_grpc_tls(start_server: Any, half_plus_two: Path, certificates: dict[str, bytes], tmp_path: Path) -> None:
    config = _ssl_config(tmp_path / "ssl.config", certificates, client_verify=False)
    server = start_server("--model_name=default", f"--model_base_path={half_plus_two}", f"--ssl_config_file={config}")
    credentials = grpc.ssl_channel_credentials(root_certificates=certificates["ca.pem"])
    with grpc.secure_channel(f"localhost:{server.grpc_port}", credentials) as channel:
        assert _predict(channel) == 3.0
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel, pytest.raises(grpc.RpcError):
        _predict(channel)


def test_grpc_mutual_tls(start_server: Any, half_plus_two: Path, certificates: dict[str, bytes],
                         tmp_path: Path) -> None:
    """client_verify: true -> GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY against custom_ca."""
    config = _ssl_config(tmp_path / "ssl.config", certificates, client_verify=True)
    server = start_server("--model_name=default", f"--model_base_path={half_plus_two}", f"--ssl_config_file={config}")
    with_client = grpc.ssl_channel_credentials(root_certificates=certificates["ca.pem"],
                                               private_key=certificates["client.key"],
                                               certificate_chain=certificates["client.pem"])
    with grpc.secure_channel(f"localhost:{server.grpc_port}", with_client) as channel:
        assert _predict(channel) == 3.0
    without = grpc.ssl_channel_credentials(root_certificates=certificates["ca.pem"])
    with grpc.secure_channel(f"localhost:{server.grpc_port}", without) as channel, pytest.raises(grpc.RpcError):
        _predict(channel)


# ------------------------------------------------------------------------------------------ health


def _health_check(channel: grpc.Channel, service: str) -> int:
    from serving.model_server.health import HEALTH_SERVICE

    check = channel.unary_unary(f"/{HEALTH_SERVICE}/Check", request_serializer=None, response_deserializer=None)
    payload = service.encode()
    answer = check(bytes([0x0A, len(payload)]) + payload, timeout=30)
    assert answer[0] == 0x08
    return answer[1]


def test_grpc_health_service(start_server: Any, half_plus_two: Path) -> None:
    server = start_server("--model_name=default", f"--model_base_path={half_plus_two}",
                          "--enable_grpc_healthcheck_service")
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        for service in ("", "ModelService", "PredictionService"):
            assert _health_check(channel, service) == 1  # SERVING
        with pytest.raises(grpc.RpcError) as info:
            _health_check(channel, "nope")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_service_is_off_by_default(default_server: Any) -> None:
    address = f"127.0.0.1:{default_server.grpc_port}"
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
        _health_check(channel, "")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ------------------------------------------------------------------------------------------ limits and deadlines


def test_a_tiny_request_declaring_a_huge_tensor_is_refused_before_allocation(default_server: Any) -> None:
    """Ours: shape [2**27] with one float_val would decode to 512 MiB (TensorFlow repeats the last value);
    the server refuses it with RESOURCE_EXHAUSTED before decoding anything."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add(size=2**27)
    request.inputs["x"].float_val.append(1.0)
    assert len(request.SerializeToString()) < 40
    with grpc.insecure_channel(f"127.0.0.1:{default_server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 268435456 bytes" in info.value.details()
    assert "shape [134217728]" in info.value.details()


@pytest.fixture
def one_thread_probe(start_server: Any, probe_version: Path) -> Iterator[Any]:
    yield start_server("--model_name=probe", f"--model_base_path={probe_version.parent}", "--grpc_max_threads=1")


def _slow_request(micros: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "probe"
    request.model_spec.signature_name = "slow"
    request.inputs["micros"].dtype = types_pb2.DT_INT64
    request.inputs["micros"].tensor_shape.dim.add(size=1)
    request.inputs["micros"].int64_val.append(micros)
    return request


def test_grpc_deadline_reaches_the_caller_during_execution_and_queued_calls_are_not_run(
    one_thread_probe: Any,
) -> None:
    """The caller gets DEADLINE_EXCEEDED at its deadline while the model still runs; a call whose caller gave
    up while it waited for the (single) worker thread is not run at all."""
    with grpc.insecure_channel(f"127.0.0.1:{one_thread_probe.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        busy = threading.Thread(target=lambda: stub.Predict(_slow_request(3_000_000), timeout=60))
        busy.start()
        in_flight = one_thread_probe.metrics.in_flight.labels("grpc")
        wait_until(lambda: in_flight._value.get() == 1)  # the slow call holds the only worker thread
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(_slow_request(1000), timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 2.5
        busy.join(timeout=60)
    page = one_thread_probe.metrics.exposition()[0].decode()
    ran_ok = [line for line in page.splitlines()
              if line.startswith(":tensorflow:serving:request_count{") and 'status="OK"' in line]
    assert ran_ok == [':tensorflow:serving:request_count{model_name="probe",status="OK"} 1']  # queued one: not run
