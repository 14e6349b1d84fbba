"""The client API: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio) over any transport.

Both share :class:`_Core`, which owns everything that is not I/O: target parsing and transport
construction, input checks against the cached signature, the retry policy (exponential backoff with
full jitter, only for UNAVAILABLE / RESOURCE_EXHAUSTED, never past the call's deadline) and metrics.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.client._errors import CallContext, InvalidInput, ModelNotFound, ServingError
from serving.client._metrics import CallStats, ClientMetrics, metrics_for
from serving.client._model import ModelMetadata, ModelStatus, Signature, TensorSpec
from serving.client._transports.base import AsyncTransport, Method, Reply, Request, Transport
from serving.wire.codec import NUMPY_DTYPES as _NUMPY_ROWS
from serving.wire.codec import dtype_for_numpy

if TYPE_CHECKING:  # imported where used: keeps ``import serving.client`` light
    import ssl

    from prometheus_client import CollectorRegistry

__all__ = ["AsyncClient", "Client", "RetryPolicy", "TLSConfig"]

DEFAULT_SIGNATURE = "serving_default"
_DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

PathOrBytes = str | bytes | os.PathLike[str]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for UNAVAILABLE / RESOURCE_EXHAUSTED: ``attempts`` in all, the n-th wait drawn
    uniformly from ``[0, min(max_backoff, initial_backoff * multiplier**n)]`` (full jitter), and no
    wait or attempt past the call's deadline."""

    attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Expected attempts >= 1. Received: attempts={self.attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError(
                "Expected backoffs >= 0 and multiplier >= 1. Received: "
                f"initial_backoff={self.initial_backoff}, max_backoff={self.max_backoff}, "
                f"multiplier={self.multiplier}"
            )

    def backoff(self, retry: int, rng: random.Random) -> float:
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        return rng.uniform(0, cap)


@dataclass(frozen=True)
class TLSConfig:
    """TLS material, as file paths or PEM bytes: the server CA (None: system roots), an optional
    client certificate and key (mutual TLS), and a server name to verify instead of the host."""

    ca: PathOrBytes | None = None
    cert: PathOrBytes | None = None
    key: PathOrBytes | None = None
    server_name: str | None = None

    @staticmethod
    def _read(value: PathOrBytes | None) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        with open(value, "rb") as handle:
            return handle.read()

    def grpc_credentials(self) -> Any:
        from serving.client._transports.grpc import channel_credentials

        return channel_credentials(self._read(self.ca), self._read(self.key), self._read(self.cert))

    def ssl_context(self) -> ssl.SSLContext:
        import ssl

        ca = self._read(self.ca)
        context = ssl.create_default_context(cadata=ca.decode() if ca else None)
        if self.cert is not None:
            if isinstance(self.cert, bytes) or isinstance(self.key, bytes):
                raise ValueError("Expected file paths for an https client certificate. Received: PEM bytes")
            context.load_cert_chain(self.cert, self.key)
        return context


def _build_transport(
    target: str,
    *,
    asynchronous: bool,
    tls: TLSConfig | bool | None,
    headers: Mapping[str, str] | None,
    max_message_bytes: int,
    keepalive_seconds: float | None,
    rest_format: str,
) -> Transport | AsyncTransport:
    if target.startswith(("http://", "https://")):
        from serving.client._transports import rest

        context = None
        if target.startswith("https://") and isinstance(tls, TLSConfig):
            context = tls.ssl_context()
        elif target.startswith("http://") and tls:
            raise ValueError(f"Expected an https:// target with TLS settings. Received: target={target!r}")
        cls_rest = rest.AsyncRestTransport if asynchronous else rest.RestTransport
        return cls_rest(target, headers=headers, ssl_context=context, rest_format=rest_format)  # type: ignore[arg-type]
    from serving.client._transports import grpc as grpc_transport

    address = target.removeprefix("grpc://")
    credentials = None
    server_name = None
    if target.startswith("grpcs://"):
        address = target.removeprefix("grpcs://")
        tls = tls or True
    if tls:
        config = tls if isinstance(tls, TLSConfig) else TLSConfig()
        credentials = config.grpc_credentials()
        server_name = config.server_name
    cls_grpc = grpc_transport.AsyncGrpcTransport if asynchronous else grpc_transport.GrpcTransport
    return cls_grpc(
        address,
        credentials=credentials,
        metadata=tuple((headers or {}).items()),
        max_message_bytes=max_message_bytes,
        keepalive_seconds=keepalive_seconds,
        server_name=server_name,
    )


def _check_shape(name: str, spec: TensorSpec, array: np.ndarray[Any, Any], context: Any) -> None:
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise InvalidInput(
            f"Expected input {name!r} of rank {len(spec.shape)} (shape {_show(spec.shape)}). "
            f"Received: shape={list(array.shape)}",
            context=context,
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if want is not None and want != got:
            raise InvalidInput(
                f"Expected input {name!r} of shape {_show(spec.shape)} (dimension {axis} = {want}). "
                f"Received: shape={list(array.shape)}",
                context=context,
            )


def _show(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


class _Core:
    """Everything but I/O, shared by the blocking and asyncio clients."""

    def __init__(
        self,
        target: str,
        model: str,
        *,
        version: int | None,
        version_label: str | None,
        signature: str,
        timeout: float | None,
        retry: RetryPolicy | None,
        validate: bool,
        registry: CollectorRegistry | None,
        transport_name: str,
    ) -> None:
        if not model:
            raise ValueError(f"Expected a model name. Received: model={model!r}")
        if version is not None and version_label is not None:
            raise ValueError(
                f"Expected at most one of version and version_label. Received: version={version}, "
                f"version_label={version_label!r}"
            )
        self.target = target
        self.model = model
        self.version = version
        self.version_label = version_label
        self.signature = signature
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.validate = validate
        self.metrics: ClientMetrics = metrics_for(registry)
        self.transport_name = transport_name
        self._metadata: dict[tuple[int | None, str | None], ModelMetadata] = {}
        self._metadata_lock = threading.Lock()
        self._rng = random.Random()

    # -- requests -----------------------------------------------------------------------------------

    def versioning(self, version: int | None, version_label: str | None) -> tuple[int | None, str | None]:
        if version is not None and version_label is not None:
            raise ValueError(
                f"Expected at most one of version and version_label. Received: version={version}, "
                f"version_label={version_label!r}"
            )
        if version is None and version_label is None:
            return self.version, self.version_label
        return version, version_label

    def request(self, method: Method, version: int | None, version_label: str | None,
                signature: str | None = None, **fields: Any) -> Request:
        version, version_label = self.versioning(version, version_label)
        return Request(method, self.model, version, version_label, signature or "", **fields)

    def predict_request(
        self,
        inputs: Mapping[str, Any],
        signature: str | None,
        version: int | None,
        version_label: str | None,
        output_filter: Sequence[str] | None,
        metadata: ModelMetadata | None,
    ) -> Request:
        signature = signature or self.signature
        version, version_label = self.versioning(version, version_label)
        filters = tuple(output_filter or ())

        def context() -> CallContext:
            return CallContext(self.model, "predict", self.transport_name, version, version_label, signature)

        if not isinstance(inputs, Mapping) or not inputs:
            raise InvalidInput(
                f"Expected a non-empty mapping of input name to array. Received: {type(inputs).__name__}",
                context=context(),
            )
        sig = self.signature_of(metadata, signature, context) if metadata is not None else None
        arrays = {name: self.check_input(name, value, sig, context) for name, value in inputs.items()}
        if sig is not None:
            if len(arrays) != len(sig.inputs):
                missing = sorted(set(sig.inputs) - set(arrays))
                raise InvalidInput(
                    f"Expected every input of signature {signature!r}: {sorted(sig.inputs)}. "
                    f"Received: missing {missing}",
                    context=context(),
                )
            unknown_outputs = sorted(set(filters) - set(sig.outputs))
            if unknown_outputs:
                raise InvalidInput(
                    f"Expected output_filter names among {sorted(sig.outputs)}. "
                    f"Received: unknown {unknown_outputs}",
                    context=context(),
                )
        return Request("predict", self.model, version, version_label, signature, arrays, filters,
                       outputs=sig.outputs if sig is not None else None)

    @staticmethod
    def signature_of(metadata: ModelMetadata, signature: str, context: Callable[[], CallContext]) -> Signature:
        sig = metadata.signatures.get(signature)
        if sig is None:
            raise InvalidInput(
                f"Expected a signature of model {metadata.model!r} among {sorted(metadata.signatures)}. "
                f"Received: signature={signature!r}",
                context=context(),
            )
        return sig

    @staticmethod
    def check_input(
        name: str, value: Any, sig: Signature | None, make_context: Callable[[], CallContext]
    ) -> np.ndarray[Any, Any]:
        """The input as an array the codec carries, checked against its spec: dtype, rank, shape."""
        spec = sig.inputs.get(name) if sig is not None else None
        if spec is not None and type(value) is np.ndarray and spec.shape is not None:
            # fast path: an array of exactly the declared dtype and a matching shape
            row = _NUMPY_ROWS.get(value.dtype)
            if (row is not None and row.name == spec.dtype and value.ndim == len(spec.shape)
                    and all(w is None or w == g for w, g in zip(spec.shape, value.shape, strict=True))):
                return value
        context = make_context()
        if sig is not None and spec is None:
            raise InvalidInput(
                f"Expected input names among {sorted(sig.inputs)} for signature {sig.name!r}. "
                f"Received: unknown input {name!r}",
                context=context,
            )
        want = spec.numpy_dtype if spec is not None else None
        try:
            if isinstance(value, np.ndarray):
                array = value
            elif want is not None and want.kind != "O":
                array = np.asarray(value, dtype=want)
            else:
                array = np.asarray(value, dtype=object if _looks_like_strings(value) else None)
            if array.dtype.kind in "SU":
                array = array.astype(object)
            row = dtype_for_numpy(array.dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(f"Expected input {name!r} as an array. Received: {exc}", context=context) from exc
        if spec is not None:
            if spec.dtype != row.name:
                raise InvalidInput(
                    f"Expected input {name!r} of dtype {spec.dtype} ({want}). "
                    f"Received: dtype={array.dtype} ({row.name})",
                    context=context,
                )
            _check_shape(name, spec, array, context)
        return array

    # -- metadata cache -----------------------------------------------------------------------------

    def cached_metadata(self, version: int | None, version_label: str | None) -> ModelMetadata | None:
        return self._metadata.get(self.versioning(version, version_label))

    def remember_metadata(self, version: int | None, version_label: str | None, meta: ModelMetadata) -> None:
        with self._metadata_lock:
            self._metadata[self.versioning(version, version_label)] = meta

    def note_served_version(self, version: int | None, version_label: str | None, served: int | None) -> None:
        """Drop cached metadata of another version than the one that just answered (a rollout moved
        "latest" or a label): the next call fetches the new signatures."""
        key = self.versioning(version, version_label)
        cached = self._metadata.get(key)
        if served is not None and cached is not None and cached.version is not None and cached.version != served:
            with self._metadata_lock:
                if self._metadata.get(key) is cached:
                    del self._metadata[key]

    # -- calls ----------------------------------------------------------------------------------------

    def deadline(self, timeout: float | None) -> float | None:
        timeout = self.timeout if timeout is None else timeout
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def remaining(deadline: float | None) -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    def started(self, method: str) -> tuple[CallStats, float]:
        """Marks a call as in flight; returns its stats and start time."""
        stats = self.metrics.stats(self.model, method, self.transport_name)
        return stats, self.metrics.started(stats)

    def finished(self, stats: CallStats, start: float, code: str, reply: Reply | None) -> None:
        """Counts and times a finished call (retries included), with its payload sizes."""
        if reply is None:
            self.metrics.finished(stats, start, code)
        else:
            self.metrics.finished(stats, start, code, reply.sent_bytes, reply.received_bytes)

    def next_wait(self, request: Request, exc: ServingError, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before retrying after ``exc``, or None to give up."""
        if not exc.retryable or attempt + 1 >= self.retry.attempts:
            return None
        wait = self.retry.backoff(attempt, self._rng)
        remaining = self.remaining(deadline)
        if remaining is not None and remaining <= wait:
            return None
        self.metrics.retried(self.metrics.stats(self.model, request.method, self.transport_name), exc.code)
        return wait

    def timed_out(self, request: Request) -> ServingError:
        from serving.client._errors import make_error

        return make_error("DEADLINE_EXCEEDED", "deadline passed before the call was sent",
                          request.context(self.transport_name))


async def _sleep(seconds: float) -> None:
    import asyncio  # only asyncio users pay for importing it

    await asyncio.sleep(seconds)


def _looks_like_strings(value: Any) -> bool:
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return isinstance(value, (bytes, str))


def _check_model_found(meta: ModelMetadata, core: _Core, request: Request) -> None:
    if not meta.signatures:
        raise ModelNotFound(
            f"Expected signatures in the metadata of model {core.model!r}. Received: none",
            context=request.context(core.transport_name),
        )


_CLIENT_DOC = """

    ``target`` is ``host:port`` (or ``grpc://``/``grpcs://host:port``) for gRPC and
    ``http://host:port`` / ``https://host:port`` for TF Serving's REST API. ``version`` or
    ``version_label`` pin a version (default: the latest); every call may override them and
    ``signature``. ``timeout`` is the default per-call deadline in seconds (retries included).
    ``validate`` checks inputs against the signature in the (cached) model metadata before sending.
    ``tls`` is a :class:`TLSConfig` (or True for system roots); ``headers`` are sent as gRPC call
    metadata or HTTP headers (e.g. ``{"authorization": "Bearer ..."}``). ``transport=`` replaces the
    network transport (tests: :class:`MockTransport`); ``registry=`` is where metrics go (default:
    prometheus-client's global registry).
"""


class Client:
    """A blocking client for one model on a TF Serving (or compatible) server."""

    __doc__ = (__doc__ or "") + _CLIENT_DOC

    def __init__(
        self,
        target: str,
        model: str = "digits",
        *,
        version: int | None = None,
        version_label: str | None = None,
        signature: str = DEFAULT_SIGNATURE,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        validate: bool = True,
        tls: TLSConfig | bool | None = None,
        headers: Mapping[str, str] | None = None,
        max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES,
        keepalive_seconds: float | None = 30.0,
        rest_format: str = "columnar",
        transport: Transport | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if transport is None:
            built = _build_transport(
                target, asynchronous=False, tls=tls, headers=headers, max_message_bytes=max_message_bytes,
                keepalive_seconds=keepalive_seconds, rest_format=rest_format,
            )
            assert isinstance(built, Transport)
            transport = built
        self.transport: Transport = transport
        self._core = _Core(
            target, model, version=version, version_label=version_label, signature=signature,
            timeout=timeout, retry=retry, validate=validate, registry=registry,
            transport_name=transport.name,
        )

    @property
    def model(self) -> str:
        return self._core.model

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel or connections."""
        self.transport.close()

    def _call(self, request: Request, deadline: float | None) -> Reply:
        """One call with retries, all within ``deadline`` (a ``time.monotonic()`` instant, or None)."""
        core = self._core
        metrics, start = core.started(request.method)
        attempt = 0
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise core.timed_out(request)
                try:
                    reply = self.transport.call(request, remaining)
                except ServingError as exc:
                    wait = core.next_wait(request, exc, attempt, deadline)
                    if wait is None:
                        raise
                    attempt += 1
                    time.sleep(wait)
                    continue
                core.finished(metrics, start, "OK", reply)
                return reply
        except ServingError as exc:
            core.finished(metrics, start, exc.code, None)
            raise
        except BaseException:
            core.finished(metrics, start, "UNKNOWN", None)
            raise

    def _fetch_metadata(self, version: int | None, version_label: str | None, deadline: float | None) -> ModelMetadata:
        request = self._core.request("metadata", version, version_label)
        meta: ModelMetadata = self._call(request, deadline).value
        _check_model_found(meta, self._core, request)
        self._core.remember_metadata(version, version_label, meta)
        return meta

    def metadata(self, *, version: int | None = None, version_label: str | None = None,
                 refresh: bool = False, timeout: float | None = None) -> ModelMetadata:
        """The model's signatures (cached per version; ``refresh=True`` asks the server again)."""
        if not refresh:
            cached = self._core.cached_metadata(version, version_label)
            if cached is not None:
                return cached
        return self._fetch_metadata(version, version_label, self._core.deadline(timeout))

    def predict(
        self,
        inputs: Mapping[str, Any],
        *,
        signature: str | None = None,
        version: int | None = None,
        version_label: str | None = None,
        output_filter: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Runs the signature on ``inputs`` (name -> array-like); returns outputs as numpy arrays.

        Numeric outputs are read-only views of the response bytes where the wire allows it; strings
        come back as ``object`` arrays of ``bytes``. ``timeout`` bounds the whole call: metadata,
        retries and one refresh of stale metadata included."""
        core = self._core
        deadline = core.deadline(timeout)
        args = (inputs, signature, version, version_label, output_filter)
        if not core.validate:
            return self._call(core.predict_request(*args, None), deadline).value  # type: ignore[no-any-return]
        meta = core.cached_metadata(version, version_label)
        fresh = meta is None
        if meta is None:
            meta = self._fetch_metadata(version, version_label, deadline)
        try:
            request = core.predict_request(*args, meta)
        except InvalidInput:
            if fresh:
                raise
            # The cached signature refused the inputs: a rollout may have changed it. Ask again once.
            meta, fresh = self._fetch_metadata(version, version_label, deadline), True
            request = core.predict_request(*args, meta)
        try:
            reply = self._call(request, deadline)
        except InvalidInput:
            if fresh:
                raise
            # The server refused what the cached signature let through: retry once on fresh metadata,
            # which either accepts the inputs or explains, client-side, what is wrong with them now.
            latest = self._fetch_metadata(version, version_label, deadline)
            if latest == meta:
                raise
            reply = self._call(core.predict_request(*args, latest), deadline)
        core.note_served_version(version, version_label, reply.version)
        return reply.value  # type: ignore[no-any-return]

    def classify(
        self,
        examples: Sequence[Mapping[str, Any]],
        *,
        context: Mapping[str, Any] | None = None,
        signature: str | None = None,
        version: int | None = None,
        version_label: str | None = None,
        timeout: float | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Classifies ``tf.Example``-shaped feature mappings; per example, ``(label, score)`` pairs."""
        request = self._core.request(
            "classify", version, version_label, signature or self._core.signature,
            examples=tuple(examples), example_context=context,
        )
        result: list[list[tuple[str, float]]] = self._call(request, self._core.deadline(timeout)).value
        return result

    def regress(
        self,
        examples: Sequence[Mapping[str, Any]],
        *,
        context: Mapping[str, Any] | None = None,
        signature: str | None = None,
        version: int | None = None,
        version_label: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray[Any, Any]:
        """Runs a regression signature; one float32 value per example."""
        request = self._core.request(
            "regress", version, version_label, signature or self._core.signature,
            examples=tuple(examples), example_context=context,
        )
        result: np.ndarray[Any, Any] = self._call(request, self._core.deadline(timeout)).value
        return result

    def status(self, *, version: int | None = None, version_label: str | None = None,
               timeout: float | None = None) -> ModelStatus:
        """The model's version states (all versions unless one is pinned)."""
        request = self._core.request("status", version, version_label)
        status: ModelStatus = self._call(request, self._core.deadline(timeout)).value
        return status

    def ready(self, *, timeout: float | None = None) -> bool:
        """True when a version is AVAILABLE (not merely known or LOADING); False when the model is
        unknown or the server unreachable."""
        try:
            return self.status(timeout=timeout).ready
        except (ModelNotFound, ConnectionError, TimeoutError):
            return False


class AsyncClient:
    """The asyncio twin of :class:`Client`: the same arguments, ``await`` on every call."""

    __doc__ = (__doc__ or "") + _CLIENT_DOC

    def __init__(
        self,
        target: str,
        model: str = "digits",
        *,
        version: int | None = None,
        version_label: str | None = None,
        signature: str = DEFAULT_SIGNATURE,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        validate: bool = True,
        tls: TLSConfig | bool | None = None,
        headers: Mapping[str, str] | None = None,
        max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES,
        keepalive_seconds: float | None = 30.0,
        rest_format: str = "columnar",
        transport: AsyncTransport | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if transport is None:
            built = _build_transport(
                target, asynchronous=True, tls=tls, headers=headers, max_message_bytes=max_message_bytes,
                keepalive_seconds=keepalive_seconds, rest_format=rest_format,
            )
            assert isinstance(built, AsyncTransport)
            transport = built
        self.transport: AsyncTransport = transport
        self._core = _Core(
            target, model, version=version, version_label=version_label, signature=signature,
            timeout=timeout, retry=retry, validate=validate, registry=registry,
            transport_name=transport.name,
        )

    @property
    def model(self) -> str:
        return self._core.model

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    async def _call(self, request: Request, deadline: float | None) -> Reply:
        core = self._core
        metrics, start = core.started(request.method)
        attempt = 0
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise core.timed_out(request)
                try:
                    reply = await self.transport.call(request, remaining)
                except ServingError as exc:
                    wait = core.next_wait(request, exc, attempt, deadline)
                    if wait is None:
                        raise
                    attempt += 1
                    await _sleep(wait)
                    continue
                core.finished(metrics, start, "OK", reply)
                return reply
        except ServingError as exc:
            core.finished(metrics, start, exc.code, None)
            raise
        except BaseException:  # cancellation and bugs still count, as UNKNOWN
            core.finished(metrics, start, "UNKNOWN", None)
            raise

    async def _fetch_metadata(
        self, version: int | None, version_label: str | None, deadline: float | None
    ) -> ModelMetadata:
        request = self._core.request("metadata", version, version_label)
        meta: ModelMetadata = (await self._call(request, deadline)).value
        _check_model_found(meta, self._core, request)
        self._core.remember_metadata(version, version_label, meta)
        return meta

    async def metadata(self, *, version: int | None = None, version_label: str | None = None,
                       refresh: bool = False, timeout: float | None = None) -> ModelMetadata:
        if not refresh:
            cached = self._core.cached_metadata(version, version_label)
            if cached is not None:
                return cached
        return await self._fetch_metadata(version, version_label, self._core.deadline(timeout))

    async def predict(
        self,
        inputs: Mapping[str, Any],
        *,
        signature: str | None = None,
        version: int | None = None,
        version_label: str | None = None,
        output_filter: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """As :meth:`Client.predict`."""
        core = self._core
        deadline = core.deadline(timeout)
        args = (inputs, signature, version, version_label, output_filter)
        if not core.validate:
            return (await self._call(core.predict_request(*args, None), deadline)).value  # type: ignore[no-any-return]
        meta = core.cached_metadata(version, version_label)
        fresh = meta is None
        if meta is None:
            meta = await self._fetch_metadata(version, version_label, deadline)
        try:
            request = core.predict_request(*args, meta)
        except InvalidInput:
            if fresh:
                raise
            meta, fresh = await self._fetch_metadata(version, version_label, deadline), True
            request = core.predict_request(*args, meta)
        try:
            reply = await self._call(request, deadline)
        except InvalidInput:
            if fresh:
                raise
            latest = await self._fetch_metadata(version, version_label, deadline)
            if latest == meta:
                raise
            reply = await self._call(core.predict_request(*args, latest), deadline)
        core.note_served_version(version, version_label, reply.version)
        return reply.value  # type: ignore[no-any-return]

    async def classify(
        self,
        examples: Sequence[Mapping[str, Any]],
        *,
        context: Mapping[str, Any] | None = None,
        signature: str | None = None,
        version: int | None = None,
        version_label: str | None = None,
        timeout: float | None = None,
    ) -> list[list[tuple[str, float]]]:
        request = self._core.request(
            "classify", version, version_label, signature or self._core.signature,
            examples=tuple(examples), example_context=context,
        )
        result: list[list[tuple[str, float]]] = (await self._call(request, self._core.deadline(timeout))).value
        return result

    async def regress(
        self,
        examples: Sequence[Mapping[str, Any]],
        *,
        context: Mapping[str, Any] | None = None,
        signature: str | None = None,
        version: int | None = None,
        version_label: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray[Any, Any]:
        request = self._core.request(
            "regress", version, version_label, signature or self._core.signature,
            examples=tuple(examples), example_context=context,
        )
        result: np.ndarray[Any, Any] = (await self._call(request, self._core.deadline(timeout))).value
        return result

    async def status(self, *, version: int | None = None, version_label: str | None = None,
                     timeout: float | None = None) -> ModelStatus:
        request = self._core.request("status", version, version_label)
        status: ModelStatus = (await self._call(request, self._core.deadline(timeout))).value
        return status

    async def ready(self, *, timeout: float | None = None) -> bool:
        try:
            return (await self.status(timeout=timeout)).ready
        except (ModelNotFound, ConnectionError, TimeoutError):
            return False
