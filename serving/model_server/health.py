"""The standard gRPC health service (``grpc.health.v1.Health``), for ``--enable_grpc_healthcheck_service``.

TF Serving turns on gRPC's default health service and marks ``ModelService`` and
``PredictionService`` SERVING (``server.cc``); the overall service ``""`` is SERVING as soon as the
port is open, which happens only once every configured model is AVAILABLE. The two messages are tiny
(``HealthCheckRequest{string service = 1}``, ``HealthCheckResponse{ServingStatus status = 1}``), so they
are encoded here rather than pulling in ``grpcio-health-checking``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc

__all__ = ["HEALTH_SERVICE", "NOT_SERVING", "SERVICE_UNKNOWN", "SERVING", "HealthService", "decode_request",
           "encode_response"]

HEALTH_SERVICE = "grpc.health.v1.Health"
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def decode_request(data: bytes) -> str:
    """The ``service`` of a serialized ``HealthCheckRequest`` (unknown fields are skipped, as protobuf does)."""
    service, pos = "", 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            if number == 1:
                service = data[pos : pos + length].decode("utf-8")
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > len(data):
            raise ValueError("truncated field")
    return service


def encode_response(status: int) -> bytes:
    return bytes([0x08, status])


class HealthService:
    """Check and Watch over a fixed table of statuses (the server only serves once models are AVAILABLE)."""

    def __init__(self, services: tuple[str, ...] = ("", "ModelService", "PredictionService")) -> None:
        self._statuses = dict.fromkeys(services, SERVING)
        self._changed = threading.Condition()

    def services(self) -> list[str]:
        return list(self._statuses)

    def set_status(self, service: str, status: int) -> None:
        with self._changed:
            self._statuses[service] = status
            self._changed.notify_all()

    def Check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            service = decode_request(request)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed HealthCheckRequest: {exc}")
        status = self._statuses.get(service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "service name unknown")
        return encode_response(status)

    def Watch(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            service = decode_request(request)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed HealthCheckRequest: {exc}")
        last = None
        while context.is_active():
            with self._changed:
                status = self._statuses.get(service, SERVICE_UNKNOWN)
                if status == last:
                    self._changed.wait(1.0)
                    continue
            last = status
            yield encode_response(status)

    def handler(self) -> Any:
        identity = None  # messages stay bytes: the codec above does the work
        return grpc.method_handlers_generic_handler(
            HEALTH_SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.Check, request_deserializer=identity, response_serializer=identity
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.Watch, request_deserializer=identity, response_serializer=identity
                ),
            },
        )
