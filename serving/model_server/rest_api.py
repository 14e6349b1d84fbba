"""The REST API on ``--rest_api_port``: TF Serving's ``/v1/models/...`` routes, and the metrics page.

Routes, status codes and bodies follow ``g3doc/api_rest.md`` and ``http_rest_api_handler.cc``:

- ``GET /v1/models/{name}[/versions/{v} | /labels/{l}]``: model status (GetModelStatus as JSON)
- ``GET .../metadata``: ``{"model_spec": ..., "metadata": {"signature_def": ...}}``
- ``POST .../{...}:predict | :classify | :regress``: row / columnar predict, ``"results"`` for the others
- ``GET <prometheus path>``: metrics, when ``--monitoring_config_file`` enables them

Every error is ``{"error": "<message>"}`` with TF Serving's mapping of status codes (INVALID_ARGUMENT and
FAILED_PRECONDITION 400, NOT_FOUND 404, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...); a body larger than
the limit is 413, a request still running at ``--rest_api_timeout_in_ms`` is answered 504 at that moment.
Bodies come with Content-Length or chunked.

Memory (:mod:`serving.model_server.budget`): a body's length is reserved before it is read (chunked bodies:
chunk by chunk), what parsing it takes before it is parsed, the reply's JSON before it is written; all
is released once the request's worker is done. Over budget the answer is 429 at once (a body not read yet
is discarded unread, in small pieces).
Threads: connections are HTTP/1.1 keep-alive, served by at most :func:`max_connections` threads (further
connections wait in the listen backlog); requests run in a pool of ``--rest_api_num_threads`` workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from concurrent import futures
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving.model_server import tensors
from serving.model_server.budget import MemoryBudget, Reservation, parse_cost, predict_array_cost, reply_cost
from serving.model_server.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ModelServerError,
    ResourceExhausted,
    Unavailable,
)
from serving.model_server.grpc_service import SIGNATURE_DEF_FIELD, Admission, model_metadata, model_status
from serving.model_server.loader import ModelManager
from serving.model_server.metrics import ServerMetrics

__all__ = ["RestApi", "RestServer", "max_connections"]

log = logging.getLogger(__name__)

_PREDICTION = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)


def _json(payload: Any) -> bytes:
    """Compact UTF-8 JSON; strings decoded with ``surrogateescape`` go back out as their raw bytes."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape in the request
        return text.encode("utf-8", "surrogatepass")


#: Python's JSON error messages -> rapidjson's (GetParseError_En), which TF Serving's errors carry.
_RAPIDJSON_ERRORS = (
    ("Expecting value", "Invalid value."),
    ("Expecting property name", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Extra data", "The document root must not be followed by other values."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid \\u", "Incorrect hex digit after \\u escape in string."),
    ("Invalid control character", "Invalid encoding in string."),
)


def _rapidjson_error(exc: json.JSONDecodeError) -> str:
    for python, rapidjson in _RAPIDJSON_ERRORS:
        if exc.msg.startswith(python):
            return rapidjson
    if exc.msg.startswith("Expecting ',' delimiter"):
        return "Missing a comma or ']' after an array element." if exc.doc[:exc.pos].rstrip().endswith(
            ("]", "[")) else "Missing a comma or '}' after an object member."
    return exc.msg


def _error_body(message: str) -> bytes:
    return _json({"error": message})


def max_connections(num_threads: int) -> int:
    """Connections served at once (a thread each): four per request worker, at least 64."""
    return max(64, 4 * num_threads)


