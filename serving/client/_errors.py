"""The client's exception tree, and the one place that maps gRPC, HTTP and socket errors onto it.

```
ServingError                                  every error the client raises
 ├── InvalidInput(ValueError)                 INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE,
 │                                            HTTP 400; also client-side checks (nothing was sent)
 ├── ModelNotFound(LookupError)               NOT_FOUND, HTTP 404
 ├── DeadlineExceeded(TimeoutError)           DEADLINE_EXCEEDED, HTTP 408/504, socket timeouts
 ├── Unavailable(ConnectionError)             UNAVAILABLE, HTTP 502/503, refused/reset connections
 ├── PermissionDenied(PermissionError)        PERMISSION_DENIED, UNAUTHENTICATED, HTTP 401/403
 ├── Cancelled                                CANCELLED (by the server or a proxy)
 └── ServerError                              INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS, ABORTED, ...,
      └── ResourceExhausted                   RESOURCE_EXHAUSTED, HTTP 429
```

Every error carries ``model``, ``version``, ``signature``, ``method``, ``transport``, ``code`` (the
gRPC status name, e.g. ``"NOT_FOUND"``), ``http_status`` (REST only) and the server's own message.
Only ``Unavailable``, ``Cancelled`` and ``ResourceExhausted`` are retried, and a ``ResourceExhausted`` from a size
limit is not (each error's ``retryable`` says); ``unserved`` marks an attempt no server did any work
for (a refused connection, a draining server turning it away), which the retry budget does not charge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "RETRYABLE",
    "CallContext",
    "Cancelled",
    "DeadlineExceeded",
    "InvalidInput",
    "ModelNotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerError",
    "ServingError",
    "Unavailable",
    "from_grpc_error",
    "from_http_error",
    "from_os_error",
]


@dataclass(frozen=True)
class CallContext:
    """What a call was about, attached to every error it raises."""

    model: str
    method: str
    transport: str
    version: int | None = None
    version_label: str | None = None
    signature: str | None = None


class ServingError(Exception):
    """Base of every error the client raises."""

    retryable: bool = False
    """Whether another attempt of the same call may succeed (the server did not process it)."""

    unserved: bool = False
    """True when no server did any work for the attempt: no connection could be made, or a draining
    server turned it away (the local model server says "Server is draining"); another replica will
    take it, and it costs no retry budget."""

    default_code = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        context: CallContext | None = None,
        code: str | None = None,
        http_status: int | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.context = context
        self.code = code or self.default_code
        self.http_status = http_status
        self.server_message = server_message

    @property
    def model(self) -> str | None:
        return self.context.model if self.context else None

    @property
    def version(self) -> int | None:
        return self.context.version if self.context else None

    @property
    def version_label(self) -> str | None:
        return self.context.version_label if self.context else None

    @property
    def signature(self) -> str | None:
        return self.context.signature if self.context else None

    @property
    def method(self) -> str | None:
        return self.context.method if self.context else None

    @property
    def transport(self) -> str | None:
        return self.context.transport if self.context else None


class InvalidInput(ServingError, ValueError):
    """The request was refused as malformed, by the client's checks or by the server."""

    default_code = "INVALID_ARGUMENT"


class ModelNotFound(ServingError, LookupError):
    """No such model, version, label or signature is being served."""

    default_code = "NOT_FOUND"


class DeadlineExceeded(ServingError, TimeoutError):
    """The call's deadline passed before an answer came."""

    default_code = "DEADLINE_EXCEEDED"


class Unavailable(ServingError, ConnectionError):
    """The server could not be reached or is not serving (retried)."""

    default_code = "UNAVAILABLE"
    retryable = True


class PermissionDenied(ServingError, PermissionError):
    """The server refused the caller's credentials."""

    default_code = "PERMISSION_DENIED"


class Cancelled(ServingError):
    """The server (or a proxy) cancelled the call (retried: a caller's own cancellation is raised as
    ``asyncio.CancelledError`` or ``KeyboardInterrupt``, never as this). A gRPC server that stops
    cancels the calls it accepted but did not run (grpcio's ``server.stop(grace)``), so for this
    client's idempotent calls another attempt, on another replica, is right."""

    default_code = "CANCELLED"
    retryable = True


class ServerError(ServingError):
    """The server failed while handling a well-formed request."""

    default_code = "INTERNAL"


