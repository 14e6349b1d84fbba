"""The REST API: routes, row and columnar formats, b64, results, error codes and bodies, metrics page."""

from __future__ import annotations

import base64
import json
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from .conftest import http, png, wait_until


def _url(server: Any, path: str) -> str:
    return f"http://127.0.0.1:{server.rest_port}{path}"


def test_status_is_tf_servings_json(hp2_server: Any) -> None:
    status, body = http("GET", _url(hp2_server, "/v1/models/half_plus_two"))
    assert status == 200
    assert body == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]}
    assert http("GET", _url(hp2_server, "/v1/models/half_plus_two/versions/1"))[0] == 200


def test_metadata_has_model_spec_and_signature_defs(hp2_server: Any) -> None:
    status, body = http("GET", _url(hp2_server, "/v1/models/half_plus_two/versions/1/metadata"))
    assert status == 200
    assert body["model_spec"] == {"name": "half_plus_two", "version": "1", "signature_name": ""}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert signatures["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signatures["regress_x_to_y"]["method_name"] == "tensorflow/serving/regress"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"instances": [1.0, 2.0, 5.0]}, {"predictions": [2.5, 3.0, 4.5]}),
        ({"inputs": [1.0, 2.0, 5.0]}, {"outputs": [2.5, 3.0, 4.5]}),
        ({"inputs": {"x": [0.1]}}, {"outputs": [2.05]}),
        ({"instances": [{"x": 3}]}, {"predictions": [3.5]}),
        ({"signature_name": "predict_x_and_tag",
          "instances": [{"x": 1.0, "tag": "a"}, {"x": 2, "tag": {"b64": "AP8="}}]},
         {"predictions": [{"tag_bytes": {"b64": "YQ=="}, "y": 2.5}, {"tag_bytes": {"b64": "AP8="}, "y": 3.0}]}),
        ({"signature_name": "predict_x_and_tag", "inputs": {"x": [1.0], "tag": ["t"]}},
         {"outputs": {"tag_bytes": [{"b64": "dA=="}], "y": [2.5]}}),
    ],
    ids=["row", "columnar", "columnar-named", "row-named", "two-inputs-b64", "columnar-two"],
)
def test_predict_row_and_columnar(hp2_server: Any, body: dict[str, Any], expected: dict[str, Any]) -> None:
    model = "tagged" if body.get("signature_name") == "predict_x_and_tag" else "half_plus_two"
    status, answer = http("POST", _url(hp2_server, f"/v1/models/{model}:predict"), json.dumps(body))
    assert (status, answer) == (200, expected)


def test_predict_by_version_and_label_paths(start_server: Any, model_base: Path, tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "hp2" base_path: "{model_base}" model_platform: "tensorflow" '
        'model_version_policy { all {} } version_labels { key: "stable" value: 1 } } }'
    )
    # At start-up no version is AVAILABLE yet, so a label needs the flag (ServerCore::UpdateModelVersionLabelMap).
    server = start_server(f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models")
    for path in ("/v1/models/hp2/versions/1:predict", "/v1/models/hp2/labels/stable:predict"):
        assert http("POST", _url(server, path), '{"instances": [2.0]}') == (200, {"predictions": [3.0]})
    status, body = http("POST", _url(server, "/v1/models/hp2/labels/canary:predict"), '{"instances": [2.0]}')
    assert (status, body) == (400, {"error": "Unrecognized servable version label: canary"})


def test_classify_and_regress_answer_results(hp2_server: Any) -> None:
    classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 3.0}]}
    assert http("POST", _url(hp2_server, "/v1/models/half_plus_two:classify"), json.dumps(classify)) == (
        200, {"results": [[["", 2.5]], [["", 3.5]]]})
    regress = {"signature_name": "regress_x_to_y", "context": {"x": 10.0}, "examples": [{}, {"x": 2.0}]}
    assert http("POST", _url(hp2_server, "/v1/models/half_plus_two:regress"), json.dumps(regress)) == (
        200, {"results": [7.0, 3.0]})


