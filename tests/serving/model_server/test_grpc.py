"""The gRPC services, called through the official tensorflow_serving.apis stubs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from .conftest import png


@pytest.fixture
def channel(hp2_server: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{hp2_server.grpc_port}") as chan:
        yield chan


@pytest.fixture
def predict_stub(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture
def model_stub(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def _predict_request(values: Any, name: str = "half_plus_two", **spec: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(values, dtype=np.float32)))
    return request


def _examples(*xs: float) -> Any:
    request_input = classification_pb2.ClassificationRequest().input
    for x in xs:
        request_input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    return request_input


def test_predict_answers_with_typed_float_val_not_tensor_content(predict_stub: Any) -> None:
    request = _predict_request([1.0, 2.0, 5.0])
    assert request.inputs["x"].tensor_content  # the request uses the tensor_content fast path
    response = predict_stub.Predict(request, timeout=30)
    y = response.outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT
    assert not y.tensor_content
    assert list(y.float_val) == [2.5, 3.0, 4.5]
    assert [d.size for d in y.tensor_shape.dim] == [3]
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(tf.make_ndarray(y), [2.5, 3.0, 4.5])


def test_predict_accepts_typed_fields_in_requests(predict_stub: Any) -> None:
    request = _predict_request([0.0])
    request.inputs["x"].Clear()
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add(size=2)
    request.inputs["x"].float_val.extend([4.0, 6.0])
    assert list(predict_stub.Predict(request, timeout=30).outputs["y"].float_val) == [4.0, 5.0]


def test_predict_with_two_inputs_output_filter_and_strings(predict_stub: Any) -> None:
    request = _predict_request([2.0, 4.0], name="tagged", signature_name="predict_x_and_tag")
    request.inputs["tag"].CopyFrom(tf.make_tensor_proto(np.array([b"a", b"\xff\x00"], dtype=object)))
    request.output_filter.append("tag_bytes")
    response = predict_stub.Predict(request, timeout=30)
    assert set(response.outputs) == {"tag_bytes"}
    assert list(response.outputs["tag_bytes"].string_val) == [b"a", b"\xff\x00"]
    assert response.model_spec.signature_name == "predict_x_and_tag"


def test_classify_and_regress_use_their_signatures(predict_stub: Any) -> None:
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.CopyFrom(_examples(1.0, 3.0))
    result = predict_stub.Classify(classify, timeout=30).result
    assert [[c.score for c in row.classes] for row in result.classifications] == [[2.5], [3.5]]

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "half_plus_two"
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.example_list_with_context.context.features.feature["x"].float_list.value.append(10.0)
    regress.input.example_list_with_context.examples.add()
    regress.input.example_list_with_context.examples.add().features.feature["x"].float_list.value.append(2.0)
    response = predict_stub.Regress(regress, timeout=30)
    assert [r.value for r in response.result.regressions] == [7.0, 3.0]  # context x=10 unless overridden
    assert response.model_spec.version.value == 1


def test_get_model_metadata_packs_the_signature_def_map(predict_stub: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half_plus_two"
    response = predict_stub.GetModelMetadata(request, timeout=30)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert set(signature_map.signature_def) >= {"serving_default", "classify_x_to_y", "regress_x_to_y"}
    serving = signature_map.signature_def["serving_default"]
    assert serving.method_name == "tensorflow/serving/predict"
    assert serving.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert signature_map.signature_def["classify_x_to_y"].method_name == "tensorflow/serving/classify"
    assert response.model_spec.version.value == 1


def test_get_model_status_reports_available(model_stub: Any) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half_plus_two"
    (status,) = model_stub.GetModelStatus(request, timeout=30).model_version_status
    assert (status.version, status.state, status.status.error_code) == (
        1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)


def test_reload_config_adds_a_model_with_a_label(model_stub: Any, predict_stub: Any, model_base: Path,
                                                 contract_version: Path) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    models = request.config.model_config_list
    old = models.config.add(name="half_plus_two", base_path=str(model_base), model_platform="tensorflow")
    old.version_labels["stable"] = 1
    models.config.add(name="digits", base_path=str(contract_version.parent), model_platform="tensorflow")
    response = model_stub.HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0

    digits = predict_pb2.PredictRequest()
    digits.model_spec.name = "digits"
    digits.inputs["images"].CopyFrom(tf.make_tensor_proto(np.array([png(250), png(5)], dtype=object)))
    outputs = predict_stub.Predict(digits, timeout=30).outputs
    assert list(outputs["class_name"].string_val) == [b"light", b"dark"]
    assert list(outputs["class_id"].int64_val) == [1, 0]
    assert outputs["probabilities"].dtype == types_pb2.DT_FLOAT
    assert len(outputs["probabilities"].float_val) == 4

    labelled = _predict_request([2.0], version_label="stable")
    assert predict_stub.Predict(labelled, timeout=30).model_spec.version.value == 1


def test_reload_with_an_invalid_config_is_invalid_argument(model_stub: Any) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.add(name="x")  # no base_path
    with pytest.raises(grpc.RpcError) as info:
        model_stub.HandleReloadConfigRequest(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "base_path" in info.value.details()


def _bad_dtype() -> predict_pb2.PredictRequest:
    request = _predict_request([1.0])
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], dtype=np.float64)))
    return request


def _extra_input() -> predict_pb2.PredictRequest:
    request = _predict_request([1.0])
    request.inputs["z"].CopyFrom(tf.make_tensor_proto(np.array([1.0], dtype=np.float32)))
    return request


def _short_content() -> predict_pb2.PredictRequest:
    request = _predict_request([1.0, 2.0])
    request.inputs["x"].tensor_content = b"\x00\x00"
    return request


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (lambda: _predict_request([1.0], name="nope"), grpc.StatusCode.NOT_FOUND, "Servable not found"),
        (lambda: _predict_request([1.0], version=7), grpc.StatusCode.NOT_FOUND, "Specific(half_plus_two, 7)"),
        (lambda: _predict_request([1.0], version_label="canary"), grpc.StatusCode.INVALID_ARGUMENT,
         "Unrecognized servable version label: canary"),
        (lambda: _predict_request([1.0], signature_name="nope"), grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "nope" not found.'),
        (_bad_dtype, grpc.StatusCode.INVALID_ARGUMENT, "to be float but double is provided"),
        (_extra_input, grpc.StatusCode.INVALID_ARGUMENT,
         "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. "
         "Missing but required: {}."),
        (_short_content, grpc.StatusCode.INVALID_ARGUMENT, "Expected tensor values"),
        (lambda: predict_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
    ],
    ids=["model", "version", "label", "signature", "dtype", "alias", "content", "no-model-spec"],
)
def test_predict_errors_have_the_right_code(predict_stub: Any, make: Any, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        predict_stub.Predict(make(), timeout=30)
    assert info.value.code() == code
    assert message in info.value.details()


def test_classify_on_a_predict_signature_is_invalid_argument(predict_stub: Any) -> None:
    # Without --enable_signature_method_name_check the method name is not looked at (classifier.cc): the
    # predict signature fails because it has no "inputs" input.
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.input.CopyFrom(_examples(1.0))
    with pytest.raises(grpc.RpcError) as info:
        predict_stub.Classify(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("No classification inputs found in SignatureDef: ")


def test_metadata_needs_the_signature_def_field(predict_stub: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["nope"])
    request.model_spec.name = "half_plus_two"
    with pytest.raises(grpc.RpcError) as info:
        predict_stub.GetModelMetadata(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Metadata field nope is not supported" in info.value.details()


def test_status_of_an_unknown_model_is_not_found(model_stub: Any) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        model_stub.GetModelStatus(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Could not find any versions of model nope" in info.value.details()


def test_an_empty_model_name_is_invalid_argument(hp2_server: Any) -> None:
    """server_core.cc ServableRequestFromModelSpec: "ModelSpec has no name specified." (not NOT_FOUND)."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = ""
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
    with grpc.insecure_channel(f"127.0.0.1:{hp2_server.grpc_port}") as channel, pytest.raises(grpc.RpcError) as info:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "ModelSpec has no name specified."


def test_connection_ageing_from_grpc_channel_arguments_closes_a_clients_connection(
        start_server: Any, model_base: Any) -> None:
    """--grpc_channel_arguments=grpc.max_connection_age_ms=... (what the chart sets): the server ends every
    connection after that age (GOAWAY), so a long-lived client channel reconnects and, behind a Service,
    can land on another replica. Observed from gRPC's own connectivity states: READY, then not READY."""
    server = start_server("--model_name=half_plus_two", f"--model_base_path={model_base}",
                          "--grpc_channel_arguments=grpc.max_connection_age_ms=300,grpc.max_connection_age_grace_ms=100")
    left_ready = threading.Event()
    states: list[grpc.ChannelConnectivity] = []

    def watch(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if grpc.ChannelConnectivity.READY in states and state != grpc.ChannelConnectivity.READY:
            left_ready.set()

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        channel.subscribe(watch, try_to_connect=True)
        grpc.channel_ready_future(channel).result(timeout=30)
        assert left_ready.wait(timeout=30), f"the connection was never aged: states {states}"
        channel.unsubscribe(watch)
