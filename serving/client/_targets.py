"""Targets to transports: which transport a target names, and how its channel balances and reconnects.

- ``host:port``, ``grpc://host:port``, ``grpcs://host:port`` (TLS) and every gRPC name-resolver target
  (``dns:///svc.ns:8500``, ``ipv4:10.0.0.1:8500,10.0.0.2:8500``, ``unix:/path``) go to gRPC;
- ``http://host:port`` / ``https://host:port`` go to TF Serving's REST API; several comma-separated
  base URLs (``http://a:8501,http://b:8501``) are taken in turn.

gRPC channels get the ``round_robin`` load-balancing policy through the service config
(``{"loadBalancingConfig": [{"round_robin": {}}]}``): every address a target resolves to gets a
connection and calls are spread over the ready ones (gRPC's default, ``pick_first``, sends everything
to the first address). ``load_balancing="pick_first"`` (or ``None``: gRPC's default) overrides it, as
does a ``grpc.service_config`` in ``grpc_options``. Reconnection after a lost connection is capped at
``_MAX_RECONNECT_BACKOFF_MS`` (gRPC's default grows to 120 s), so a restarted replica is found again
within the retries of a call; see docs/client.md for re-resolution of ``dns:///`` targets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from serving.client._config import TLSConfig
from serving.client._transports.base import AsyncTransport, Transport

__all__ = ["build_transport", "grpc_channel_options", "is_rest"]

_INITIAL_RECONNECT_BACKOFF_MS = 200
_MAX_RECONNECT_BACKOFF_MS = 2000


def is_rest(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def grpc_channel_options(load_balancing: str | None, options: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Channel arguments for balancing and reconnection; ``options`` given by the caller win."""
    merged: dict[str, Any] = {
        "grpc.initial_reconnect_backoff_ms": _INITIAL_RECONNECT_BACKOFF_MS,
        "grpc.max_reconnect_backoff_ms": _MAX_RECONNECT_BACKOFF_MS,
    }
    if load_balancing:
        merged["grpc.service_config"] = json.dumps({"loadBalancingConfig": [{load_balancing: {}}]})
    merged.update(dict(options))
    return list(merged.items())


def build_transport(
    target: str,
    *,
    asynchronous: bool,
    tls: TLSConfig | bool | None,
    headers: Mapping[str, str] | None,
    max_message_bytes: int,
    keepalive_seconds: float | None,
    rest_format: str,
    load_balancing: str | None,
    grpc_options: Sequence[tuple[str, Any]],
    wait_for_ready: bool,
) -> Transport | AsyncTransport:
    """The transport ``target`` names, built from the client's settings."""
    if is_rest(target):
        from serving.client._transports import rest

        urls = [url.strip() for url in target.split(",") if url.strip()]
        context = None
        if any(url.startswith("https://") for url in urls) and isinstance(tls, TLSConfig):
            context = tls.ssl_context()
        elif tls and not all(url.startswith("https://") for url in urls):
            raise ValueError(f"Expected https:// targets with TLS settings. Received: target={target!r}")
        cls_rest = rest.AsyncRestTransport if asynchronous else rest.RestTransport
        return cls_rest(urls, headers=headers, ssl_context=context, rest_format=rest_format)  # type: ignore[arg-type]
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
        options=grpc_channel_options(load_balancing, grpc_options),
        wait_for_ready=wait_for_ready,
    )
