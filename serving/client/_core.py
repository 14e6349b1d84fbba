"""The client's one implementation, without I/O (sans-IO): what to send, whether to retry, how long
to wait, what the metadata cache holds, what the metrics count.

Each public call is a generator of steps: it yields :class:`Attempt` (send this request within this
many seconds) or :class:`Wait` (sleep this long), is sent back the transport's :class:`Reply` or has
the transport's :class:`ServingError` thrown in, and returns the call's result. The blocking
:class:`~serving.client.Client` and the asyncio :class:`~serving.client.AsyncClient` are thin loops
that do the I/O each step asks for (``_client.py``), so the two can never drift apart.

Retries (``RetryPolicy``): only errors whose ``retryable`` says so (UNAVAILABLE, refused or broken
connections, RESOURCE_EXHAUSTED other than a size limit), with exponential backoff and full jitter,
until the call's own deadline or the policy's attempts, and only while the client's retry budget
(gRFC A6 token bucket, ``_config.RetryBudget``) allows. Every call of this client is an idempotent
read (predict, classify, regress, metadata, status), so each may be retried.

Metadata cache: per ``(version, version_label)``. A pinned version never changes; the latest version
and labels move, so their entry is dropped when a reply names another version (gRPC answers carry a
``ModelSpec``; status answers list versions) and when it is older than ``metadata_ttl`` seconds.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from serving.client._config import RetryBudget, RetryPolicy
from serving.client._errors import CallContext, InvalidInput, ModelNotFound, ServingError, make_error
from serving.client._inputs import predict_request
from serving.client._metrics import metrics_for
from serving.client._model import ModelMetadata, ModelStatus
from serving.client._transports.base import Method, Reply, Request

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Attempt", "Core", "Steps", "Wait"]

T = TypeVar("T")


class Attempt:
    """Step: send ``request`` once, within ``timeout`` seconds (None: no deadline)."""

    __slots__ = ("request", "timeout")
    is_wait = False

    def __init__(self, request: Request, timeout: float | None) -> None:
        self.request, self.timeout = request, timeout


class Wait:
    """Step: sleep ``seconds`` before the next attempt."""

    __slots__ = ("seconds",)
    is_wait = True

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


Steps = Generator[Attempt | Wait, Reply | None, T]
"""A call as steps; see the module docstring."""

_Key = tuple[int | None, str | None]


class Core:
    """Everything but I/O, shared by the blocking and asyncio clients."""

    def __init__(
        self,
        model: str,
        *,
        version: int | None,
        version_label: str | None,
        signature: str,
        timeout: float | None,
        retry: RetryPolicy | None,
        validate: bool,
        metadata_ttl: float | None,
        registry: CollectorRegistry | None,
        transport_name: str,
    ) -> None:
        if not model:
            raise ValueError(f"Expected a model name. Received: model={model!r}")
        self.model = model
        self.version, self.version_label = self.versioning(version, version_label, (None, None))
        self.signature = signature
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.budget = RetryBudget(self.retry.max_tokens, self.retry.token_ratio)
        self.validate = validate
        self.metadata_ttl = metadata_ttl
        self.metrics = metrics_for(registry)
        self.transport_name = transport_name
        self._metadata: dict[_Key, tuple[ModelMetadata, float]] = {}
        self._metadata_lock = threading.Lock()
        self._rng = random.Random()

    # -- versions and requests ------------------------------------------------------------------------

    def versioning(self, version: int | None, version_label: str | None, default: _Key | None = None) -> _Key:
        if version is not None and version_label is not None:
            raise ValueError(
                f"Expected at most one of version and version_label. Received: version={version}, "
                f"version_label={version_label!r}"
            )
        if version is None and version_label is None:
            return default if default is not None else (self.version, self.version_label)
        return version, version_label

    def request(self, method: Method, version: int | None, version_label: str | None,
                signature: str | None = None, **fields: Any) -> Request:
        version, version_label = self.versioning(version, version_label)
        return Request(method, self.model, version, version_label, signature or "", **fields)

    def deadline(self, timeout: float | None) -> float | None:
        timeout = self.timeout if timeout is None else timeout
        return None if timeout is None else time.monotonic() + timeout

    # -- one call, with retries -----------------------------------------------------------------------

    def call(self, request: Request, deadline: float | None, *, retry: bool = True) -> Steps[Reply]:
        """Attempts ``request`` until it succeeds, fails for good, or ``deadline`` passes."""
        metrics = self.metrics
        stats = metrics.stats(self.model, request.method, self.transport_name)
        start = metrics.started(stats)
        code, reply, retries, last = "UNKNOWN", None, 0, None
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:  # the last wait overshot: its cause is the news
                    raise last or make_error("DEADLINE_EXCEEDED", "deadline passed before the call was sent",
                                             request.context(self.transport_name))
                try:
                    reply = yield Attempt(request, remaining)
                except ServingError as exc:
                    wait = self.next_wait(exc, retries, deadline) if retry else None
                    if wait is None:
                        raise
                    last = exc
                    metrics.retried(stats, exc.code)
                    retries += 1
                    yield Wait(wait)
                    continue
                assert reply is not None
                self.budget.succeeded()
                code = "OK"
                return reply
        except ServingError as exc:
            code = exc.code
            raise
        finally:  # also for cancellation and bugs (counted as UNKNOWN)
            if reply is None:
                metrics.finished(stats, start, code)
            else:
                metrics.finished(stats, start, code, reply.sent_bytes, reply.received_bytes)

    def next_wait(self, exc: ServingError, retries: int, deadline: float | None) -> float | None:
        """Seconds to wait before retrying after ``exc``, or None to give up and raise it."""
        if not exc.retryable:
            return None
        if not exc.unserved and not self.budget.failed():
            self.metrics.throttled(self.metrics.stats(self.model, exc.method or "", self.transport_name))
            return None
        if self.retry.attempts is not None and retries + 1 >= self.retry.attempts:
            return None
        wait = self.retry.backoff(retries, self._rng)
        if deadline is not None and deadline - time.monotonic() <= wait:
            return None
        return wait

    # -- metadata cache -------------------------------------------------------------------------------

    def cached_metadata(self, version: int | None, version_label: str | None) -> ModelMetadata | None:
        key = self.versioning(version, version_label)
        entry = self._metadata.get(key)
        if entry is None:
            return None
        meta, fetched = entry
        if key[0] is None and self.metadata_ttl is not None and time.monotonic() - fetched > self.metadata_ttl:
            self._forget(key, meta)
            return None
        return meta

    def remember_metadata(self, version: int | None, version_label: str | None, meta: ModelMetadata) -> None:
        with self._metadata_lock:
            self._metadata[self.versioning(version, version_label)] = (meta, time.monotonic())

    def _forget(self, key: _Key, meta: ModelMetadata) -> None:
        with self._metadata_lock:
            entry = self._metadata.get(key)
            if entry is not None and entry[0] is meta:
                del self._metadata[key]

    def note_served_version(self, version: int | None, version_label: str | None, served: int | None) -> None:
        """A reply named the version that answered: drop cached metadata of another version (a rollout
        moved "latest" or a label), so the next call fetches the new signatures."""
        if served is None:
            return
        key = self.versioning(version, version_label)
        entry = self._metadata.get(key)
        if entry is not None and key[0] is None and entry[0].version not in (None, served):
            self._forget(key, entry[0])

    def note_status(self, status: ModelStatus) -> None:
        """A status answer lists the versions: a newer AVAILABLE one makes cached "latest" metadata stale."""
        available = status.available_versions
        entry = self._metadata.get((None, None))
        if available and entry is not None and entry[0].version is not None and available[-1] > entry[0].version:
            self._forget((None, None), entry[0])

    def fetch_metadata(self, version: int | None, version_label: str | None,
                       deadline: float | None) -> Steps[ModelMetadata]:
        request = self.request("metadata", version, version_label)
        meta: ModelMetadata = (yield from self.call(request, deadline)).value
        if not meta.signatures:
            raise ModelNotFound(f"Expected signatures in the metadata of model {self.model!r}. Received: none",
                                context=request.context(self.transport_name))
        self.remember_metadata(version, version_label, meta)
        return meta

    # -- the public calls, as steps -------------------------------------------------------------------

    def metadata(self, version: int | None, version_label: str | None, refresh: bool,
                 timeout: float | None) -> Steps[ModelMetadata]:
        if not refresh:
            cached = self.cached_metadata(version, version_label)
            if cached is not None:
                return cached
        return (yield from self.fetch_metadata(version, version_label, self.deadline(timeout)))

    def _predict_request(self, inputs: Mapping[str, Any], signature: str | None, version: int | None,
                         version_label: str | None, output_filter: Sequence[str] | None,
                         metadata: ModelMetadata | None) -> Request:
        signature = signature or self.signature
        version, version_label = self.versioning(version, version_label)

        def context() -> CallContext:
            return CallContext(self.model, "predict", self.transport_name, version, version_label, signature)

        return predict_request(context, self.model, inputs, signature, version, version_label, output_filter,
                               metadata)

    def predict(self, inputs: Mapping[str, Any], signature: str | None, version: int | None,
                version_label: str | None, output_filter: Sequence[str] | None,
                timeout: float | None) -> Steps[Any]:
        """Checks ``inputs`` against the cached signature (fetching it once), sends, decodes."""
        deadline = self.deadline(timeout)
        args = (inputs, signature, version, version_label, output_filter)
        if not self.validate:
            reply = yield from self.call(self._predict_request(*args, None), deadline)
            return reply.value
        meta = self.cached_metadata(version, version_label)
        fresh = meta is None
        if meta is None:
            meta = yield from self.fetch_metadata(version, version_label, deadline)
        try:
            request = self._predict_request(*args, meta)
        except InvalidInput:
            if fresh:
                raise
            # The cached signature refused the inputs: a rollout may have changed it. Ask again once.
            meta, fresh = (yield from self.fetch_metadata(version, version_label, deadline)), True
            request = self._predict_request(*args, meta)
        try:
            reply = yield from self.call(request, deadline)
        except InvalidInput:
            if fresh:
                raise
            # The server refused what the cached signature let through: retry once on fresh metadata,
            # which either accepts the inputs or explains, client-side, what is wrong with them now.
            latest = yield from self.fetch_metadata(version, version_label, deadline)
            if latest == meta:
                raise
            reply = yield from self.call(self._predict_request(*args, latest), deadline)
        self.note_served_version(version, version_label, reply.version)
        return reply.value

    def examples(self, method: Method, examples: Sequence[Mapping[str, Any]], context: Mapping[str, Any] | None,
                 signature: str | None, version: int | None, version_label: str | None,
                 timeout: float | None) -> Steps[Any]:
        """classify / regress on ``tf.Example``-shaped feature mappings."""
        request = self.request(method, version, version_label, signature or self.signature,
                               examples=tuple(examples), example_context=context)
        reply = yield from self.call(request, self.deadline(timeout))
        self.note_served_version(version, version_label, reply.version)
        return reply.value

    def status(self, version: int | None, version_label: str | None, timeout: float | None,
               retry: bool = True) -> Steps[ModelStatus]:
        request = self.request("status", version, version_label)
        status: ModelStatus = (yield from self.call(request, self.deadline(timeout), retry=retry)).value
        if version is None and version_label is None and self.version is None and self.version_label is None:
            self.note_status(status)
        return status

    def ready(self, timeout: float | None) -> Steps[bool]:
        """True when a version is AVAILABLE; False when the model is unknown or the server unreachable
        (one attempt: a readiness probe must answer now, not after retrying until the deadline)."""
        try:
            return (yield from self.status(None, None, timeout, retry=False)).ready
        except (ModelNotFound, ConnectionError, TimeoutError):
            return False
