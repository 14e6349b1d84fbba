"""The gRPC services: ``tensorflow.serving.PredictionService`` and ``ModelService``, on the official stubs.

Each method resolves the model spec through the :class:`~serving.model_server.loader.ModelManager`, runs
the servable, and answers with TF Serving's messages (typed tensor fields, ``model_spec`` filled with the
version and signature actually used). Errors abort the call with their canonical code; anything
unexpected is INTERNAL and logged, never a crashed server. ``MultiInference`` is UNIMPLEMENTED.

Predict, the hot path, answers with ``PredictResponse`` wire bytes written by the client's codec
(:func:`serving.wire.codec.encode_predict_response`) and is registered without a response
serializer: building the protobuf message and serializing it cost about a tenth of the server's
predict throughput on a tiny model (``bench/server_bench.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.apis import model_pb2 as _model_pb2

from serving.model_server import tensors
from serving.model_server.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ModelServerError,
    Unimplemented,
)
from serving.model_server.loader import ModelManager
from serving.model_server.metrics import ServerMetrics
from serving.model_server.servable import Servable, serialize_input
from serving.wire.codec import encode_model_spec, encode_predict_response

__all__ = ["ModelService", "PredictionService", "add_services"]

log = logging.getLogger(__name__)

_R = TypeVar("_R")
SIGNATURE_DEF_FIELD = "signature_def"
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


def _spec(request: Any) -> _model_pb2.ModelSpec:
    """The request's ModelSpec; INVALID_ARGUMENT "Missing ModelSpec" without one, as TF Serving answers."""
    if not request.HasField("model_spec"):
        raise InvalidArgument("Missing ModelSpec")
    return request.model_spec


def _spec_args(spec: _model_pb2.ModelSpec) -> tuple[str, int | None, str | None]:
    version = spec.version.value if spec.HasField("version") else None
    return spec.name, version, spec.version_label or None


def _fill_spec(spec: _model_pb2.ModelSpec, servable: Servable, signature: str | None) -> None:
    spec.name = servable.name
    spec.version.value = servable.version
    if signature is not None:
        spec.signature_name = signature


class _Base:
    def __init__(self, manager: ModelManager, metrics: ServerMetrics,
                 max_decoded_bytes: int = tensors.DEFAULT_MAX_DECODED_BYTES) -> None:
        self._manager = manager
        self._metrics = metrics
        self._in_flight = metrics.in_flight.labels("grpc")
        self._max_decoded_bytes = max_decoded_bytes

    def _call(self, method: str, model: str, context: grpc.ServicerContext, run: Callable[[], _R]) -> _R:
        start = time.perf_counter()
        status = "OK"
        in_flight = self._in_flight
        in_flight.inc()
        try:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("Deadline exceeded before the request was processed")
            if not context.is_active():  # the caller gave up while the request queued: do not run it
                raise Cancelled("The caller cancelled the request before it was processed")
            result = run()
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("Deadline exceeded while the request was processed")
            return result
        except ModelServerError as exc:
            status = exc.code.name
            context.abort(exc.code, exc.message)
        except Exception as exc:
            status = "INTERNAL"
            log.exception("%s on model %r failed", method, model)
            context.abort(grpc.StatusCode.INTERNAL, f"Internal error in {method}: {exc}")
        finally:
            in_flight.dec()
            self._metrics.observe(model, method, "grpc", status, time.perf_counter() - start)
        raise AssertionError("unreachable")  # pragma: no cover - context.abort always raises


