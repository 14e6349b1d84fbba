"""A transport that hands each request to a function: the seam for tests without a server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from serving.client._transports.base import AsyncTransport, Reply, Request, Transport

__all__ = ["AsyncMockTransport", "MockTransport"]

Handler = Callable[[Request], Any]


def _as_reply(value: Any) -> Reply:
    return value if isinstance(value, Reply) else Reply(value)


class MockTransport(Transport):
    """Answers each call with ``handler(request)``: a value (predict: ``dict`` of arrays, metadata:
    ``ModelMetadata``, ...) or a :class:`Reply`; exceptions it raises reach the client as they are."""

    def __init__(self, handler: Handler, name: str = "mock") -> None:
        self.handler = handler
        self.name = name
        self.requests: list[Request] = []

    def call(self, request: Request, timeout: float | None) -> Reply:
        self.requests.append(request)
        return _as_reply(self.handler(request))


class AsyncMockTransport(AsyncTransport):
    """The asyncio twin of :class:`MockTransport`; ``handler`` may be a plain or an async function."""

    def __init__(self, handler: Callable[[Request], Any | Awaitable[Any]], name: str = "mock") -> None:
        self.handler = handler
        self.name = name
        self.requests: list[Request] = []

    async def call(self, request: Request, timeout: float | None) -> Reply:
        self.requests.append(request)
        value = self.handler(request)
        if hasattr(value, "__await__"):
            value = await value
        return _as_reply(value)
