"""The error tree and its one mapping from gRPC codes, HTTP statuses and socket errors.

gRPC codes come from a real ``grpc.server`` whose PredictionService/Predict handler aborts with the code
the request names (``context.abort(code, message)``): a fault injector, since no real model server can
be made to answer with every status code on demand; everything between it and the client (status on
the wire, grpcio's RpcError, the transport's mapping) is the real path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.client import (
    Cancelled,
    Client,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    ServerError,
    ServingError,
    Unavailable,
)
from serving.client._errors import RETRYABLE, CallContext, from_http_error, from_os_error

CONTEXT = CallContext("digits", "predict", "grpc", version=3, signature="serving_default")


@pytest.fixture(scope="module")
def aborting_server() -> Iterator[str]:
    """A real gRPC server whose Predict aborts with the status code named in the ``x-abort-code`` header."""

    def predict(request: bytes, context: grpc.ServicerContext) -> bytes:
        code = dict(context.invocation_metadata())["x-abort-code"]
        context.abort(grpc.StatusCode[code], "the server's words")
        raise AssertionError("unreachable")  # pragma: no cover

    handler = grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
        "Predict": grpc.unary_unary_rpc_method_handler(predict),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize(
    ("code", "cls", "builtin"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput, ValueError),
        (grpc.StatusCode.FAILED_PRECONDITION, InvalidInput, ValueError),
        (grpc.StatusCode.OUT_OF_RANGE, InvalidInput, ValueError),
        (grpc.StatusCode.NOT_FOUND, ModelNotFound, LookupError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded, TimeoutError),
        (grpc.StatusCode.UNAVAILABLE, Unavailable, ConnectionError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied, PermissionError),
        (grpc.StatusCode.UNAUTHENTICATED, PermissionDenied, PermissionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted, ServerError),
        (grpc.StatusCode.CANCELLED, Cancelled, ServingError),
        (grpc.StatusCode.INTERNAL, ServerError, ServingError),
        (grpc.StatusCode.UNKNOWN, ServerError, ServingError),
        (grpc.StatusCode.UNIMPLEMENTED, ServerError, ServingError),
        (grpc.StatusCode.DATA_LOSS, ServerError, ServingError),
    ],
    ids=lambda v: getattr(v, "name", getattr(v, "__name__", str(v))),
)
def test_grpc_codes_map_to_typed_errors(
    aborting_server: str, code: grpc.StatusCode, cls: type, builtin: type
) -> None:
    with (
        Client(aborting_server, "digits", version=3, headers={"x-abort-code": code.name}, validate=False,
               retry=RetryPolicy(attempts=1), registry=CollectorRegistry()) as client,
        pytest.raises(ServingError) as info,
    ):
        client.predict({"x": np.zeros((1, 3), np.float32)})
    error = info.value
    assert isinstance(error.__cause__, grpc.RpcError)  # chained: the original is kept
    assert type(error) is cls
    assert isinstance(error, builtin) and isinstance(error, ServingError)
    assert error.code == code.name
    assert error.server_message == "the server's words"
    assert (error.model, error.version, error.signature, error.method, error.transport) == (
        "digits", 3, "serving_default", "predict", "grpc")
    text = str(error)
    assert "the server's words" in text and "'digits'" in text and "version=3" in text and code.name in text


@pytest.mark.parametrize(
    ("status", "cls", "code"),
    [
        (400, InvalidInput, "INVALID_ARGUMENT"),
        (404, ModelNotFound, "NOT_FOUND"),
        (408, DeadlineExceeded, "DEADLINE_EXCEEDED"),
        (504, DeadlineExceeded, "DEADLINE_EXCEEDED"),
        (429, ResourceExhausted, "RESOURCE_EXHAUSTED"),
        (401, PermissionDenied, "UNAUTHENTICATED"),
        (403, PermissionDenied, "PERMISSION_DENIED"),
        (500, ServerError, "INTERNAL"),
        (501, ServerError, "UNIMPLEMENTED"),
        (502, Unavailable, "UNAVAILABLE"),
        (503, Unavailable, "UNAVAILABLE"),
        (418, InvalidInput, "INVALID_ARGUMENT"),
    ],
    ids=str,
)
def test_http_statuses_map_to_typed_errors(status: int, cls: type, code: str) -> None:
    error = from_http_error(status, b'{"error": "Servable not found for request: Latest(digits)"}', CONTEXT)
    assert type(error) is cls and error.code == code and error.http_status == status
    assert error.server_message == "Servable not found for request: Latest(digits)"
    assert f"HTTP {status}" in str(error)


def test_non_json_http_bodies_are_kept_as_text() -> None:
    error = from_http_error(502, b"<html>bad gateway</html>", CONTEXT)
    assert isinstance(error, Unavailable) and error.server_message == "<html>bad gateway</html>"


@pytest.mark.parametrize(
    ("exc", "cls"),
    [(TimeoutError("timed out"), DeadlineExceeded), (ConnectionRefusedError(111, "refused"), Unavailable),
     (ConnectionResetError(104, "reset"), Unavailable)],
    ids=["timeout", "refused", "reset"],
)
def test_socket_errors_map_to_typed_errors(exc: OSError, cls: type) -> None:
    assert type(from_os_error(exc, CONTEXT)) is cls


def test_only_unavailable_cancelled_and_resource_exhausted_are_retryable() -> None:
    assert set(RETRYABLE) == {Unavailable, ResourceExhausted, Cancelled}


def test_client_side_invalid_input_is_a_value_error() -> None:
    error = InvalidInput("Expected x. Received: y")
    assert isinstance(error, ValueError) and error.code == "INVALID_ARGUMENT" and error.model is None


def test_a_draining_servers_refusal_costs_no_retry_budget() -> None:
    """The local model server's drain (SIGTERM) answers new requests UNAVAILABLE / 503 with this message
    while in-flight ones finish: another replica will take them, and the server did no work."""
    words = "Server is draining (shutting down); send the request to another replica"
    rest = from_http_error(503, json.dumps({"error": words}).encode(), CONTEXT)
    assert isinstance(rest, Unavailable) and rest.unserved and rest.retryable
    assert not from_http_error(503, b'{"error": "overloaded"}', CONTEXT).unserved
