"""Ports of tensorflow_serving/model_servers/http_rest_api_handler_test.cc and util/json_tensor_test.cc.

The handler tests run on ``saved_model_half_plus_two_2_versions`` with the specific version policy
``{123}`` and the label ``Version_Label -> 123`` (set by a config reload once 123 is AVAILABLE, as the
test's SetUpServerCore does); json_tensor.cc's rules are checked where they reach the REST API.
"""

from __future__ import annotations

import base64
import http.client as http_client
import json
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from .conftest import http, upstream_model, write_config

MODEL = "saved_model_half_plus_two_2_versions"


@pytest.fixture
def handler_server(start_server: Any, tmp_path: Path) -> Any:
    """SetUpServerCore: version 123 of the 2-versions model, then a reload adding label Version_Label."""
    base = upstream_model(tmp_path, MODEL)
    policy = "model_version_policy { specific { versions: 123 } }"
    server = start_server(f"--model_config_file={write_config(tmp_path / 'models.config', {MODEL: base}, policy)}")
    request = model_management_pb2.ReloadConfigRequest()
    model = request.config.model_config_list.config.add(name=MODEL, base_path=str(base), model_platform="tensorflow")
    model.model_version_policy.specific.versions.append(123)
    model.version_labels["Version_Label"] = 123
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)
    return server


def _post(server: Any, path: str, body: str) -> tuple[int, Any]:
    return http("POST", f"http://127.0.0.1:{server.rest_port}{path}", body)


def _get(server: Any, path: str) -> tuple[int, Any]:
    return http("GET", f"http://127.0.0.1:{server.rest_port}{path}")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/foo"), ("POST", "/v1/foo"), ("GET", "/v1/models/debug/model_name"), ("POST", "/v1/models"),
        ("GET", "/v1/models/foo:predict"), ("GET", "/v1/models/foo/version/50:predict"),
        ("POST", "/v1/models/foo/version/50:regress"), ("POST", "/v1/models/foo/versions/HELLO:regress"),
        ("POST", "/v1/models/foo/metadata"), ("POST", "/v1/models/foo/label/some_label:regress"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress"),
        ("POST", "/v1/models/foo/versions/some_label:regress"),
    ],
)
def test_unsupported_api_calls_are_malformed(handler_server: Any, method: str, path: str) -> None:
    """UnsupportedApiCalls: INVALID_ARGUMENT (400) 'Malformed request'."""
    status, body = http(method, f"http://127.0.0.1:{handler_server.rest_port}{path}", "" if method == "POST" else None)
    assert status == 400
    assert "Malformed request" in body["error"]


def test_unsupported_api_calls_missing_name_and_huge_version(handler_server: Any) -> None:
    """UnsupportedApiCalls: 'Missing model name' for GET /v1/models; 'Failed to convert version' beyond int64."""
    assert _get(handler_server, "/v1/models") == (400, {"error": "Missing model name in request."})
    status, body = _post(handler_server, "/v1/models/foo/versions/9223372036854775808:regress", "")
    assert status == 400 and "Failed to convert version" in body["error"]


@pytest.mark.parametrize("path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict",
                                  f"/v1/models/{MODEL}99:predict"])
