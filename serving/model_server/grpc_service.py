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
from google.protobuf.message import DecodeError
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
from serving.model_server.batching import REQUEST_DEADLINE
from serving.model_server.budget import MemoryBudget, predict_cost
from serving.model_server.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ModelServerError,
    Unavailable,
    Unimplemented,
)
from serving.model_server.loader import ModelManager
from serving.model_server.metrics import ServerMetrics
from serving.model_server.servable import Servable, serialize_input
from serving.model_server.tensors import classification_rows
from serving.wire.codec import encode_model_spec, encode_predict_response

__all__ = ["Admission", "ModelService", "PredictionService", "add_services"]

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


class Admission:
    """What every request passes first: the drain state and the memory budget, shared by gRPC and REST."""

    DRAINING_MESSAGE = "Server is draining (shutting down); send the request to another replica"

    def __init__(self, budget: MemoryBudget, max_decoded_bytes: int = tensors.DEFAULT_MAX_DECODED_BYTES) -> None:
        self.budget = budget
        self.max_decoded_bytes = max_decoded_bytes
        self.draining = False

    def check(self) -> None:
        """UNAVAILABLE once draining: clients (``serving.client``'s retries) go to another replica."""
        if self.draining:
            raise Unavailable(self.DRAINING_MESSAGE)


def _wire_cost(nbytes: int) -> int:
    return 2 * nbytes  # grpc's received bytes and protobuf's parsed message


def _examples_cost(request: Any) -> int:
    """Classify/regress: the parsed message, the serialized examples, and TensorFlow's copy of them."""
    return 4 * request.ByteSize()


class _Base:
    def __init__(self, manager: ModelManager, metrics: ServerMetrics, admission: Admission) -> None:
        self._manager = manager
        self._metrics = metrics
        self._in_flight = metrics.in_flight.labels("grpc")
        self._admission = admission
        self._budget = admission.budget

    def _call(self, method: str, model: str | Callable[[], str], context: grpc.ServicerContext,
              run: Callable[[], _R]) -> _R:
        start = time.perf_counter()
        status = "OK"
        in_flight = self._in_flight
        in_flight.inc()
        try:
            self._admission.check()
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("Deadline exceeded before the request was processed")
            REQUEST_DEADLINE.set(None if remaining is None else time.monotonic() + remaining)
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
            self._metrics.observe(model() if callable(model) else model, method, "grpc", status,
                                  time.perf_counter() - start)
        raise AssertionError("unreachable")  # pragma: no cover - context.abort always raises


class PredictionService(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress and GetModelMetadata."""

    def Predict(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        """Takes the request's wire bytes and answers with ``PredictResponse`` wire bytes (see the module
        docstring): the memory budget is reserved from the wire size before parsing, and from the declared
        shapes before decoding (:mod:`serving.model_server.budget`)."""
        model = [""]

        def run() -> bytes:
            with self._budget.hold(_wire_cost(len(raw)), "the request's wire bytes") as reservation:
                try:
                    request = predict_pb2.PredictRequest.FromString(raw)
                except DecodeError as exc:
                    raise InvalidArgument(f"Expected a serialized PredictRequest. Received: {exc}") from None
                model[0] = request.model_spec.name
                servable = self._manager.resolve(*_spec_args(_spec(request)))
                tensors.check_decoded_size(request.inputs, self._admission.max_decoded_bytes)
                reservation.add(predict_cost(request.inputs, servable.batcher is not None), "the request's tensors")
                inputs = {alias: tensors.make_ndarray(proto) for alias, proto in request.inputs.items()}
                signature, output_filter = request.model_spec.signature_name, list(request.output_filter)
                del request  # the parsed message's copy of the values is not needed any more
                info, outputs = servable.predict(signature, inputs, output_filter)
                spec = encode_model_spec(servable.name, servable.version, None, info.name)
                return encode_predict_response(spec, outputs)

        return self._call("predict", lambda: model[0], context, run)

    def Classify(self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext) -> Any:
        def run() -> classification_pb2.ClassificationResponse:
            with self._budget.hold(_examples_cost(request), "the request's examples"):
                servable = self._manager.resolve(*_spec_args(_spec(request)))
                serialized = serialize_input(request.input)
                info, classes, scores = servable.classify(request.model_spec.signature_name, serialized)
                response = classification_pb2.ClassificationResponse()
                _fill_spec(response.model_spec, servable, info.name)
                for row in classification_rows(classes, scores):
                    classification = response.result.classifications.add()
                    for label, score in row:
                        classification.classes.add(label=label, score=score)
                return response

        return self._call("classify", request.model_spec.name, context, run)

    def Regress(self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext) -> Any:
        def run() -> regression_pb2.RegressionResponse:
            with self._budget.hold(_examples_cost(request), "the request's examples"):
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

    def __init__(self, manager: ModelManager, metrics: ServerMetrics, admission: Admission,
                 reload: Callable[..., None]) -> None:
        super().__init__(manager, metrics, admission)
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
    """Register both services on ``server``: the generated registration, except that Predict has neither
    request deserializer nor response serializer (it takes and answers wire bytes)."""
    methods = {
        "Predict": (prediction.Predict, None, None),
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
            behaviour, request_deserializer=None if request_type is None else request_type.FromString,
            response_serializer=None if response_type is None else response_type.SerializeToString,
        )
        for name, (behaviour, request_type, response_type) in methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PREDICTION_SERVICE, handlers),))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model, server)