def test_contract_model_over_rest_with_b64_images(start_server: Any, contract_version: Path) -> None:
    server = start_server("--model_name=digits", f"--model_base_path={contract_version.parent}")
    images = [{"b64": base64.b64encode(png(250)).decode()}, {"b64": base64.b64encode(png(3)).decode()}]
    status, body = http("POST", _url(server, "/v1/models/digits:predict"), json.dumps({"instances": images}))
    assert status == 200
    assert [p["class_name"] for p in body["predictions"]] == ["light", "dark"]
    assert [p["class_id"] for p in body["predictions"]] == [1, 0]
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-5 for p in body["predictions"])
    pixels = {"signature_name": "predict_pixels", "inputs": {"pixels": [[[[255.0] * 3] * 8] * 8]}}
    status, body = http("POST", _url(server, "/v1/models/digits:predict"), json.dumps(pixels))
    assert status == 200
    assert body["outputs"]["class_name"] == ["light"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/models/half_plus_two:predict", "{not json", 400, "JSON Parse error"),
        ("POST", "/v1/models/half_plus_two:predict", "", 400, "The document is empty"),
        ("POST", "/v1/models/half_plus_two:predict", "[1, 2]", 400, "Is not object"),
        ("POST", "/v1/models/half_plus_two:predict", '{"instances": ["a"]}', 400, "is not of expected type: float"),
        ("POST", "/v1/models/half_plus_two:predict", '{"instances": [1], "inputs": [1]}', 400, "only one of"),
        ("POST", "/v1/models/half_plus_two:predict", '{"instances": []}', 400, "No values in 'instances'"),
        ("POST", "/v1/models/half_plus_two:predict", '{"foo": 1}', 400, "Missing 'inputs' or 'instances' key"),
        ("POST", "/v1/models/half_plus_two:predict", '{"signature_name": 3, "inputs": [1]}', 400,
         "'signature_name' key must be a string"),
        ("POST", "/v1/models/half_plus_two:predict", '{"signature_name": "nope", "inputs": [1]}', 400,
         'Serving signature key "nope" not found.'),
        ("POST", "/v1/models/nope:predict", '{"inputs": [1]}', 404, "Servable not found for request"),
        ("POST", "/v1/models/half_plus_two/versions/9:predict", '{"inputs": [1]}', 404, "Specific(half_plus_two, 9)"),
        ("POST", "/v1/models/half_plus_two:classify", '{"examples": [{"x": 1}]}', 400,
         "No classification inputs found in SignatureDef"),
        ("POST", "/v1/models/half_plus_two:regress", '{"signature_name": "regress_x_to_y", "examples": [1]}', 400,
         "Example must be JSON object"),
        ("POST", "/v1/models/half_plus_two:explain", '{"inputs": [1]}', 400, "Malformed request"),
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/half_plus_two/versions/4", None, 404, "Could not find version 4"),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("GET", "/v1/models/half_plus_two:predict", None, 400, "Malformed request"),
        ("DELETE", "/v1/models/half_plus_two", None, 400, "Malformed request"),
        ("GET", "/other", None, 404, "Not found"),
    ],
    ids=lambda v: v if isinstance(v, int) else None,
)
def test_client_errors_are_4xx_with_an_error_body(
    hp2_server: Any, method: str, path: str, body: str | None, status: int, message: str
) -> None:
    answer_status, answer = http(method, _url(hp2_server, path), body)
    assert answer_status == status
    assert set(answer) == {"error"}
    assert message in answer["error"]


def test_oversized_body_is_413_and_the_server_keeps_serving(start_server: Any, model_base: Path) -> None:
    server = start_server("--model_name=half_plus_two", f"--model_base_path={model_base}", max_request_bytes=1000)
    status, body = http("POST", _url(server, "/v1/models/half_plus_two:predict"),
                        json.dumps({"instances": [1.0] * 1000}))
    assert status == 413
    assert "at most 1000 bytes" in body["error"]
    # A client that only announces a huge body gets the same answer without sending it.
    connection = HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    connection.putrequest("POST", "/v1/models/half_plus_two:predict")
    connection.putheader("Content-Length", str(10**12))
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()
    assert http("POST", _url(server, "/v1/models/half_plus_two:predict"), '{"instances": [0.0]}') == (
        200, {"predictions": [2.0]})


