"""The model server's error tree: one exception per canonical status code a request can end with.

::

    ModelServerError (Exception)           code, http_status
     ├── InvalidArgument (ValueError)      INVALID_ARGUMENT   -> 400
     ├── FailedPrecondition (ValueError)   FAILED_PRECONDITION -> 400
     ├── NotFound (LookupError)            NOT_FOUND          -> 404
     ├── ResourceExhausted                 RESOURCE_EXHAUSTED -> 429 (413 for an oversized REST body)
     ├── DeadlineExceeded (TimeoutError)   DEADLINE_EXCEEDED  -> 504
     ├── Unavailable                       UNAVAILABLE        -> 503
     ├── Unimplemented                     UNIMPLEMENTED      -> 501
     ├── Internal                          INTERNAL           -> 500
     ├── Unknown                           UNKNOWN            -> 500
     ├── Cancelled                         CANCELLED          -> 499
     └── DataLoss                          DATA_LOSS          -> 500

The HTTP statuses are TF Serving's (``ToHTTPStatusCode`` in ``model_servers/http_server.cc``); the gRPC
services abort with :attr:`ModelServerError.code`, the REST API answers ``{"error": message}`` with
:attr:`ModelServerError.http_status`. Configuration and flag problems at start-up are separate:
:class:`ConfigError` and :class:`FlagError` (both ``ValueError``), and :class:`StartupError` when a configured
model never becomes available.
"""

from __future__ import annotations

import grpc

__all__ = [
    "Cancelled",
    "ConfigError",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FlagError",
    "Internal",
    "InvalidArgument",
    "ModelServerError",
    "NotFound",
    "ResourceExhausted",
    "StartupError",
    "Unavailable",
    "Unimplemented",
    "Unknown",
]


class ModelServerError(Exception):
    """A request failed with a canonical status; ``message`` is what the caller sees."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ModelServerError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class FailedPrecondition(ModelServerError, ValueError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400


class NotFound(ModelServerError, LookupError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class ResourceExhausted(ModelServerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class DeadlineExceeded(ModelServerError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Unavailable(ModelServerError):
    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class Unimplemented(ModelServerError):
    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class Internal(ModelServerError):
    code = grpc.StatusCode.INTERNAL
    http_status = 500


class Cancelled(ModelServerError):
    code = grpc.StatusCode.CANCELLED
    http_status = 499


class Unknown(ModelServerError):
    code = grpc.StatusCode.UNKNOWN
    http_status = 500


class DataLoss(ModelServerError):
    code = grpc.StatusCode.DATA_LOSS
    http_status = 500


class StartupError(RuntimeError):
    """The server cannot start serving, e.g. a configured model never became available (exit status 1)."""


class ConfigError(ValueError):
    """A config file (models, monitoring, batching) is missing, unreadable or invalid; carries its path."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class FlagError(ValueError):
    """A command-line flag is unknown, unsupported here, or has a bad value (exit status 2)."""
