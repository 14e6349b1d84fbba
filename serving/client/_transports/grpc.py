"""The gRPC transport: TF Serving's PredictionService and ModelService over one reused channel.

Every method is a raw-bytes multicallable created once per transport (the "stub"). Predict requests
are written and responses read straight from wire bytes by :mod:`serving.wire.codec` (no
protobuf objects for tensors); the other methods go through this package's generated messages.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]
import numpy as np

from serving.client._errors import InvalidInput, ServingError, from_grpc_error, make_error
from serving.client._model import metadata_from_proto, status_from_proto
from serving.client._transports.base import AsyncTransport, Reply, Request, Transport
from serving.wire.codec import decode_predict_response, encode_model_spec, encode_predict_request
from serving.wire.proto import (
    classification_pb2,
    example_pb2,
    feature_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
)

__all__ = ["AsyncGrpcTransport", "GrpcTransport", "channel_credentials", "channel_options"]

_PREDICTION = "/tensorflow.serving.PredictionService/"
_PATHS = {
    "predict": _PREDICTION + "Predict",
    "classify": _PREDICTION + "Classify",
    "regress": _PREDICTION + "Regress",
    "metadata": _PREDICTION + "GetModelMetadata",
    "status": "/tensorflow.serving.ModelService/GetModelStatus",
}


def channel_options(
    max_message_bytes: int, keepalive_seconds: float | None, server_name: str | None = None
) -> list[tuple[str, Any]]:
    """Channel arguments: message size limits both ways, HTTP/2 keepalive pings, TLS name override."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if keepalive_seconds:
        options += [
            ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def channel_credentials(
    root_certificates: bytes | None, private_key: bytes | None, certificate_chain: bytes | None
) -> grpc.ChannelCredentials:
    """TLS credentials: server CA (None: system roots) and an optional client certificate."""
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


def _model_spec(request: Request) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=request.model, signature_name=request.signature)
    if request.version is not None:
        spec.version.value = request.version
    elif request.version_label is not None:
        spec.version_label = request.version_label
    return spec


def _feature(name: str, value: Any) -> feature_pb2.Feature:
    feature = feature_pb2.Feature()
    values = np.asarray(value)
    flat = values.reshape(-1)
    if values.dtype.kind in "SUO":
        feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else bytes(v) for v in flat)
    elif values.dtype.kind == "f":
        feature.float_list.value.extend(flat.astype(np.float32).tolist())
    elif values.dtype.kind in "iub":
        feature.int64_list.value.extend(flat.astype(np.int64).tolist())
    else:
        raise InvalidInput(
            f"Expected feature {name!r} to hold bytes, str, floats or ints. Received: dtype={values.dtype}"
        )
    return feature


def to_example(features: Mapping[str, Any]) -> example_pb2.Example:
    """Builds a ``tf.Example`` from ``{name: value or list of values}``."""
    example = example_pb2.Example()
    for name, value in features.items():
        example.features.feature[name].CopyFrom(_feature(name, value))
    return example


def _input(examples: Sequence[Mapping[str, Any]], context: Mapping[str, Any] | None) -> Any:
    from serving.wire.proto import input_pb2

    message = input_pb2.Input()
    if context is None:
        message.example_list.examples.extend(to_example(e) for e in examples)
    else:
        message.example_list_with_context.examples.extend(to_example(e) for e in examples)
        message.example_list_with_context.context.CopyFrom(to_example(context))
    return message


def encode(request: Request) -> bytes:
    """Request wire bytes for ``request.method``."""
    if request.method == "predict":
        spec = encode_model_spec(request.model, request.version, request.version_label, request.signature)
        return encode_predict_request(spec, request.inputs, request.output_filter)
    if request.method in ("classify", "regress"):
        cls = (
            classification_pb2.ClassificationRequest
            if request.method == "classify"
            else regression_pb2.RegressionRequest
        )
        message: Any = cls(
            model_spec=_model_spec(request), input=_input(request.examples, request.example_context)
        )
    elif request.method == "metadata":
        message = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=_model_spec(request), metadata_field=["signature_def"]
        )
    else:
        message = get_model_status_pb2.GetModelStatusRequest(model_spec=_model_spec(request))
    data: bytes = message.SerializeToString()
    return data


@functools.lru_cache(maxsize=256)
def _served_version(spec: bytes) -> int | None:
    """The version in ``ModelSpec`` wire bytes (answers repeat the same few specs: cached)."""
    return _version_of(model_pb2.ModelSpec.FromString(spec))


def _version_of(spec: model_pb2.ModelSpec) -> int | None:
    return int(spec.version.value) if spec.HasField("version") else None


