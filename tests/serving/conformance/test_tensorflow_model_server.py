"""Ports of tensorflow_serving/model_servers/tensorflow_model_server_test.py and g3doc's documented examples.

Each test names the upstream test (or document) whose expectation it checks. Upstream runs the real
``tensorflow_model_server`` binary on its testdata; here the local server runs on the same files
(shared/upstream, unchanged; tests/upstream.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from .conftest import http, upstream_model, wait_until, write_config

UPSTREAM_TEST = "tensorflow_serving/model_servers/tensorflow_model_server_test.py"
RPC_TIMEOUT = 30.0


@pytest.fixture
def stubs(default_server: Any) -> Iterator[tuple[Any, Any]]:
    with grpc.insecure_channel(f"127.0.0.1:{default_server.grpc_port}") as channel:
        yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
               model_service_pb2_grpc.ModelServiceStub(channel))


def _url(server: Any, path: str) -> str:
    return f"http://127.0.0.1:{server.rest_port}{path}"


def verify_predict(port: int, expected_output: float, expected_version: int, model_name: str = "default",
                   specify_output: bool = True, signature_name: str = "serving_default") -> None:
    """tensorflow_model_server_test_base.py VerifyPredictRequest: x = [2.0] of shape [1], one float back."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add(size=1)
    if specify_output:
        request.output_filter.append("y")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=RPC_TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected_output]
    assert result.model_spec.name == model_name
    assert result.model_spec.signature_name == signature_name
    assert result.model_spec.version.value == expected_version


# ------------------------------------------------------------------------------------------------ gRPC


def test_get_model_status(stubs: tuple[Any, Any]) -> None:
    """testGetModelStatus: one version, 123, AVAILABLE, error_code 0."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = stubs[1].GetModelStatus(request, timeout=RPC_TIMEOUT)
    assert len(result.model_version_status) == 1
    status = result.model_version_status[0]
    assert status.version == 123
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0


def test_get_model_metadata(stubs: tuple[Any, Any]) -> None:
    """testGetModelMetadata: name default, version 123, one metadata entry signature_def with serving_default."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "default"
    result = stubs[0].GetModelMetadata(request, timeout=RPC_TIMEOUT)
    assert result.model_spec.name == "default"
    assert result.model_spec.version.value == 123
    assert list(result.metadata) == ["signature_def"]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    result.metadata["signature_def"].Unpack(signatures)
    default = signatures.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 1]
    assert default.outputs["y"].dtype == types_pb2.DT_FLOAT


def _classify(stub: Any, name: str, signature: str = "classify_x_to_y") -> Any:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.extend([2.0])
    return stub.Classify(request, timeout=RPC_TIMEOUT)


def _regress(stub: Any, name: str, signature: str = "regress_x_to_y") -> Any:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.extend([2.0])
    return stub.Regress(request, timeout=RPC_TIMEOUT)


def test_classify(stubs: tuple[Any, Any]) -> None:
    """testClassify (_TestClassify): one classification, one class, score 3.0; model_spec echoed."""
    result = _classify(stubs[0], "default")
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert (result.model_spec.name, result.model_spec.signature_name) == ("default", "classify_x_to_y")
    assert result.model_spec.version.value == 123


def test_regress(stubs: tuple[Any, Any]) -> None:
    """testRegress (_TestRegress): one regression, value 3.0."""
    result = _regress(stubs[0], "default")
    assert [r.value for r in result.result.regressions] == [3.0]
    assert result.model_spec.version.value == 123


@pytest.mark.parametrize("method", ["classify", "regress"])
def test_classify_and_regress_on_tf2_model(start_server: Any, tmp_path: Path, method: str) -> None:
    """testClassifyTf2 / testRegressTf2: TF2 signatures carry method name tensorflow/serving/predict, and
    classify/regress still work, because the method name is checked only with
    --enable_signature_method_name_check (off by default)."""
    base = upstream_model(tmp_path, "saved_model_half_plus_two_tf2_cpu")
    server = start_server("--model_name=default", f"--model_base_path={base}")
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        if method == "classify":
            assert _classify(stub, "default").result.classifications[0].classes[0].score == 3.0
        else:
            assert [r.value for r in _regress(stub, "default").result.regressions] == [3.0]