class PredictionService(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress and GetModelMetadata."""

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> bytes:
        """Answers with ``PredictResponse`` wire bytes (see the module docstring)."""

        def run() -> bytes:
            servable = self._manager.resolve(*_spec_args(_spec(request)))
            tensors.check_decoded_size(request.inputs, self._max_decoded_bytes)
            inputs = {alias: tensors.make_ndarray(proto) for alias, proto in request.inputs.items()}
            info, outputs = servable.predict(request.model_spec.signature_name, inputs, request.output_filter)
            spec = encode_model_spec(servable.name, servable.version, None, info.name)
            return encode_predict_response(spec, outputs)

        return self._call("predict", request.model_spec.name, context, run)

    def Classify(self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext) -> Any:
        def run() -> classification_pb2.ClassificationResponse:
            servable = self._manager.resolve(*_spec_args(_spec(request)))
            info, classes, scores = servable.classify(request.model_spec.signature_name, serialize_input(request.input))
            response = classification_pb2.ClassificationResponse()
            _fill_spec(response.model_spec, servable, info.name)
            rows = (classes if classes is not None else scores).shape[0]
            for i in range(rows):
                classification = response.result.classifications.add()
                width = (classes if classes is not None else scores).shape[1]
                for j in range(width):
                    item = classification.classes.add()
                    if classes is not None:
                        label = classes[i, j]
                        item.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
                    if scores is not None:
                        item.score = float(scores[i, j])
            return response

        return self._call("classify", request.model_spec.name, context, run)

    def Regress(self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext) -> Any:
        def run() -> regression_pb2.RegressionResponse:
            servable = self._manager.resolve(*_spec_args(_spec(request)))
            info, values = servable.regress(request.model_spec.signature_name, serialize_input(request.input))
            response = regression_pb2.RegressionResponse()
            _fill_spec(response.model_spec, servable, info.name)
            for value in values.tolist():
                response.result.regressions.add(value=float(value))
            return response

        return self._call("regress", request.model_spec.name, context, run)

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> Any:
        def run() -> get_model_metadata_pb2.GetModelMetadataResponse:
            return model_metadata(self._manager, request)

        return self._call("metadata", request.model_spec.name, context, run)

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:
        def run() -> Any:
            raise Unimplemented("MultiInference is not implemented by serving.model_server")

        return self._call("multi_inference", request.model_spec.name if hasattr(request, "model_spec") else "",
                          context, run)


def model_metadata(
    manager: ModelManager, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadata, shared by gRPC and REST: the SignatureDefMap packed as ``Any``."""
    if not request.metadata_field:
        raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
    for field_name in request.metadata_field:
        if field_name != SIGNATURE_DEF_FIELD:
            raise InvalidArgument(f"Metadata field {field_name} is not supported")
    servable = manager.resolve(*_spec_args(_spec(request)))
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _fill_spec(response.model_spec, servable, None)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in servable.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature_def)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response


def model_status(
    manager: ModelManager, request: get_model_status_pb2.GetModelStatusRequest
) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatus, shared by gRPC and REST: every version the manager knows, with state and error."""
    records = manager.status(*_spec_args(_spec(request)))
    response = get_model_status_pb2.GetModelStatusResponse()
    for record in records:
        status = response.model_version_status.add(version=record.version, state=record.state)
        status.status.error_code = record.error_code
        status.status.error_message = record.error_message
        status.status.SetInParent()
    return response


class ModelService(_Base, model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics, reload: Callable[..., None]) -> None:
        super().__init__(manager, metrics)
        self._reload = reload

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> Any:
        return self._call("status", request.model_spec.name, context, lambda: model_status(self._manager, request))

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> Any:
        def run() -> model_management_pb2.ReloadConfigResponse:
            if request.config.WhichOneof("config") != "model_config_list":
                raise InvalidArgument("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                                      "ModelConfigList is currently supported")
            remaining = context.time_remaining()
            self._reload(request.config, None if remaining is None else time.monotonic() + remaining)
            response = model_management_pb2.ReloadConfigResponse()
            response.status.SetInParent()
            return response

        return self._call("reload", "", context, run)


def add_services(server: grpc.Server, prediction: PredictionService, model: ModelService) -> None:
    """Register both services on ``server``: the generated registration, except that Predict has no
    response serializer (it answers with wire bytes)."""
    methods = {
        "Predict": (prediction.Predict, predict_pb2.PredictRequest, None),
        "Classify": (prediction.Classify, classification_pb2.ClassificationRequest,
                     classification_pb2.ClassificationResponse),
        "Regress": (prediction.Regress, regression_pb2.RegressionRequest, regression_pb2.RegressionResponse),
        "MultiInference": (prediction.MultiInference, inference_pb2.MultiInferenceRequest,
                           inference_pb2.MultiInferenceResponse),
        "GetModelMetadata": (prediction.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest,
                             get_model_metadata_pb2.GetModelMetadataResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=request_type.FromString,
            response_serializer=None if response_type is None else response_type.SerializeToString,
        )
        for name, (behaviour, request_type, response_type) in methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PREDICTION_SERVICE, handlers),))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model, server)
