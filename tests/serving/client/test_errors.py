"""The error tree and its one mapping from gRPC codes, HTTP statuses and socket errors."""

from __future__ import annotations

import grpc
import pytest

from serving.client import (
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    ServingError,
    Unavailable,
)
from serving.client._errors import RETRYABLE, CallContext, from_grpc_error, from_http_error, from_os_error

CONTEXT = CallContext("digits", "predict", "grpc", version=3, signature="serving_default")


class _FakeRpcError(grpc.RpcError):
    """The two accessors grpc's Call errors expose; everything else about it is real."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


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
def test_grpc_codes_map_to_typed_errors(code: grpc.StatusCode, cls: type, builtin: type) -> None:
    error = from_grpc_error(_FakeRpcError(code, "the server's words"), CONTEXT)
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