def test_method_name_check_flag_refuses_tf2_classify(start_server: Any, tmp_path: Path) -> None:
    """server.cc SetSignatureMethodNameCheckFeature + classifier.cc PreProcessClassification: with the flag,
    a classify call on a signature whose method name is not tensorflow/serving/classify is INVALID_ARGUMENT."""
    base = upstream_model(tmp_path, "saved_model_half_plus_two_tf2_cpu")
    server = start_server("--model_name=default", f"--model_base_path={base}",
                          "--enable_signature_method_name_check")
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            _classify(stub, "default")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == ("Expected classification signature method_name to be "
                                        "tensorflow/serving/classify. Was: tensorflow/serving/predict")
        with pytest.raises(grpc.RpcError) as info:
            _regress(stub, "default")
        assert info.value.details() == ("Expected regression signature method_name to be "
                                        "tensorflow/serving/regress. Was: tensorflow/serving/predict")
        verify_predict(server.grpc_port, 3.0, 123)  # predict signatures pass the check


def test_predict_saved_model(default_server: Any) -> None:
    """testPredictSavedModel (_TestPredict): x = [2.0] -> y = [3.0], with and without an output filter."""
    verify_predict(default_server.grpc_port, 3.0, 123)
    verify_predict(default_server.grpc_port, 3.0, 123, specify_output=False)


def test_good_model_config(start_server: Any, tmp_path: Path) -> None:
    """testGoodModelConfig: half_plus_two answers 3.0 and half_plus_three 4.0, both version 123."""
    config = write_config(tmp_path / "good.config", {
        "half_plus_two": upstream_model(tmp_path, "saved_model_half_plus_two_cpu"),
        "half_plus_three": upstream_model(tmp_path, "saved_model_half_plus_three"),
    })
    server = start_server(f"--model_config_file={config}")
    for specify in (True, False):
        verify_predict(server.grpc_port, 3.0, 123, model_name="half_plus_two", specify_output=specify)
        verify_predict(server.grpc_port, 4.0, 123, model_name="half_plus_three", specify_output=specify)


