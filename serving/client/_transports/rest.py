"""The REST transport: TF Serving's JSON API (``/v1/models/...``) over the standard library.

Predict sends the columnar format (``{"inputs": {...}}``) by default or the row format
(``{"instances": [...]}``); bytes travel as ``{"b64": ...}``. Answers are typed with the signature's
output dtypes when the client knows them (JSON has no float32 or int64). Connections are kept alive
and reused from a small pool. TF Serving's REST port has no TLS of its own; ``https://`` targets are
for a TLS-terminating proxy, ingress or mesh in front of it.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import itertools
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]

from serving.client._errors import InvalidInput, from_http_error, from_os_error, make_error
from serving.client._model import ModelMetadata, TensorSpec, metadata_from_proto, status_from_proto
from serving.client._transports.base import AsyncTransport, Reply, Request, Transport
from serving.wire.json_dtypes import JSON_NUMERIC_DTYPES
from serving.wire.proto import get_model_metadata_pb2, get_model_status_pb2

__all__ = ["AsyncRestTransport", "RestTransport", "from_json_value", "to_json_value"]

RestFormat = Literal["columnar", "row"]




def to_json_value(name: str, value: np.ndarray[Any, Any]) -> Any:
    """An array as TF Serving's JSON: nested lists, ``{"b64": ...}`` for bytes."""
    kind = value.dtype.kind
    if value.dtype in JSON_NUMERIC_DTYPES:
        return value.tolist()
    if kind in "SUO":
        def convert(item: Any) -> Any:
            if isinstance(item, list):
                return [convert(i) for i in item]
            if isinstance(item, str):
                return item
            if isinstance(item, (bytes, bytearray, memoryview, np.bytes_)):
                return {"b64": base64.b64encode(bytes(item)).decode("ascii")}
            raise InvalidInput(
                f"Expected bytes or str in string input {name!r}. Received: {type(item).__name__}"
            )

        return convert(value.tolist())
    raise InvalidInput(
        f"Expected input {name!r} in a dtype TF Serving's JSON API carries (float32/64, int8/16/32/64, "
        f"uint8/32/64, bool, string; use gRPC for the others). Received: dtype={value.dtype}"
    )


def _strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def from_json_value(value: Any, spec: TensorSpec | None) -> np.ndarray[Any, Any]:
    """A JSON answer as an array of the spec's dtype (strings as ``bytes`` in an object array)."""
    dtype = spec.numpy_dtype if spec is not None else None
    if (dtype is not None and dtype.kind == "O") or _has_strings(value):
        return np.array(_strings(value), dtype=object)
    if dtype is not None and dtype.kind == "c":
        dtype = None
    return np.asarray(value, dtype=dtype)


def _has_strings(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, (str, dict))


