"""The client API: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), thin shells over
one sans-IO core.

Every method asks :class:`serving.client._core.Core` for the steps of its call and does the I/O each
step names: an attempt on the transport or a wait. Request building, input checks, retries and their
budget, deadlines, the metadata cache and metrics all live in the core, once.

The core (and with it numpy and the wire codec) is imported when the first client is made, so
``from serving.client import Client`` costs little more than the interpreter's start.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from serving.client._config import RetryPolicy, TLSConfig
from serving.client._transports.base import AsyncTransport, Transport

if TYPE_CHECKING:
    import numpy as np
    from prometheus_client import CollectorRegistry

    from serving.client._core import Core, Steps, T
    from serving.client._model import ModelMetadata, ModelStatus

__all__ = ["AsyncClient", "Client", "RetryPolicy", "TLSConfig"]

DEFAULT_SIGNATURE = "serving_default"
_DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

_CLIENT_DOC = """

    ``target`` is ``host:port`` (or ``grpc://``/``grpcs://host:port``, or any gRPC resolver target:
    ``dns:///svc:8500``, ``ipv4:a:8500,b:8500``) for gRPC and ``http://host:port`` /
    ``https://host:port`` (several, comma-separated, taken in turn) for TF Serving's REST API.
    ``version`` or ``version_label`` pin a version (default: the latest); every call may override
    them and ``signature``. ``timeout`` is the default per-call deadline in seconds (retries
    included). ``retry`` is the :class:`RetryPolicy` (retries until the deadline, within a token-bucket
    budget). ``validate`` checks inputs against the signature in the cached model metadata before
    sending; ``metadata_ttl`` (seconds) bounds how long metadata of the latest version or a label is
    trusted. ``tls`` is a :class:`TLSConfig` (or True for system roots); ``headers`` are sent as gRPC
    call metadata or HTTP headers (e.g. ``{"authorization": "Bearer ..."}``). gRPC only:
    ``load_balancing`` (default ``"round_robin"``; ``"pick_first"`` or None for gRPC's default),
    ``grpc_options`` (channel arguments, which win over the client's) and ``wait_for_ready``.
    ``transport=`` replaces the network transport (tests: :class:`MockTransport`); ``registry=`` is
    where metrics go (default: prometheus-client's global registry).
"""


def _make(
    target: str, model: str, transport: Transport | AsyncTransport | None, asynchronous: bool,
    settings: dict[str, Any],
) -> tuple[Transport | AsyncTransport, Core]:
    """The transport (built from ``target`` unless given) and the core, from a client's arguments."""
    from serving.client._core import Core
    from serving.client._targets import build_transport

    if transport is None:
        transport = build_transport(
            target, asynchronous=asynchronous, **{k: settings.pop(k) for k in _TRANSPORT_SETTINGS}
        )
    else:
        for key in _TRANSPORT_SETTINGS:
            settings.pop(key)
    return transport, Core(model, transport_name=transport.name, **settings)


_TRANSPORT_SETTINGS = ("tls", "headers", "max_message_bytes", "keepalive_seconds", "rest_format",
                       "load_balancing", "grpc_options", "wait_for_ready")


class Client:
    """A blocking client for one model on a TF Serving (or compatible) server or fleet."""

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
        metadata_ttl: float | None = 60.0,
        tls: TLSConfig | bool | None = None,
        headers: Mapping[str, str] | None = None,
        max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES,
        keepalive_seconds: float | None = 30.0,
        rest_format: str = "columnar",
        load_balancing: str | None = "round_robin",
        grpc_options: Sequence[tuple[str, Any]] = (),
        wait_for_ready: bool = False,
        transport: Transport | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        settings = dict(locals())
        for key in ("self", "target", "model", "transport", "__class__"):
            settings.pop(key, None)
        built, self._core = _make(target, model, transport, False, settings)
        assert isinstance(built, Transport)
        self.transport: Transport = built

    def _run(self, steps: Steps[T]) -> T:
        """Does the I/O ``steps`` ask for, sending back replies and throwing in errors (interruptions
        too, so the core counts the call), until the core returns the result or raises."""
        transport = self.transport
        try:
            step = steps.send(None)
            while True:
                try:
                    if step.is_wait:
                        time.sleep(step.seconds)  # type: ignore[union-attr]
                        reply = None
                    else:
                        reply = transport.call(step.request, step.timeout)  # type: ignore[union-attr]
                except BaseException as exc:  # the core re-raises what it does not handle
                    step = steps.throw(exc)
                    continue
                step = steps.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

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

    def metadata(self, *, version: int | None = None, version_label: str | None = None,
                 refresh: bool = False, timeout: float | None = None) -> ModelMetadata:
        """The model's signatures (cached per version; ``refresh=True`` asks the server again)."""
        return self._run(self._core.metadata(version, version_label, refresh, timeout))

    def predict(self, inputs: Mapping[str, Any], *, signature: str | None = None, version: int | None = None,
                version_label: str | None = None, output_filter: Sequence[str] | None = None,
                timeout: float | None = None) -> dict[str, np.ndarray[Any, Any]]:
        """Runs the signature on ``inputs`` (name -> array-like); returns outputs as numpy arrays.

        Numeric outputs are read-only views of the response bytes where the wire allows it; strings
        come back as ``object`` arrays of ``bytes``. ``timeout`` bounds the whole call: metadata,
        retries and one refresh of stale metadata included."""
        steps = self._core.predict(inputs, signature, version, version_label, output_filter, timeout)
        return self._run(steps)

    def classify(self, examples: Sequence[Mapping[str, Any]], *, context: Mapping[str, Any] | None = None,
                 signature: str | None = None, version: int | None = None, version_label: str | None = None,
                 timeout: float | None = None) -> list[list[tuple[str, float]]]:
        """Classifies ``tf.Example``-shaped feature mappings; per example, ``(label, score)`` pairs."""
        steps = self._core.examples("classify", examples, context, signature, version, version_label, timeout)
        return self._run(steps)

    def regress(self, examples: Sequence[Mapping[str, Any]], *, context: Mapping[str, Any] | None = None,
                signature: str | None = None, version: int | None = None, version_label: str | None = None,
                timeout: float | None = None) -> np.ndarray[Any, Any]:
        """Runs a regression signature; one float32 value per example."""
        steps = self._core.examples("regress", examples, context, signature, version, version_label, timeout)
        return self._run(steps)

    def status(self, *, version: int | None = None, version_label: str | None = None,
               timeout: float | None = None) -> ModelStatus:
        """The model's version states (all versions unless one is pinned)."""
        return self._run(self._core.status(version, version_label, timeout))

    def ready(self, *, timeout: float | None = None) -> bool:
        """True when a version is AVAILABLE (not merely known or LOADING); False when the model is
        unknown or the server unreachable (one attempt, no retries)."""
        return self._run(self._core.ready(timeout))


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
        metadata_ttl: float | None = 60.0,
        tls: TLSConfig | bool | None = None,
        headers: Mapping[str, str] | None = None,
        max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES,
        keepalive_seconds: float | None = 30.0,
        rest_format: str = "columnar",
        load_balancing: str | None = "round_robin",
        grpc_options: Sequence[tuple[str, Any]] = (),
        wait_for_ready: bool = False,
        transport: AsyncTransport | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        settings = dict(locals())
        for key in ("self", "target", "model", "transport", "__class__"):
            settings.pop(key, None)
        built, self._core = _make(target, model, transport, True, settings)
        assert isinstance(built, AsyncTransport)
        self.transport: AsyncTransport = built

    async def _run(self, steps: Steps[T]) -> T:
        """As :meth:`Client._run`, awaiting the transport and the waits."""
        import asyncio  # only asyncio users pay for importing it

        transport = self.transport
        try:
            step = steps.send(None)
            while True:
                try:
                    if step.is_wait:
                        await asyncio.sleep(step.seconds)  # type: ignore[union-attr]
                        reply = None
                    else:
                        reply = await transport.call(step.request, step.timeout)  # type: ignore[union-attr]
                except BaseException as exc:  # cancellation included: the core counts it
                    step = steps.throw(exc)
                    continue
                step = steps.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    @property
    def model(self) -> str:
        return self._core.model

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    async def metadata(self, *, version: int | None = None, version_label: str | None = None,
                       refresh: bool = False, timeout: float | None = None) -> ModelMetadata:
        return await self._run(self._core.metadata(version, version_label, refresh, timeout))

    async def predict(self, inputs: Mapping[str, Any], *, signature: str | None = None,
                      version: int | None = None, version_label: str | None = None,
                      output_filter: Sequence[str] | None = None,
                      timeout: float | None = None) -> dict[str, np.ndarray[Any, Any]]:
        """As :meth:`Client.predict`."""
        steps = self._core.predict(inputs, signature, version, version_label, output_filter, timeout)
        return await self._run(steps)

    async def classify(self, examples: Sequence[Mapping[str, Any]], *, context: Mapping[str, Any] | None = None,
                       signature: str | None = None, version: int | None = None,
                       version_label: str | None = None, timeout: float | None = None) -> list[list[tuple[str, float]]]:
        steps = self._core.examples("classify", examples, context, signature, version, version_label, timeout)
        return await self._run(steps)

    async def regress(self, examples: Sequence[Mapping[str, Any]], *, context: Mapping[str, Any] | None = None,
                      signature: str | None = None, version: int | None = None,
                      version_label: str | None = None, timeout: float | None = None) -> np.ndarray[Any, Any]:
        steps = self._core.examples("regress", examples, context, signature, version, version_label, timeout)
        return await self._run(steps)

    async def status(self, *, version: int | None = None, version_label: str | None = None,
                     timeout: float | None = None) -> ModelStatus:
        return await self._run(self._core.status(version, version_label, timeout))

    async def ready(self, *, timeout: float | None = None) -> bool:
        return await self._run(self._core.ready(timeout))