def test_model_config_reload(start_server: Any, tmp_path: Path) -> None:
    """testModelConfigReload: with --model_config_file_poll_wait_seconds=1 a rewritten file is served."""
    config = write_config(tmp_path / "model_config.txt",
                          {"half_plus_two": upstream_model(tmp_path, "saved_model_half_plus_two_cpu")})
    server = start_server(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1")
    verify_predict(server.grpc_port, 3.0, 123, model_name="half_plus_two", specify_output=False)
    write_config(config, {"half_plus_three": upstream_model(tmp_path, "saved_model_half_plus_three")})

    def served() -> bool:
        try:
            verify_predict(server.grpc_port, 4.0, 123, model_name="half_plus_three", specify_output=False)
        except grpc.RpcError:
            return False
        return True

    wait_until(served)


def test_model_config_reload_with_zero_poll_period(start_server: Any, tmp_path: Path) -> None:
    """testModelConfigReloadWithZeroPollPeriod: with a poll period of 0 the file is read once; a rewrite is
    ignored (upstream sleeps poll_period + 1 s; here a reload through gRPC proves the server is live)."""
    config = write_config(tmp_path / "model_config.txt",
                          {"half_plus_two": upstream_model(tmp_path, "saved_model_half_plus_two_cpu")})
    server = start_server(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=0")
    write_config(config, {"half_plus_three": upstream_model(tmp_path, "saved_model_half_plus_three")})
    assert "config-poller" not in [t.name for t in server._threads]  # no config poller: nothing to wait for
    verify_predict(server.grpc_port, 3.0, 123, model_name="half_plus_two", specify_output=False)


def test_bad_model_config(tmp_path: Path) -> None:
    """testBadModelConfig: an unparsable file fails start-up with 'Error parsing text-format
    tensorflow.serving.ModelServerConfig' on stderr."""
    import subprocess
    import sys

    bad = tmp_path / "bad_model_config.txt"
    bad.write_text("improperly formatted file")
    proc = subprocess.run([sys.executable, "-m", "serving.model_server", "--port=0", f"--model_config_file={bad}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in proc.stderr


# ------------------------------------------------------------------------------------------------ REST


def test_classify_rest(default_server: Any) -> None:
    """testClassifyREST: {'results': [[['', 3.0]]]}."""
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert http("POST", _url(default_server, "/v1/models/default:classify"), json.dumps(body)) == (
        200, {"results": [[["", 3.0]]]})


def test_regress_rest(default_server: Any) -> None:
    """testRegressREST: {'results': [3.0]}."""
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert http("POST", _url(default_server, "/v1/models/default:regress"), json.dumps(body)) == (
        200, {"results": [3.0]})


def test_predict_rest(default_server: Any) -> None:
    """testPredictREST: instances [2.0, 3.0, 4.0] (shape [3] for an x of [-1, 1]: no shape check)."""
    assert http("POST", _url(default_server, "/v1/models/default:predict"),
                json.dumps({"instances": [2.0, 3.0, 4.0]})) == (200, {"predictions": [3.0, 3.5, 4.0]})


def test_predict_columnar_rest(default_server: Any) -> None:
    """testPredictColumnarREST: inputs [2.0, 3.0, 4.0] -> outputs [3.0, 3.5, 4.0]."""
    assert http("POST", _url(default_server, "/v1/models/default:predict"),
                json.dumps({"inputs": [2.0, 3.0, 4.0]})) == (200, {"outputs": [3.0, 3.5, 4.0]})


def test_get_status_rest(default_server: Any) -> None:
    """testGetStatusREST: the exact status document."""
    assert http("GET", _url(default_server, "/v1/models/default")) == (200, {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    })


def test_get_model_metadata_rest(default_server: Any) -> None:
    """testGetModelMetadataREST (half_plus_two_model_metadata.json): model_spec, and the SignatureDefMap as
    JSON with proto field names, int64 sizes as strings, empty fields printed."""
    status, body = http("GET", _url(default_server, "/v1/models/default/metadata"))
    assert status == 200
    assert body["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert sorted(signatures) == ["classify_x_to_y", "regress_x2_to_y3", "regress_x_to_y", "regress_x_to_y2",
                                  "serving_default"]
    column = {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}
    assert signatures["serving_default"] == {
        "inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": column, "name": "x:0"}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": column, "name": "y:0"}},
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }
    assert signatures["regress_x2_to_y3"]["inputs"]["inputs"] == {
        "dtype": "DT_FLOAT", "tensor_shape": column, "name": "x2:0"}
    assert signatures["classify_x_to_y"]["inputs"]["inputs"]["tensor_shape"] == {"dim": [], "unknown_rank": True}


def test_prometheus_endpoint(start_server: Any, half_plus_two: Path, tmp_path: Path) -> None:
    """testPrometheusEndpoint: with a monitoring config the metrics page has '# TYPE' lines."""
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    server = start_server("--model_name=default", f"--model_base_path={half_plus_two}",
                          f"--monitoring_config_file={monitoring}")
    status, page = http("GET", _url(server, "/monitoring/prometheus/metrics"))
    assert status == 200
    assert "# TYPE" in page


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"instances": [1.0, 2.0, 5.0]}, {"predictions": [2.5, 3.0, 4.5]}),
        ({"signature_name": "serving_default", "instances": [[1.0], [2.0], [5.0]]},
         {"predictions": [[2.5], [3.0], [4.5]]}),
    ],
    ids=["docker-quick-start", "api-rest-row-format"],
)
def test_g3doc_documented_predict(start_server: Any, half_plus_two: Path, body: dict[str, Any],
                                  expected: dict[str, Any]) -> None:
    """g3doc/docker.md quick start (`curl -d '{"instances": [1.0, 2.0, 5.0]}' .../half_plus_two:predict`
    returns `{ "predictions": [2.5, 3.0, 4.5] }`) and g3doc/api_rest.md's row format."""
    server = start_server("--model_name=half_plus_two", f"--model_base_path={half_plus_two}")
    assert http("POST", _url(server, "/v1/models/half_plus_two:predict"), json.dumps(body)) == (200, expected)


