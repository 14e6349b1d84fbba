"""Real loopback servers for the client's tests: gRPC built on the OFFICIAL tensorflow_serving
servicers and messages, and an http.server speaking TF Serving's REST JSON, both in front of one
small numpy "model" (:class:`ToyModel`).

Like TF Serving, both answer Predict with typed repeated fields (``float_val`` ...), not
``tensor_content``, and decode requests with TensorFlow's own ``tf.make_ndarray``.
"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

MODEL = "toy"
CLASSES = ("zero", "one", "two")


def as_proto_field(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with typed repeated fields, as TF Serving's Tensor::AsProtoField writes it."""
    array = np.asarray(array)
    dtype = tf.as_dtype(array.dtype if array.dtype != object else tf.string)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.reshape(-1)
    name = dtype.name
    if name == "string":
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif name == "float32":
        proto.float_val.extend(flat.tolist())
    elif name == "float64":
        proto.double_val.extend(flat.tolist())
    elif name in ("int32", "int16", "int8", "uint8", "uint16"):
        proto.int_val.extend(flat.astype(np.int64).tolist())
    elif name == "int64":
        proto.int64_val.extend(flat.tolist())
    elif name == "uint32":
        proto.uint32_val.extend(flat.tolist())
    elif name == "uint64":
        proto.uint64_val.extend(flat.tolist())
    elif name == "bool":
        proto.bool_val.extend(flat.tolist())
    elif name in ("float16", "bfloat16"):
        proto.half_val.extend(flat.view(np.uint16).astype(np.int64).tolist())
    elif name == "complex64":
        proto.scomplex_val.extend(flat.view(np.float32).tolist())
    elif name == "complex128":
        proto.dcomplex_val.extend(flat.view(np.float64).tolist())
    else:  # pragma: no cover
        raise TypeError(name)
    return proto


def _info(dtype: int, *dims: int) -> dict[str, Any]:
    return {"dtype": dtype, "dims": dims}


# signature -> (inputs, outputs, method); dims -1 = any
SIGNATURES: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "serving_default": (
        {"x": _info(types_pb2.DT_FLOAT, -1, 3)},
        {"y": _info(types_pb2.DT_FLOAT, -1, 3), "total": _info(types_pb2.DT_DOUBLE, -1),
         "tag": _info(types_pb2.DT_STRING, -1)},
        "tensorflow/serving/predict",
    ),
    "images": (
        {"images": _info(types_pb2.DT_STRING, -1)},
        {"probabilities": _info(types_pb2.DT_FLOAT, -1, 3), "class_id": _info(types_pb2.DT_INT64, -1),
         "class_name": _info(types_pb2.DT_STRING, -1)},
        "tensorflow/serving/predict",
    ),
    "echo": (  # returns its input as "out", whatever the dtype: exercises every typed field
        {"any": {"dtype": types_pb2.DT_INVALID, "dims": None}},
        {"out": {"dtype": types_pb2.DT_INVALID, "dims": None}},
        "tensorflow/serving/predict",
    ),
    "classify": ({"inputs": _info(types_pb2.DT_STRING, -1)}, {}, "tensorflow/serving/classify"),
    "regress": ({"inputs": _info(types_pb2.DT_STRING, -1)}, {}, "tensorflow/serving/regress"),
}


def signature_def_map() -> get_model_metadata_pb2.SignatureDefMap:
    result = get_model_metadata_pb2.SignatureDefMap()
    for name, (inputs, outputs, method) in SIGNATURES.items():
        sig = result.signature_def[name]
        sig.method_name = method
        for group, specs in (("inputs", inputs), ("outputs", outputs)):
            for alias, spec in specs.items():
                info = getattr(sig, group)[alias]
                info.name = f"{alias}:0"
                info.dtype = spec["dtype"]
                if spec["dims"] is None:
                    info.tensor_shape.unknown_rank = True
                else:
                    for size in spec["dims"]:
                        info.tensor_shape.dim.add(size=size)
    return result