def decode(request: Request, data: bytes) -> tuple[Any, int | None]:
    """Decodes the response wire bytes of ``request.method``: the public result and the version that
    answered (None where the answer does not say)."""
    if request.method == "predict":
        outputs, spec = decode_predict_response(data)
        return outputs, _served_version(spec)
    if request.method == "classify":
        classified = classification_pb2.ClassificationResponse.FromString(data)
        labels = [
            [(c.label, float(c.score)) for c in item.classes]
            for item in classified.result.classifications
        ]
        return labels, _version_of(classified.model_spec)
    if request.method == "regress":
        regressed = regression_pb2.RegressionResponse.FromString(data)
        values = np.array([r.value for r in regressed.result.regressions], dtype=np.float32)
        return values, _version_of(regressed.model_spec)
    if request.method == "metadata":
        answer = get_model_metadata_pb2.GetModelMetadataResponse.FromString(data)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" in answer.metadata:
            signatures.ParseFromString(answer.metadata["signature_def"].value)
        version = _version_of(answer.model_spec)
        return metadata_from_proto(answer.model_spec.name or request.model, version, signatures), version
    status = get_model_status_pb2.GetModelStatusResponse.FromString(data)
    return status_from_proto(request.model, status), None


def _encode_checked(request: Request, transport: str) -> bytes:
    try:
        return encode(request)
    except ServingError:
        raise
    except (ValueError, TypeError) as exc:  # e.g. a dtype the codec cannot carry (validate=False)
        raise InvalidInput(str(exc), context=request.context(transport)) from exc


def _decode_checked(request: Request, data: bytes, transport: str) -> tuple[Any, int | None]:
    try:
        return decode(request, data)
    except (ValueError, TypeError) as exc:  # an answer that is not what the protocol says
        raise make_error("DATA_LOSS", f"undecodable {request.method} answer: {exc}",
                         request.context(transport)) from exc


def _multicallable(channel: Any, path: str) -> Any:
    """A raw-bytes unary method (no (de)serialiser: the transport reads and writes wire bytes),
    registered up front like generated stubs do, which spares grpc per-call method lookups."""
    try:
        return channel.unary_unary(path, request_serializer=None, response_deserializer=None,
                                   _registered_method=True)
    except TypeError:  # grpcio before registered methods
        return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


class _Channel:
    """Channel construction shared by the sync and asyncio transports."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        max_message_bytes: int = 256 * 1024 * 1024,
        keepalive_seconds: float | None = 30.0,
        server_name: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
        wait_for_ready: bool = False,
    ) -> None:
        self.target = target
        self.wait_for_ready = wait_for_ready or None  # None: gRPC's default (fail fast)
        self.credentials = credentials
        self.metadata = tuple((k.lower(), v) for k, v in metadata)
        self.options = [*channel_options(max_message_bytes, keepalive_seconds, server_name), *options]


class GrpcTransport(_Channel, Transport):
    """Blocking gRPC transport: one channel, one multicallable per method, created up front."""

    name = "grpc"

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        if self.credentials is None:
            self.channel = grpc.insecure_channel(target, options=self.options)
        else:
            self.channel = grpc.secure_channel(target, self.credentials, options=self.options)
        self._methods = {method: _multicallable(self.channel, path) for method, path in _PATHS.items()}

    def call(self, request: Request, timeout: float | None) -> Reply:
        data = _encode_checked(request, self.name)
        try:
            answer: bytes = self._methods[request.method](
                data, timeout=timeout, metadata=self.metadata or None, wait_for_ready=self.wait_for_ready
            )
        except grpc.RpcError as exc:
            raise from_grpc_error(exc, request.context(self.name)) from exc
        value, version = _decode_checked(request, answer, self.name)
        return Reply(value, len(data), len(answer), version)

    def close(self) -> None:
        self.channel.close()


class AsyncGrpcTransport(_Channel, AsyncTransport):
    """asyncio gRPC transport (``grpc.aio``); the channel is opened on the first call, inside the
    running event loop."""

    name = "grpc"

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.channel: grpc.aio.Channel | None = None
        self._methods: dict[str, Any] = {}

    def _open(self) -> dict[str, Any]:
        if self.channel is None:
            if self.credentials is None:
                self.channel = grpc.aio.insecure_channel(self.target, options=self.options)
            else:
                self.channel = grpc.aio.secure_channel(self.target, self.credentials, options=self.options)
            self._methods = {method: _multicallable(self.channel, path) for method, path in _PATHS.items()}
        return self._methods

    async def call(self, request: Request, timeout: float | None) -> Reply:
        methods = self._open()
        data = _encode_checked(request, self.name)
        try:
            answer: bytes = await methods[request.method](
                data, timeout=timeout, metadata=self.metadata or None, wait_for_ready=self.wait_for_ready
            )
        except grpc.RpcError as exc:
            raise from_grpc_error(exc, request.context(self.name)) from exc
        value, version = _decode_checked(request, answer, self.name)
        return Reply(value, len(data), len(answer), version)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