class ResourceExhausted(ServerError):
    """The server is overloaded (retried) or a message-size limit was hit (not retried)."""

    default_code = "RESOURCE_EXHAUSTED"

    @property
    def size_limit(self) -> bool:
        """True when a size limit refused the call: the same request would fail again.

        gRPC says "Received/Sent message larger than max (N vs. M)" (grpc core's message_size_filter);
        HTTP says 413; the local model server names its per-request limits (``max_decoded_request_bytes``,
        "a request body of at most N bytes")."""
        return self.http_status == 413 or any(marker in self.message for marker in _SIZE_MARKERS)

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return not self.size_limit


_SIZE_MARKERS = ("larger than max", "max_decoded_request_bytes", "request body of at most")

# What grpc core says when no connection could be made (pick_first / round_robin), and the socket errors
# of a refused connection: attempts that never reached a server.
_CONNECT_FAILURES = ("failed to connect to all addresses", "connections to all backends failing")
# What the local model server answers (UNAVAILABLE / HTTP 503) to new requests once SIGTERM started its drain.
_DRAINING = "Server is draining"

RETRYABLE: tuple[type[ServingError], ...] = (Unavailable, ResourceExhausted, Cancelled)
"""The error types that may be worth another attempt; each error's ``retryable`` decides (a
``ResourceExhausted`` from a message-size limit is not)."""

_BY_CODE: dict[str, type[ServingError]] = {
    "INVALID_ARGUMENT": InvalidInput,
    "FAILED_PRECONDITION": InvalidInput,
    "OUT_OF_RANGE": InvalidInput,
    "NOT_FOUND": ModelNotFound,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "UNAVAILABLE": Unavailable,
    "PERMISSION_DENIED": PermissionDenied,
    "UNAUTHENTICATED": PermissionDenied,
    "CANCELLED": Cancelled,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
}

# HTTP status -> gRPC code name, as TF Serving's REST layer maps them the other way round
# (tensorflow_serving/util/net_http/... ToHTTPStatusCode), plus the proxies' usual answers.
_HTTP_CODES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _describe(context: CallContext) -> str:
    where = f"model={context.model!r}"
    if context.version is not None:
        where += f", version={context.version}"
    if context.version_label is not None:
        where += f", version_label={context.version_label!r}"
    if context.signature:
        where += f", signature={context.signature!r}"
    return f"{context.method} over {context.transport} ({where})"


def make_error(
    code: str, server_message: str, context: CallContext, http_status: int | None = None
) -> ServingError:
    """Builds the typed error for a status code name and the server's message."""
    cls = _BY_CODE.get(code, ServerError)
    status = f"{code}" if http_status is None else f"HTTP {http_status} {code}"
    message = f"{_describe(context)} failed with {status}: {server_message or '(no message)'}"
    return cls(message, context=context, code=code, http_status=http_status, server_message=server_message)


def from_grpc_error(exc: Any, context: CallContext) -> ServingError:
    """Maps a ``grpc.RpcError`` (sync or aio) onto the tree; raise the result ``from exc``."""
    try:
        code = exc.code().name
        details = exc.details() or ""
    except Exception:  # an RpcError that is not a Call: no status to read
        code, details = "UNKNOWN", str(exc)
    error = make_error(code, details, context)
    if code == "UNAVAILABLE" and (details.startswith(_CONNECT_FAILURES) or _DRAINING in details):
        error.unserved = True
    return error


def from_http_error(status: int, body: bytes, context: CallContext) -> ServingError:
    """Maps a non-2xx REST answer; TF Serving's body is ``{"error": "<message>"}``."""
    import json

    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict) and "error" in parsed:
            text = str(parsed["error"])
    except ValueError:
        pass
    code = _HTTP_CODES.get(status) or ("INVALID_ARGUMENT" if 400 <= status < 500 else "UNKNOWN")
    error = make_error(code, text, context, http_status=status)
    error.unserved = code == "UNAVAILABLE" and _DRAINING in text
    return error


def from_os_error(exc: OSError, context: CallContext) -> ServingError:
    """Maps socket-level failures of the REST transport; raise the result ``from exc``."""
    import socket
    import ssl

    if isinstance(exc, (socket.timeout, TimeoutError)):
        return make_error("DEADLINE_EXCEEDED", f"timed out: {exc}", context)
    if isinstance(exc, ssl.SSLError):
        return make_error("UNAVAILABLE", f"TLS handshake failed: {exc}", context)
    error = make_error("UNAVAILABLE", f"{type(exc).__name__}: {exc}", context)
    error.unserved = isinstance(exc, ConnectionRefusedError)
    return error