def test_keep_alive_connection_serves_many_requests(hp2_server: Any) -> None:
    connection = HTTPConnection("127.0.0.1", hp2_server.rest_port, timeout=30)
    for i in range(5):
        connection.request("POST", "/v1/models/half_plus_two:predict", body=json.dumps({"instances": [float(i)]}))
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {"predictions": [0.5 * i + 2]}
    connection.close()


def test_metrics_page_counts_requests_as_tf_serving_when_rest_requests_arrive(hp2_server: Any) -> None:
    """http_server.cc: every /v1/ request counts by model_name and status; latency (microseconds) only for
    successful ones, API = the URL's verb (empty for GETs), entrypoint REST."""
    http("POST", _url(hp2_server, "/v1/models/half_plus_two:predict"), '{"instances": [1.0]}')
    http("POST", _url(hp2_server, "/v1/models/half_plus_two:predict"), '{"instances": ["x"]}')
    http("POST", _url(hp2_server, "/v1/models/who:predict"), '{"instances": [1.0]}')
    http("GET", _url(hp2_server, "/v1/models/half_plus_two"))
    status, page = http("GET", _url(hp2_server, "/monitoring/prometheus/metrics"))
    assert status == 200
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"} 2' in page
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="INVALID_ARGUMENT"} 1' in page
    assert ':tensorflow:serving:request_count{model_name="who",status="NOT_FOUND"} 1' in page
    assert (':tensorflow:serving:request_latency_count{model_name="half_plus_two",API="predict",entrypoint="REST"} 1'
            in page)
    assert ':tensorflow:serving:request_latency_count{model_name="half_plus_two",API="",entrypoint="REST"} 1' in page
    assert ':tensorflow:serving:runtime_latency_count{model_name="half_plus_two",API="Predict",runtime="TF1"} 1' in page
    assert 'model_name="who",API=' not in page  # failed requests record no latency
    assert 'tfstack_model_server_model_versions{model="half_plus_two",state="AVAILABLE"} 1.0' in page


def test_metrics_page_is_absent_without_a_monitoring_config(start_server: Any, model_base: Path) -> None:
    server = start_server("--model_name=half_plus_two", f"--model_base_path={model_base}")
    assert http("GET", _url(server, "/monitoring/prometheus/metrics"))[0] == 404


def test_cors_headers_only_when_enabled(start_server: Any, model_base: Path) -> None:
    server = start_server("--model_name=half_plus_two", f"--model_base_path={model_base}",
                          "--rest_api_enable_cors_support=true")
    connection = HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    connection.request("GET", "/v1/models/half_plus_two")
    response = connection.getresponse()
    response.read()
    assert response.getheader("Access-Control-Allow-Origin") == "*"
    connection.close()


def test_connection_threads_are_capped_and_the_server_serves_after(start_server: Any, model_base: Path) -> None:
    """Issue 21: no thread per connection without bound; 80 idle connections get at most
    max_connections(--rest_api_num_threads) threads (64 here), the rest wait in the listen backlog."""
    import socket
    import threading

    from serving.model_server.rest_api import max_connections

    server = start_server("--model_name=hp2", f"--model_base_path={model_base}", "--rest_api_num_threads=2")
    cap = max_connections(2)

    def connection_threads() -> int:
        return sum("process_request_thread" in t.name for t in threading.enumerate())

    before = connection_threads()  # other servers' connection threads in this test process, if any
    sockets = [socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) for _ in range(cap + 16)]
    try:
        wait_until(lambda: connection_threads() - before >= cap)
        assert connection_threads() - before <= cap
    finally:
        for sock in sockets:
            sock.close()
    wait_until(lambda: connection_threads() <= before)
    status, body = http("POST", f"http://127.0.0.1:{server.rest_port}/v1/models/hp2:predict", '{"instances": [1.0]}')
    assert (status, body) == (200, {"predictions": [2.5]})
