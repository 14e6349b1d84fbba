"""The thin Python client for TF Serving: gRPC and REST, numpy in and out, no TensorFlow.

```python
from serving.client import Client
with Client("models.example:8500", model="digits") as c:   # "http://host:8501" -> REST
    out = c.predict({"images": [png_bytes]})
```
"""

from __future__ import annotations

from typing import Any

from serving.client._client import AsyncClient, Client
from serving.client._config import RetryPolicy, TLSConfig
from serving.client._errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    ServingError,
    Unavailable,
)
from serving.client._metrics import serve_metrics
from serving.client._model import ModelMetadata, ModelStatus, Signature, TensorSpec, VersionStatus
from serving.client._transports.base import AsyncTransport, Reply, Request, Transport
from serving.client._transports.mock import AsyncMockTransport, MockTransport

__all__ = [
    "AsyncClient",
    "AsyncMockTransport",
    "AsyncTransport",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "InvalidInput",
    "MockTransport",
    "ModelMetadata",
    "ModelNotFound",
    "ModelStatus",
    "PermissionDenied",
    "Reply",
    "Request",
    "ResourceExhausted",
    "RetryPolicy",
    "ServerError",
    "ServingError",
    "Signature",
    "TLSConfig",
    "TensorSpec",
    "Transport",
    "Unavailable",
    "VersionStatus",
    "serve_metrics",
    "to_ndarray",
    "to_tensor_proto",
]


def __getattr__(name: str) -> Any:
    """``to_ndarray`` and ``to_tensor_proto`` come from the wire codec, which imports numpy and protobuf:
    loaded on first use (PEP 562), so importing the client stays cheap."""
    if name in ("to_ndarray", "to_tensor_proto"):
        from serving.wire import codec

        return getattr(codec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