def test_predict_model_name_version_errors(handler_server: Any, path: str) -> None:
    """PredictModelNameVersionErrors: NOT_FOUND (404)."""
    assert _post(handler_server, path, '{ "instances": [1] }')[0] == 404


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (f"/v1/models/{MODEL}:predict", "", "JSON Parse error: The document is empty"),
        (f"/v1/models/{MODEL}:predict", "instances = [1, 2]", "JSON Parse error: Invalid value"),
        (f"/v1/models/{MODEL}:predict", '{ "instances": ["x", "y"] }', "not of expected type: float"),
        (f"/v1/models/{MODEL}/labels/Version_Nonexistent:predict", '{ "instances": ["x", "y"] }',
         "Unrecognized servable version label"),
        (f"/v1/models/{MODEL}:predict", '{ "signature_name": 100 }', "'signature_name' key must be a string value."),
    ],
    ids=["empty", "bad-json", "type", "label", "signature-type"],
)
def test_predict_request_errors(handler_server: Any, path: str, body: str, message: str) -> None:
    """PredictRequestErrors: INVALID_ARGUMENT (400) with these messages in the JSON error."""
    status, answer = _post(handler_server, path, body)
    assert status == 400
    assert message in answer["error"]


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (f"/v1/models/{MODEL}:predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}',
         {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
        (f"/v1/models/{MODEL}/versions/123:predict", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
        (f"/v1/models/{MODEL}/labels/Version_Label:predict", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
        (f"/v1/models/{MODEL}/versions/123:predict", '{"signature_name": "serving_default", "instances": [3.0, 4.0]}',
         {"predictions": [3.5, 4.0]}),
        (f"/v1/models/{MODEL}/versions/123:predict", '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}',
         {"outputs": [3.5, 4.0]}),
        (f"/v1/models/{MODEL}:regress", '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }',
         {"results": [42]}),
        (f"/v1/models/{MODEL}/versions/123:regress",
         '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', {"results": [42]}),
        (f"/v1/models/{MODEL}/labels/Version_Label:regress",
         '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', {"results": [42]}),
        (f"/v1/models/{MODEL}:classify", '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }',
         {"results": [[["", 12]]]}),
        (f"/v1/models/{MODEL}/labels/Version_Label:classify",
         '{"signature_name": "classify_x_to_y", "examples": [ { "x": 10.0 } ] }', {"results": [[["", 7]]]}),
    ],
    ids=["predict-2x2", "predict-version", "predict-label", "predict-signature", "predict-columnar", "regress",
         "regress-version", "regress-label", "classify", "classify-label"],
)
def test_predict_regress_classify(handler_server: Any, path: str, body: str, expected: dict[str, Any]) -> None:
    """Predict, Regress, Classify: answers (and Content-Type application/json)."""
    assert _post(handler_server, path, body) == (200, expected)


@pytest.mark.parametrize("path", [f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/versions/123",
                                  f"/v1/models/{MODEL}/labels/Version_Label"])
def test_get_status(handler_server: Any, path: str) -> None:
    """GetStatus: all versions, a version, a label: the same document."""
    assert _get(handler_server, path) == (200, {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})


def test_get_model_metadata(handler_server: Any) -> None:
    """GetModelMetadata: model_spec with the version, and the signature_def map."""
    status, body = _get(handler_server, f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": "123"}
    assert "classify_x2_to_y3" in body["metadata"]["signature_def"]["signature_def"]


def test_chunked_request_body_is_accepted(handler_server: Any) -> None:
    """TF Serving's HTTP server (libevent) reads chunked bodies: no 411."""
    connection = http_client.HTTPConnection("127.0.0.1", handler_server.rest_port, timeout=30)
    try:
        body = json.dumps({"instances": [1.0, 2.0]}).encode()
        connection.request("POST", f"/v1/models/{MODEL}:predict", body=iter([body[:5], body[5:]]),
                           encode_chunked=True)
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == (200, {"predictions": [2.5, 3.0]})
    finally:
        connection.close()


# ------------------------------------------------------------------------------------------ json_tensor.cc


@pytest.mark.parametrize(("signature", "dtype"), [("half", "half"), ("bfloat16", "bfloat16"), ("uint16", "uint16"),
                                                   ("complex64", "complex64")])
def test_json_refuses_dtypes_it_cannot_carry(probe_server: Any, signature: str, dtype: str) -> None:
    """json_tensor.cc AddValueToTensor: dtypes other than float, double, int8/16/32/64, uint8/32/64, bool and
    string are UNIMPLEMENTED (501) "Conversion of JSON Value: ... to type: <dtype>"."""
    status, body = _post(probe_server, "/v1/models/probe:predict",
                         json.dumps({"signature_name": signature, "instances": [1]}))
    assert (status, body) == (501, {"error": f"Conversion of JSON Value: 1 to type: {dtype}"})


def test_json_refuses_to_write_outputs_it_cannot_carry(probe_server: Any) -> None:
    """json_tensor.cc AddSingleValueAndAdvance / FromJsonSingleTensorErrors ('tensor type: complex64'): the
    model runs over gRPC, but its half output cannot be written as JSON."""
    from serving.model_server.errors import InvalidArgument
    from serving.model_server.tensors import outputs_to_json

    with pytest.raises(InvalidArgument, match="Failed to write JSON value for tensor type: half"):
        outputs_to_json({"y": np.ones(2, np.float16)}, "row")
    with pytest.raises(InvalidArgument, match="Failed to write JSON value for tensor type: complex64"):
        outputs_to_json({"y": np.ones(2, np.complex64)}, "columnar")


def test_mixed_numbers_for_a_float_tensor(default_server: Any) -> None:
    """MixedInputForFloatTensor: ints and floats mixed feed a float tensor."""
    assert _post(default_server, "/v1/models/default:predict", '{"instances": [1, 2.0, 3, 0.0]}') == (
        200, {"predictions": [2.5, 3.0, 3.5, 2.0]})


def test_float_beyond_float32_becomes_inf(default_server: Any) -> None:
    """FloatTensorThatExceedsMaxReturnsInf: 3.5e38 in a float tensor is +inf (written as Infinity)."""
    status, raw = http("POST", f"http://127.0.0.1:{default_server.rest_port}/v1/models/default:predict",
                       '{"instances": [3.5e38]}')
    assert status == 200 and raw == {"predictions": [float("inf")]}


def test_boolean_example_features_are_int64(probe_server: Any) -> None:
    """json_tensor.cc AddValueToFeature: true/false become int64 1/0."""
    body = {"signature_name": "int_feature", "examples": [{"b": True}, {"b": False}, {"b": 7}]}
    assert _post(probe_server, "/v1/models/probe:regress", json.dumps(body)) == (200, {"results": [1.0, 0.0, 7.0]})


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        ([1, 2.5], "Unexpected element type in feature: names expecting type: int64"),
        ([2.5, 1], "Unexpected element type in feature: names expecting type: float"),
        (["a", 1], "Unexpected element type in feature: names expecting type: bytes"),
        ([None], "names has element with unexpected JSON type: Null"),
        ([{"a": 1}], "names has element with unexpected JSON type: Object"),
        ([[1]], "names has element with unexpected JSON type: Array"),
        ([18446744073709551615], "Only int64_t is supported"),
    ],
    ids=["int-then-float", "float-then-int", "bytes-then-int", "null", "object", "array", "uint64"],
)
def test_example_feature_errors(probe_server: Any, feature: list[Any], message: str) -> None:
    """ClassifyRegressRequestTest.JsonErrors: a feature's first element fixes its kind; others are refused."""
    body = {"signature_name": "int_feature", "examples": [{"names": feature}]}
    status, answer = _post(probe_server, "/v1/models/probe:regress", json.dumps(body))
    assert status == 400
    assert message in answer["error"]


def test_invalid_utf8_string_outputs_are_written_raw(probe_server: Any) -> None:
    """json_tensor.cc writes string_val bytes as they are (no replacement), unless the alias ends in _bytes."""
    text = base64.b64encode(b"ok\xff").decode()
    connection = http_client.HTTPConnection("127.0.0.1", probe_server.rest_port, timeout=30)
    try:
        connection.request("POST", "/v1/models/probe:predict",
                           body=json.dumps({"signature_name": "echo_text", "instances": [{"b64": text}]}))
        response = connection.getresponse()
        assert response.status == 200
        assert response.read() == b'{"predictions":["ok\xff"]}'
    finally:
        connection.close()


# ------------------------------------------------------------------------------------------ deadlines


def test_rest_timeout_answers_at_the_deadline(probe_server: Any) -> None:
    """http_rest_api_handler.cc sets RunOptions.timeout_in_ms from --rest_api_timeout_in_ms: the caller gets
    DEADLINE_EXCEEDED (504) at the deadline, not when the model finishes (here: a 20 s sleep, 1 s timeout)."""
    start = time.monotonic()
    status, body = _post(probe_server, "/v1/models/probe:predict",
                         json.dumps({"signature_name": "slow", "instances": [20_000_000]}))
    elapsed = time.monotonic() - start
    assert status == 504
    assert "Deadline Exceeded" in body["error"]
    assert elapsed < 15  # far below the model's 20 s, whatever the machine's load


def test_model_runs_when_within_the_timeout(probe_server: Any) -> None:
    assert _post(probe_server, "/v1/models/probe:predict",
                 json.dumps({"signature_name": "slow", "instances": [1000]})) == (200, {"predictions": [1000]})


def test_grpc_types_json_cannot_carry_still_work(probe_server: Any) -> None:
    """Over gRPC the half signature runs (only JSON lacks the dtype)."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "probe"
    request.model_spec.signature_name = "half"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.5, 2.0], np.float16)))
    with grpc.insecure_channel(f"127.0.0.1:{probe_server.grpc_port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [1.5, 2.0]
