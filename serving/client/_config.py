"""The client's settings as data: the retry policy, the retry budget (a token bucket) and TLS material.

Nothing here does I/O or imports numpy, grpc or ssl at import time: ``from serving.client import
Client`` stays cheap, and the sync and async clients share one decision procedure (``_core``).

The retry budget is gRPC's retry throttling (gRFC A6, "Throttling Retry Attempts and Hedged RPCs",
https://github.com/grpc/proposal/blob/master/A6-client-retries.md) without the I/O: a bucket of
``max_tokens`` starts full; every failed attempt that reached a server takes one token, every success
gives back ``token_ratio``; while the bucket holds ``max_tokens / 2`` or less, failed calls are not
retried. One bucket per client, shared by every call and by both transports, so a fleet-wide
outage stops multiplying the load after a handful of failures while isolated failures (a restarting
replica) are still retried. A refused connection costs the server nothing and takes no token; the
backoff alone spaces those attempts.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import random
    import ssl

__all__ = ["PathOrBytes", "RetryBudget", "RetryPolicy", "TLSConfig"]

PathOrBytes = str | bytes | os.PathLike[str]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls (all of this client's: predict, classify, regress, metadata, status)
    after UNAVAILABLE, a refused or broken connection, or RESOURCE_EXHAUSTED other than a size limit.

    The n-th wait is drawn uniformly from ``[0, min(max_backoff, initial_backoff * multiplier**n)]``
    (full jitter); attempts go on until the call's own deadline (``attempts=None``) or until
    ``attempts`` in all, and stop early when the budget (``max_tokens``, ``token_ratio``: gRFC A6
    retry throttling) is spent. ``max_tokens=0`` turns the budget off."""

    attempts: int | None = None
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 1.6
    max_tokens: float = 10.0
    token_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"Expected attempts >= 1 or None. Received: attempts={self.attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError(
                "Expected backoffs >= 0 and multiplier >= 1. Received: "
                f"initial_backoff={self.initial_backoff}, max_backoff={self.max_backoff}, "
                f"multiplier={self.multiplier}"
            )
        if self.max_tokens < 0 or not 0 < self.token_ratio <= 1:
            raise ValueError(
                "Expected max_tokens >= 0 and 0 < token_ratio <= 1 (gRFC A6). Received: "
                f"max_tokens={self.max_tokens}, token_ratio={self.token_ratio}"
            )

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number ``retry`` (0-based), with full jitter."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(retry, 64))
        return rng.uniform(0, cap)


class RetryBudget:
    """gRFC A6's token bucket, thread-safe and I/O-free; one per client."""

    def __init__(self, max_tokens: float, token_ratio: float) -> None:
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self.tokens = max_tokens
        self._lock = threading.Lock()

    def succeeded(self) -> None:
        if self.tokens < self.max_tokens:
            with self._lock:
                self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)

    def failed(self) -> bool:
        """Takes a token for a failed attempt; returns whether a retry is still allowed."""
        if not self.max_tokens:
            return True
        with self._lock:
            self.tokens = max(0.0, self.tokens - 1)
            return self.tokens > self.max_tokens / 2


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