class RestApi:
    """Request handling without sockets: ``handle(method, path, body) -> (status, body, model, api)``."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics, prometheus_path: str | None = None,
                 budget: MemoryBudget | None = None) -> None:
        self._budget = budget if budget is not None else MemoryBudget(1 << 62)
        self._manager = manager
        self._metrics = metrics
        self.prometheus_path = prometheus_path

    def handle(self, http_method: str, raw_path: str, body: bytes,
               reservation: Reservation | None = None) -> tuple[int, bytes, str, str]:
        """Answer one request; ``reservation`` (the body's, from the connection) grows with what decoding
        and the reply take (:func:`parse_cost`, :func:`reply_cost`) and may refuse with 429."""
        path = urlsplit(raw_path).path
        model, api = "", "unknown"
        start = time.perf_counter()
        try:
            if not path.lower().startswith("/v1/"):
                return HTTPStatus.NOT_FOUND, _error_body(f"Not found: {http_method} {path}"), model, api
            match = _PREDICTION.fullmatch(path) if http_method == "POST" else None
            if match:
                model, version, label, api = match.groups()
                api = api.lower()
                own = reservation is None  # called without the server's connection: hold and release here
                held = Reservation(self._budget) if reservation is None else reservation
                try:
                    payload = self._prediction(api, *self._spec(model, version, label), body, held)
                finally:
                    if own:
                        self._budget.release(held.total)
            else:
                match = _STATUS.fullmatch(path) if http_method == "GET" else None
                if not match:
                    raise InvalidArgument(f"Malformed request: {http_method} {path}")
                model, version, label, sub = match.groups()
                model = model or ""
                api = "metadata" if sub else "status"
                if not model:
                    raise InvalidArgument("Missing model name in request.")
                payload = self._metadata(*self._spec(model, version, label)) if sub else self._status(
                    *self._spec(model, version, label)
                )
            status, out = HTTPStatus.OK, payload
        except ModelServerError as exc:
            status, out = exc.http_status, _error_body(exc.message)
            self._metrics.observe(model, api, "rest", exc.code.name, time.perf_counter() - start)
            return status, out, model, api
        except Exception as exc:
            log.exception("REST %s %s failed", http_method, path)
            self._metrics.observe(model, api, "rest", "INTERNAL", time.perf_counter() - start)
            return HTTPStatus.INTERNAL_SERVER_ERROR, _error_body(f"Internal error: {exc}"), model, api
        self._metrics.observe(model, api, "rest", "OK", time.perf_counter() - start)
        return status, out, model, api

    @staticmethod
    def _spec(model: str, version: str | None, label: str | None) -> tuple[str, int | None, str | None]:
        name = unquote(model)
        if version is not None:
            try:
                number: int | None = int(version)
            except ValueError:
                raise InvalidArgument(f"Failed to convert version: {version} to numeric.") from None
            if number is not None and number >= 1 << 63:
                raise InvalidArgument(f"Failed to convert version: {version} to numeric.")
        else:
            number = None
        return name, number, unquote(label) if label else None

    # ------------------------------------------------------------------------------------------ GET

    def _status(self, name: str, version: int | None, label: str | None) -> bytes:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        if label:
            request.model_spec.version_label = label
        response = model_status(self._manager, request)
        return json_format.MessageToJson(response, always_print_fields_with_no_presence=True, indent=1).encode()

    def _metadata(self, name: str, version: int | None, label: str | None) -> bytes:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        if label:
            request.model_spec.version_label = label
        response = model_metadata(self._manager, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
        options = {"always_print_fields_with_no_presence": True, "preserving_proto_field_name": True}
        return _json(
            {
                "model_spec": json_format.MessageToDict(response.model_spec, **options),
                "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_map, **options)},
            }
        )

    # ------------------------------------------------------------------------------------------ POST

    @staticmethod
    def _parse(body: bytes) -> dict[str, Any]:
        if not body.strip():
            raise InvalidArgument("JSON Parse error: The document is empty")
        try:
            doc = json.loads(body)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"JSON Parse error: {_rapidjson_error(exc)} at offset: {exc.pos}") from None
        except (ValueError, RecursionError) as exc:  # invalid UTF-8, nesting beyond Python's recursion limit
            raise InvalidArgument(f"JSON Parse error: Invalid encoding in string. ({exc})") from None
        if not isinstance(doc, dict):
            raise InvalidArgument(f"JSON Value: {str(doc)[:256]} Is not object")
        signature = doc.get("signature_name", "")
        if not isinstance(signature, str):
            raise InvalidArgument(
                f"JSON Value: {str(signature)[:256]} not formatted correctly. 'signature_name' key must be a string "
                "value."
            )
        return doc

    def _prediction(self, api: str, name: str, version: int | None, label: str | None, body: bytes,
                    reservation: Reservation) -> bytes:
        parsing = parse_cost(body)
        reservation.add(parsing, "the REST request's parsed JSON")
        doc = self._parse(body)
        servable = self._manager.resolve(name, version, label)
        signature = doc.get("signature_name", "")
        try:
            if api == "predict":
                info = servable.signature(signature)
                dtypes = {alias: dtype for alias, (dtype, _shape) in info.inputs.items()}
                inputs, fmt = tensors.predict_inputs_from_json(doc, dtypes)
                del doc  # the parsed JSON is the largest copy: gone before the model runs
                reservation.charge(predict_array_cost(inputs) - parsing)  # parsing's share, exchanged
                _info, outputs = servable.predict(signature, inputs)
                del inputs
                reservation.add(reply_cost(outputs), "the REST reply")
                return _json(tensors.outputs_to_json(outputs, fmt))
            serialized = [e.SerializeToString() for e in tensors.examples_from_json(doc)]
            if api == "classify":
                _info, classes, scores = servable.classify(signature, serialized)
                rows = tensors.classification_rows(classes, scores)
                return _json({"results": [[[label, score] for label, score in row] for row in rows]})
            _info, values = servable.regress(signature, serialized)
            return _json({"results": tensors.to_json_value(values.astype(np.float32), "outputs")})
        except RecursionError:
            raise InvalidArgument("Expected JSON nested at most a few hundred levels deep. Received: deeper") from None


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], connections: int) -> None:
        super().__init__(address, handler)
        self.condition = threading.Condition()
        self.inflight = 0
        self.closing = False
        self.connections: set[socket.socket] = set()
        self._slots = threading.BoundedSemaphore(connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, at most ``connections`` at once: the accept loop waits for a free slot
        (new connections queue in the kernel's backlog meanwhile)."""
        while not self._slots.acquire(timeout=0.5):
            if self.closing:
                self.shutdown_request(request)
                return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        with self.condition:
            self.connections.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self.condition:
            self.connections.discard(request)
        super().shutdown_request(request)


class RestServer:
    """A threaded HTTP/1.1 server for :class:`RestApi`, with a graceful :meth:`stop`."""

    def __init__(
        self,
        api: RestApi,
        host: str,
        port: int,
        *,
        metrics: ServerMetrics,
        admission: Admission,
        num_threads: int,
        timeout_ms: int,
        max_request_bytes: int,
        enable_cors: bool = False,
    ) -> None:
        workers = futures.ThreadPoolExecutor(max_workers=max(num_threads, 1), thread_name_prefix="rest")
        budget = admission.budget
        self._workers = workers
        track_in_flight = metrics.in_flight.labels("rest").track_inprogress
        timeout = timeout_ms / 1000 if timeout_ms > 0 else None

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "TFStackModelServer/1"

            def setup(self) -> None:
                super().setup()
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s - %s", self.address_string(), format % args)

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if enable_cors:
                    self.send_header("Access-Control-Allow-Origin", "*")
                    self.send_header("Access-Control-Allow-Methods", "POST, GET")
                    self.send_header("Access-Control-Allow-Headers", "Content-Type")
                if self.server.closing:  # type: ignore[attr-defined]
                    self.send_header("Connection", "close")
                    self.close_connection = True
                # Headers and body leave in one write: two small writes meet Nagle's algorithm and the
                # client's delayed ACK, which costs ~40 ms per keep-alive request.
                self._headers_buffer.append(b"\r\n" + body)  # type: ignore[attr-defined]
                self.flush_headers()

            def _process(self, method: str) -> None:
                server: _HttpServer = self.server  # type: ignore[assignment]
                with server.condition:
                    server.inflight += 1
                reservation = Reservation(budget)
                handed_over = False  # the reservation goes with the request to its worker
                try:
                    path = self.path
                    if api.prometheus_path and method == "GET" and urlsplit(path).path == api.prometheus_path:
                        page, content_type = metrics.exposition()
                        self._send(HTTPStatus.OK, page, content_type)
                        return
                    try:
                        admission.check()
                    except Unavailable as exc:
                        self._refuse(exc)
                        return
                    body = b""
                    if method == "POST":
                        body = self._read_body(reservation)
                        if body is None:
                            return
                    handed_over = True
                    status, out = self._run(method, path, body, reservation)
                    self._send(status, out)
                finally:
                    if not handed_over:
                        budget.release(reservation.total)
                    with server.condition:
                        server.inflight -= 1
                        server.condition.notify_all()

            def _refuse(self, exc: ModelServerError) -> None:
                """Answer before reading the body, then discard a Content-Length body in small pieces (so the
                client, still sending, reads the answer rather than a reset) and close the connection."""
                self.close_connection = True
                metrics.observe("", "unknown", "rest", exc.code.name, 0.0)
                self._send(exc.http_status, _error_body(exc.message))
                if self.command == "POST" and "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                    left = min(int(self.headers.get("Content-Length") or 0), max_request_bytes)
                    with contextlib.suppress(OSError, ValueError):
                        while left > 0:
                            piece = self.rfile.read(min(left, 1 << 16))
                            if not piece:
                                break
                            left -= len(piece)

            def _reserve(self, reservation: Reservation, nbytes: int) -> bool:
                try:
                    reservation.add(nbytes, "the REST request body")
                except ResourceExhausted as exc:
                    self._refuse(exc)
                    return False
                return True

            def _read_body(self, reservation: Reservation) -> bytes | None:
                """The request body (Content-Length or chunked, as TF Serving's libevent server accepts), its
                memory reserved first; None after answering an error."""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    return self._read_chunked(reservation)
                length_header = self.headers.get("Content-Length")
                try:
                    length = int(length_header or 0)
                    if length < 0:
                        raise ValueError(length)
                except ValueError:
                    self.close_connection = True
                    self._send(HTTPStatus.BAD_REQUEST, _error_body(
                        f"Expected a non-negative Content-Length. Received: {length_header!r}"))
                    return None
                if length > max_request_bytes:
                    self._too_large(f"Content-Length={length}")
                    return None
                if not self._reserve(reservation, length):
                    return None
                return self.rfile.read(length)

            def _too_large(self, received: str) -> None:
                self.close_connection = True
                metrics.observe("", "unknown", "rest", "RESOURCE_EXHAUSTED", 0.0)
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _error_body(
                    f"Expected a request body of at most {max_request_bytes} bytes. Received: {received}"))

            def _read_chunked(self, reservation: Reservation) -> bytes | None:
                parts: list[bytes] = []
                total = 0
                while True:
                    line = self.rfile.readline(1024)
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                        if size < 0:
                            raise ValueError(size)
                    except ValueError:
                        self.close_connection = True
                        self._send(HTTPStatus.BAD_REQUEST, _error_body(
                            f"Expected a chunk size line. Received: {line[:64]!r}"))
                        return None
                    if size == 0:
                        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(parts)
                    total += size
                    if total > max_request_bytes:
                        self._too_large("more in chunks (Transfer-Encoding: chunked)")
                        return None
                    if not self._reserve(reservation, size):
                        return None
                    parts.append(self.rfile.read(size))
                    self.rfile.readline(1024)  # the CRLF after the chunk

            def _run(self, method: str, path: str, body: bytes, reservation: Reservation) -> tuple[int, bytes]:
                """Run the request in the worker pool; answer DEADLINE_EXCEEDED (504) at the
                --rest_api_timeout_in_ms deadline even while the model still runs, as TF Serving's session
                run timeout does (the abandoned run finishes in the background, its memory still reserved)."""
                with track_in_flight():
                    try:
                        future = workers.submit(api.handle, method, path, body, reservation)
                    except RuntimeError:  # the pool is shut down: the server is stopping
                        budget.release(reservation.total)
                        error = Unavailable(Admission.DRAINING_MESSAGE)
                        return error.http_status, _error_body(error.message)
                    future.add_done_callback(lambda _f: budget.release(reservation.total))
                    try:
                        status, out, _model, _api = future.result(timeout=timeout)
                    except futures.TimeoutError:
                        future.cancel()  # still queued (pool busy): it will not run at all
                        error = DeadlineExceeded(
                            f"Deadline Exceeded: the request did not finish within --rest_api_timeout_in_ms="
                            f"{timeout_ms}")
                        return error.http_status, _error_body(error.message)
                return status, out

            def do_GET(self) -> None:
                self._process("GET")

            def do_POST(self) -> None:
                self._process("POST")

            def do_OPTIONS(self) -> None:
                self._send(HTTPStatus.OK if enable_cors else HTTPStatus.BAD_REQUEST,
                           b"" if enable_cors else _error_body(f"Malformed request: OPTIONS {self.path}"))

            def _malformed(self) -> None:
                self._send(HTTPStatus.BAD_REQUEST, _error_body(f"Malformed request: {self.command} {self.path}"))

            do_PUT = do_DELETE = do_PATCH = _malformed

        Handler.timeout = max(timeout or 0, 60.0)  # socket reads: generous, so slow uploads are not cut short
        self._httpd = _HttpServer((host, port), Handler, max_connections(num_threads))
        self._thread: threading.Thread | None = None

    @property
    def in_flight(self) -> int:
        """Requests being read, run or answered now (from their first byte to their last)."""
        return self._httpd.inflight

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest-api", daemon=True)
        self._thread.start()

    def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` seconds), then close connections."""
        httpd = self._httpd
        with httpd.condition:
            httpd.closing = True  # first: an accept loop waiting for a connection slot gives up
        httpd.shutdown()
        deadline = time.monotonic() + grace
        with httpd.condition:
            while httpd.inflight and time.monotonic() < deadline:
                httpd.condition.wait(deadline - time.monotonic())
            connections = list(httpd.connections)
        self._workers.shutdown(wait=False, cancel_futures=True)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