def _feature_json(value: Any) -> Any:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_feature_json(v) for v in value]
    if isinstance(value, (bytes, np.bytes_)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _name_outputs(value: Any, outputs: Mapping[str, TensorSpec] | None) -> dict[str, Any]:
    """TF Serving answers a single output bare, several as an object keyed by alias."""
    if isinstance(value, dict) and not set(value) <= {"b64"}:
        return value
    if outputs is not None and len(outputs) == 1:
        return {next(iter(outputs)): value}
    return {"outputs": value}


_DOWN_SECONDS = 1.0
"""How long a base URL that refused a connection is skipped when others are left."""


class _Endpoint:
    """One base URL and its pool of kept-alive connections."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None, pool_size: int) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"Expected an http:// or https:// URL with a host. Received: url={url!r}")
        self.url = url
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.base = parsed.path.rstrip("/")
        self.tls = parsed.scheme == "https"
        self.ssl_context = ssl_context or (ssl.create_default_context() if self.tls else None)
        self._pool: list[http.client.HTTPConnection] = []
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self.down_until = 0.0
        """``time.monotonic()`` until which calls skip this URL: it refused a connection."""

    def connection(self, timeout: float | None) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._pool:
                conn = self._pool.pop()
                conn.timeout = timeout  # used if it has to reconnect
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                return conn, True
        if self.tls:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.ssl_context
            ), False
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout), False

    def release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._pool) < self._pool_size:
                self._pool.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()


class RestTransport(Transport):
    """Blocking REST transport over ``http.client`` with kept-alive, pooled connections.

    ``url`` is one base URL or several (replicas behind no balancer); calls take them in turn, so the
    retry of a failed call goes to the next one."""

    name = "rest"

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        rest_format: RestFormat = "columnar",
        pool_size: int = 8,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("Expected at least one http:// or https:// URL. Received: none")
        if rest_format not in ("columnar", "row"):
            raise ValueError(f"Expected rest_format 'columnar' or 'row'. Received: rest_format={rest_format!r}")
        self.endpoints = [_Endpoint(u, ssl_context, pool_size) for u in urls]
        self.url = urls[0] if len(urls) == 1 else ",".join(urls)
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.rest_format = rest_format
        self._turn = itertools.count()

    # -- HTTP ---------------------------------------------------------------------------------------

    def _pick(self) -> _Endpoint:
        """The next URL in turn, skipping those that refused a connection lately (unless all did)."""
        endpoints = self.endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        turn, now = next(self._turn), time.monotonic()
        for offset in range(len(endpoints)):
            endpoint = endpoints[(turn + offset) % len(endpoints)]
            if endpoint.down_until <= now:
                return endpoint
        return endpoints[turn % len(endpoints)]

    def _http(self, endpoint: _Endpoint, request: Request, verb: str, path: str, body: bytes | None,
              timeout: float | None) -> tuple[int, bytes]:
        context = request.context(self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in (0, 1):
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            conn, reused = endpoint.connection(remaining)
            try:
                conn.request(verb, path, body=body, headers=self.headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused and attempt == 0:  # a kept-alive connection the server had closed
                    continue
                raise from_os_error(exc, context) from exc
            except OSError as exc:
                conn.close()
                error = from_os_error(exc, context)
                if error.unserved:  # skipped for a while, as gRPC skips a subchannel in backoff
                    endpoint.down_until = time.monotonic() + _DOWN_SECONDS
                raise error from exc
            except http.client.HTTPException as exc:
                conn.close()
                raise make_error("UNAVAILABLE", f"{type(exc).__name__}: {exc}", context) from exc
            if response.will_close:
                conn.close()
            else:
                endpoint.release(conn)
            return response.status, data
        raise AssertionError("unreachable")  # pragma: no cover

    # -- TF Serving's JSON API ------------------------------------------------------------------------

    @staticmethod
    def _model_path(endpoint: _Endpoint, request: Request) -> str:
        path = f"{endpoint.base}/v1/models/{urllib.parse.quote(request.model, safe='')}"
        if request.version is not None:
            path += f"/versions/{request.version}"
        elif request.version_label is not None:
            path += f"/labels/{urllib.parse.quote(request.version_label, safe='')}"
        return path

    def _predict_body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if request.signature:
            body["signature_name"] = request.signature
        inputs = {name: to_json_value(name, value) for name, value in request.inputs.items()}
        if self.rest_format == "columnar":
            body["inputs"] = inputs
            return body
        if len(inputs) == 1:
            body["instances"] = next(iter(inputs.values()))
            return body
        sizes = {name: len(value) if isinstance(value, list) else None for name, value in inputs.items()}
        if len(set(sizes.values())) != 1 or None in sizes.values():
            raise InvalidInput(
                f"Expected every input to share its first (batch) dimension for the row format. "
                f"Received: batch sizes {sizes}",
                context=request.context(self.name),
            )
        count = next(iter(sizes.values())) or 0
        body["instances"] = [{name: value[i] for name, value in inputs.items()} for i in range(count)]
        return body

    def _decode_predict(self, request: Request, answer: dict[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
        specs = request.outputs or {}
        if "outputs" in answer:
            named = _name_outputs(answer["outputs"], request.outputs)
        elif "predictions" in answer:
            rows = answer["predictions"]
            if rows and isinstance(rows[0], dict) and not set(rows[0]) <= {"b64"}:
                named = {key: [row[key] for row in rows] for key in rows[0]}
            else:
                named = _name_outputs(rows, request.outputs)
        else:
            raise make_error("INTERNAL", f"Expected 'outputs' or 'predictions' in the answer. "
                             f"Received: keys {sorted(answer)}", request.context(self.name))
        if request.output_filter:
            named = {k: v for k, v in named.items() if k in request.output_filter}
        return {key: from_json_value(value, specs.get(key)) for key, value in named.items()}

    def call(self, request: Request, timeout: float | None) -> Reply:
        endpoint = self._pick()
        path = self._model_path(endpoint, request)
        body: bytes | None = None
        if request.method == "predict":
            body = json.dumps(self._predict_body(request), allow_nan=True).encode()
            verb, path = "POST", path + ":predict"
        elif request.method in ("classify", "regress"):
            payload: dict[str, Any] = {"examples": [
                {k: _feature_json(v) for k, v in example.items()} for example in request.examples
            ]}
            if request.signature:
                payload["signature_name"] = request.signature
            if request.example_context is not None:
                payload["context"] = {k: _feature_json(v) for k, v in request.example_context.items()}
            body = json.dumps(payload).encode()
            verb, path = "POST", f"{path}:{request.method}"
        elif request.method == "metadata":
            verb, path = "GET", path + "/metadata"
        else:
            verb = "GET"
        status, data = self._http(endpoint, request, verb, path, body, timeout)
        if status != 200:
            raise from_http_error(status, data, request.context(self.name))
        try:
            answer = json.loads(data)
            value = self._decode(request, answer)
        except (ValueError, KeyError, TypeError, json_format.ParseError) as exc:
            if isinstance(exc, InvalidInput):
                raise
            raise make_error(
                "INTERNAL", f"Expected TF Serving's JSON answer. Received: {data[:200]!r} ({exc})",
                request.context(self.name),
            ) from exc
        version = value.version if isinstance(value, ModelMetadata) else None  # predict answers do not say
        return Reply(value, len(body or b""), len(data), version)

    def _decode(self, request: Request, answer: dict[str, Any]) -> Any:
        if request.method == "predict":
            return self._decode_predict(request, answer)
        if request.method == "classify":
            return [[(str(label), float(score)) for label, score in item] for item in answer["results"]]
        if request.method == "regress":
            return np.array(answer["results"], dtype=np.float32).reshape(-1)
        if request.method == "metadata":
            signatures = get_model_metadata_pb2.SignatureDefMap()
            json_format.ParseDict(
                answer.get("metadata", {}).get("signature_def", {}), signatures, ignore_unknown_fields=True
            )
            spec = answer.get("model_spec", {})
            version = int(spec["version"]) if spec.get("version") not in (None, "") else None
            return metadata_from_proto(spec.get("name") or request.model, version, signatures)
        status = get_model_status_pb2.GetModelStatusResponse()
        json_format.ParseDict(answer, status, ignore_unknown_fields=True)
        return status_from_proto(request.model, status)

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()


class AsyncRestTransport(AsyncTransport):
    """asyncio REST transport: the blocking transport's calls run in worker threads."""

    name = "rest"

    def __init__(self, url: str | Sequence[str], **kwargs: Any) -> None:
        self.sync = RestTransport(url, **kwargs)

    async def call(self, request: Request, timeout: float | None) -> Reply:
        return await asyncio.to_thread(self.sync.call, request, timeout)

    async def close(self) -> None:
        self.sync.close()