class ServingFailure(Exception):
    """An error the servers turn into a gRPC status / an HTTP error body."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_HTTP = {
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.INTERNAL: 500,
}


@dataclass
class ToyModel:
    """A real computation in numpy, plus knobs to fail: the servers' shared state."""

    versions: dict[int, str] = field(default_factory=lambda: {1: "AVAILABLE", 2: "AVAILABLE"})
    labels: dict[str, int] = field(default_factory=lambda: {"stable": 1, "canary": 2})
    fail_next: int = 0
    fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    block: threading.Event | None = None
    calls: list[str] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, name: str, version: int | None, label: str | None) -> int:
        if name != MODEL:
            raise ServingFailure(grpc.StatusCode.NOT_FOUND,
                                 f"Servable not found for request: Latest({name})")
        if label:
            if label not in self.labels:
                raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        available = [v for v, s in self.versions.items() if s == "AVAILABLE"]
        if version is None:
            if not available:
                raise ServingFailure(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
            return max(available)
        if version not in available:
            raise ServingFailure(grpc.StatusCode.NOT_FOUND,
                                 f"Servable not found for request: Specific({name}, {version})")
        return version

    def enter(self, method: str, headers: dict[str, str] | None = None) -> None:
        with self.lock:
            self.calls.append(method)
            self.headers.append(headers or {})
            if self.fail_next > 0:
                self.fail_next -= 1
                raise ServingFailure(self.fail_code, "injected failure")
        if self.block is not None:
            self.block.wait(10)

    def predict(self, signature: str, inputs: dict[str, np.ndarray], version: int) -> dict[str, np.ndarray]:
        self.seen.append(inputs)
        signature = signature or "serving_default"
        if signature not in SIGNATURES:
            raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"Serving signature name: \"{signature}\" not found in signature def")
        if signature == "echo":
            return {"out": inputs["any"]}
        if signature == "images":
            images = inputs["images"].reshape(-1)
            logits = np.array([[len(b) % 3, (len(b) + 1) % 3, 0.5] for b in images], np.float32)
            probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            class_id = probabilities.argmax(axis=1).astype(np.int64)
            names = np.array([CLASSES[i].encode() for i in class_id], dtype=object)
            return {"probabilities": probabilities.astype(np.float32), "class_id": class_id, "class_name": names}
        x = inputs["x"]
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 3:
            raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT, f"input x: bad tensor {x.dtype} {x.shape}")
        return {
            "y": (x * 2 + version - 1 + 1).astype(np.float32),
            "total": x.astype(np.float64).sum(axis=1),
            "tag": np.array([f"row{i}".encode() for i in range(len(x))], dtype=object),
        }

    def classify(self, examples: list[dict[str, list[Any]]]) -> list[list[tuple[str, float]]]:
        return [[(CLASSES[int(sum(e["f"])) % 3], 0.75), ("other", 0.25)] for e in examples]

    def regress(self, examples: list[dict[str, list[Any]]]) -> list[float]:
        return [float(sum(e["f"])) for e in examples]

    def status(self, version: int | None) -> list[tuple[int, str]]:
        if version is not None:
            if version not in self.versions:
                raise ServingFailure(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {MODEL}")
            return [(version, self.versions[version])]
        return sorted(self.versions.items())


def _features(example: Any) -> dict[str, list[Any]]:
    result = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        result[key] = list(getattr(feature, kind).value) if kind else []
    return result


class _Servicer(prediction_service_pb2_grpc.PredictionServiceServicer,
                model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, model: ToyModel) -> None:
        self.model = model

    def _run(self, method: str, context: grpc.ServicerContext, fn: Any) -> Any:
        try:
            self.model.enter(method, dict(context.invocation_metadata()))
            return fn()
        except ServingFailure as exc:
            context.abort(exc.code, exc.message)

    @staticmethod
    def _spec(spec: Any) -> tuple[int | None, str | None]:
        which = spec.WhichOneof("version_choice")
        return (spec.version.value if which == "version" else None,
                spec.version_label if which == "version_label" else None)

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> Any:
        def run() -> Any:
            version = self.model.resolve(request.model_spec.name, *self._spec(request.model_spec))
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = self.model.predict(request.model_spec.signature_name, inputs, version)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = MODEL
            response.model_spec.version.value = version
            for key, value in outputs.items():
                if not request.output_filter or key in request.output_filter:
                    response.outputs[key].CopyFrom(as_proto_field(value))
            return response
        return self._run("predict", context, run)

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        def run() -> Any:
            self.model.resolve(request.model_spec.name, *self._spec(request.model_spec))
            examples = [_features(e) for e in request.input.example_list.examples]
            response = classification_pb2.ClassificationResponse()
            for classes in self.model.classify(examples):
                item = response.result.classifications.add()
                for label, score in classes:
                    item.classes.add(label=label, score=score)
            return response
        return self._run("classify", context, run)

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:
        def run() -> Any:
            self.model.resolve(request.model_spec.name, *self._spec(request.model_spec))
            examples = [_features(e) for e in request.input.example_list.examples]
            response = regression_pb2.RegressionResponse()
            for value in self.model.regress(examples):
                response.result.regressions.add(value=value)
            return response
        return self._run("regress", context, run)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def run() -> Any:
            version = self.model.resolve(request.model_spec.name, *self._spec(request.model_spec))
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = MODEL
            response.model_spec.version.value = version
            response.metadata["signature_def"].Pack(signature_def_map())
            return response
        return self._run("metadata", context, run)

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        def run() -> Any:
            if request.model_spec.name != MODEL:
                raise ServingFailure(grpc.StatusCode.NOT_FOUND,
                                     f"Could not find any versions of model {request.model_spec.name}")
            version, _ = self._spec(request.model_spec)
            response = get_model_status_pb2.GetModelStatusResponse()
            for number, state in self.model.status(version):
                response.model_version_status.add(
                    version=number, state=get_model_status_pb2.ModelVersionStatus.State.Value(state))
            return response
        return self._run("status", context, run)


@contextmanager
def grpc_server(model: ToyModel, credentials: grpc.ServerCredentials | None = None,
                max_message_bytes: int = 64 * 1024 * 1024) -> Iterator[str]:
    """Serves ``model`` on 127.0.0.1:<free port>; yields ``host:port``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ])
    servicer = _Servicer(model)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if model.block is not None:
            model.block.set()
        server.stop(grace=None)


def _json_tensor(name: str, array: np.ndarray) -> Any:
    if array.dtype == object:
        def convert(item: Any) -> Any:
            if isinstance(item, list):
                return [convert(i) for i in item]
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(item).decode()}
            return item.decode("utf-8")
        return convert(array.tolist())
    return array.tolist()


def _from_json(value: Any) -> np.ndarray:
    def convert(item: Any) -> Any:
        if isinstance(item, list):
            return [convert(i) for i in item]
        if isinstance(item, dict):
            return base64.b64decode(item["b64"])
        if isinstance(item, str):
            return item.encode()
        return item
    converted = convert(value)
    probe = converted
    while isinstance(probe, list) and probe:
        probe = probe[0]
    if isinstance(probe, bytes):
        return np.array(converted, dtype=object)
    array = np.array(converted)
    return array.astype(np.float32) if array.dtype == np.float64 else array


class _RestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    model: ToyModel

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _parse(self) -> tuple[str, int | None, str | None, str, str]:
        path, _, verb = self.path.partition(":")
        parts = path.strip("/").split("/")
        if len(parts) < 3 or parts[:2] != ["v1", "models"]:
            raise ServingFailure(grpc.StatusCode.NOT_FOUND, f"Malformed request: {self.path}")
        name, rest = parts[2], parts[3:]
        version = label = None
        if rest[:1] == ["versions"]:
            version, rest = int(rest[1]), rest[2:]
        elif rest[:1] == ["labels"]:
            label, rest = rest[1], rest[2:]
        return name, version, label, "/".join(rest), verb

    def _handle(self, method: str) -> None:
        try:
            name, version, label, tail, verb = self._parse()
            body = {}
            if method == "POST":
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
            kind = verb or ("metadata" if tail == "metadata" else "status")
            self.model.enter(kind, {k.lower(): v for k, v in self.headers.items()})
            if kind == "status":
                if name != MODEL:
                    raise ServingFailure(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
                states = self.model.status(version)
                self._send(200, {"model_version_status": [
                    {"version": str(v), "state": s, "status": {"error_code": "OK", "error_message": ""}}
                    for v, s in states]})
                return
            resolved = self.model.resolve(name, version, label)
            if kind == "metadata":
                self._send(200, {
                    "model_spec": {"name": MODEL, "signature_name": "", "version": str(resolved)},
                    "metadata": {"signature_def": json_format.MessageToDict(
                        signature_def_map(), preserving_proto_field_name=True)},
                })
            elif kind == "predict":
                signature = body.get("signature_name", "serving_default")
                if "inputs" in body:
                    raw = body["inputs"]
                    single = SIGNATURES.get(signature, ({"x": 0},))[0]
                    inputs = raw if isinstance(raw, dict) and "b64" not in raw else {next(iter(single)): raw}
                    outputs = self.model.predict(signature, {k: _from_json(v) for k, v in inputs.items()}, resolved)
                    named = {k: _json_tensor(k, v) for k, v in outputs.items()}
                    self._send(200, {"outputs": next(iter(named.values())) if len(named) == 1 else named})
                else:
                    rows = body["instances"]
                    if rows and isinstance(rows[0], dict) and "b64" not in rows[0]:
                        inputs = {k: _from_json([r[k] for r in rows]) for k in rows[0]}
                    else:
                        inputs = {next(iter(SIGNATURES[signature][0])): _from_json(rows)}
                    outputs = self.model.predict(signature, inputs, resolved)
                    named = {k: _json_tensor(k, v) for k, v in outputs.items()}
                    if len(named) == 1:
                        self._send(200, {"predictions": next(iter(named.values()))})
                    else:
                        count = len(next(iter(named.values())))
                        self._send(200, {"predictions": [{k: v[i] for k, v in named.items()} for i in range(count)]})
            elif kind in ("classify", "regress"):
                examples = [{k: v if isinstance(v, list) else [v] for k, v in e.items()} for e in body["examples"]]
                if kind == "classify":
                    results: Any = [[[label_, score] for label_, score in c] for c in self.model.classify(examples)]
                else:
                    results = self.model.regress(examples)
                self._send(200, {"results": results})
            else:
                raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT, f"unknown verb {verb}")
        except ServingFailure as exc:
            self._send(_HTTP.get(exc.code, 500), {"error": exc.message})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


@contextmanager
def rest_server(model: ToyModel, ssl_context: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serves ``model``'s REST API on 127.0.0.1:<free port>; yields ``http://127.0.0.1:port``
    (``https://`` with ``ssl_context``)."""
    handler = type("Handler", (_RestHandler,), {"model": model})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    scheme = "http"
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        if model.block is not None:
            model.block.set()
        server.shutdown()
        server.server_close()
        thread.join()