# ------------------------------------------------------------------------------------------------ half_plus_three
# Upstream's session-style (TensorFlow 1.0) model, which tf.saved_model.load refuses: served from a
# tf.compat.v1 session. Values: testGoodModelConfig (x = 2.0 -> 4.0) and g3doc/api_rest.md's examples.

HALF_PLUS_THREE_REGRESS = "tensorflow/serving/regress"
#: classifier.cc PreProcessClassification: the model has no classify signature.
NOT_A_CLASSIFIER = 'Expected classification signature outputs to contain at least one of "classes" or "scores"'


@pytest.fixture
def half_plus_three_server(start_server: Any, tmp_path: Path) -> Any:
    base = upstream_model(tmp_path, "saved_model_half_plus_three")
    return start_server("--model_name=half_plus_three", f"--model_base_path={base}")


def test_half_plus_three_predict_grpc(half_plus_three_server: Any) -> None:
    """testGoodModelConfig: half_plus_three answers 4.0 for x = 2.0, version 123, with and without output_filter."""
    for specify in (True, False):
        verify_predict(half_plus_three_server.grpc_port, 4.0, 123, model_name="half_plus_three",
                       specify_output=specify)


def test_half_plus_three_regress_and_classify_grpc(half_plus_three_server: Any) -> None:
    """Regress on its regress signature (x = 2.0 -> 4.0, as api_rest.md's regress); Classify has no classify
    signature to run and answers INVALID_ARGUMENT with classifier.cc's message."""
    with grpc.insecure_channel(f"127.0.0.1:{half_plus_three_server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        result = _regress(stub, "half_plus_three", HALF_PLUS_THREE_REGRESS)
        assert [r.value for r in result.result.regressions] == [4.0]
        assert (result.model_spec.signature_name, result.model_spec.version.value) == (HALF_PLUS_THREE_REGRESS, 123)
        with pytest.raises(grpc.RpcError) as info:
            _classify(stub, "half_plus_three", HALF_PLUS_THREE_REGRESS)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert NOT_A_CLASSIFIER in info.value.details()


def test_half_plus_three_rest_as_api_rest_md_documents(half_plus_three_server: Any) -> None:
    """g3doc/api_rest.md: predict {"instances": [1.0,2.0,5.0]} -> [3.5, 4.0, 5.5]; regress on
    tensorflow/serving/regress with x = 1.0, 2.0 -> [3.5, 4.0]; classify: 400 with the error."""
    url = _url(half_plus_three_server, "/v1/models/half_plus_three")
    assert http("POST", f"{url}:predict", json.dumps({"instances": [1.0, 2.0, 5.0]})) == (
        200, {"predictions": [3.5, 4.0, 5.5]})
    examples = {"signature_name": HALF_PLUS_THREE_REGRESS, "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert http("POST", f"{url}:regress", json.dumps(examples)) == (200, {"results": [3.5, 4.0]})
    status, body = http("POST", f"{url}:classify", json.dumps(examples))
    assert status == 400 and NOT_A_CLASSIFIER in body["error"]


def test_empty_model_name_is_invalid_argument(stubs: tuple[Any, Any], default_server: Any) -> None:
    """server_core.cc ServableRequestFromModelSpec: "ModelSpec has no name specified." (INVALID_ARGUMENT) for
    predict, classify, regress and metadata; GetModelStatus looks the name up instead (NOT_FOUND,
    get_model_status_impl.cc)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.SetInParent()
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    with pytest.raises(grpc.RpcError) as info:
        stubs[0].Predict(request, timeout=RPC_TIMEOUT)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                         "ModelSpec has no name specified.")
    with pytest.raises(grpc.RpcError) as info:
        _regress(stubs[0], "")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.SetInParent()
    with pytest.raises(grpc.RpcError) as info:
        stubs[1].GetModelStatus(status, timeout=RPC_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
