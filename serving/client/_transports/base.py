"""The transport seam: what a call carries (:class:`Request`), what comes back (:class:`Reply`), and
the sync and async interfaces every transport implements.

A transport does one attempt of one call and raises typed :mod:`serving.client._errors` errors; the
client around it owns validation, retries, deadlines and metrics.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from serving.client._errors import CallContext

if TYPE_CHECKING:
    import numpy as np

    from serving.client._model import TensorSpec

__all__ = ["AsyncTransport", "Method", "Reply", "Request", "Transport"]

Method = Literal["predict", "classify", "regress", "metadata", "status"]


@dataclass(slots=True)
class Request:
    """One call, independent of the transport that carries it (built per call: a plain slotted
    dataclass, several times cheaper to make than a frozen one; treat it as immutable)."""

    method: Method
    model: str
    version: int | None = None
    version_label: str | None = None
    signature: str = ""
    inputs: Mapping[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    """predict: validated numpy inputs by alias."""
    output_filter: tuple[str, ...] = ()
    examples: Sequence[Mapping[str, Any]] = ()
    """classify/regress: one feature mapping per tf.Example."""
    example_context: Mapping[str, Any] | None = None
    outputs: Mapping[str, TensorSpec] | None = None
    """predict: the signature's outputs when known (REST needs them to type and name JSON answers)."""

    def context(self, transport: str) -> CallContext:
        return CallContext(
            self.model, self.method, transport, self.version, self.version_label, self.signature or None
        )


@dataclass(slots=True)
class Reply:
    """A call's decoded answer with the payload sizes, for the byte counters."""

    value: Any
    sent_bytes: int = 0
    received_bytes: int = 0
    version: int | None = None
    """The model version that answered, where the protocol says (gRPC answers carry a ModelSpec)."""


class Transport(abc.ABC):
    """A blocking transport."""

    name: str = "transport"

    @abc.abstractmethod
    def call(self, request: Request, timeout: float | None) -> Reply:
        """Does one attempt of ``request`` within ``timeout`` seconds; raises ServingError."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Releases connections."""


class AsyncTransport(abc.ABC):
    """An asyncio transport."""

    name: str = "transport"

    @abc.abstractmethod
    async def call(self, request: Request, timeout: float | None) -> Reply:
        """Does one attempt of ``request`` within ``timeout`` seconds; raises ServingError."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases connections."""
