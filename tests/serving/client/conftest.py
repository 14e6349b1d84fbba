"""Fixtures: a fresh ToyModel behind real loopback gRPC and REST servers, and a fresh registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from tests.serving.client.servers import ToyModel, grpc_server, rest_server


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy", "all_proxy",
                 "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def toy() -> ToyModel:
    return ToyModel()


@pytest.fixture
def grpc_target(toy: ToyModel) -> Iterator[str]:
    with grpc_server(toy) as target:
        yield target


@pytest.fixture
def rest_target(toy: ToyModel) -> Iterator[str]:
    with rest_server(toy) as target:
        yield target


@pytest.fixture(params=["grpc", "rest"])
def target(request: pytest.FixtureRequest, toy: ToyModel) -> Iterator[str]:
    """Both transports, one after the other."""
    server = grpc_server if request.param == "grpc" else rest_server
    with server(toy) as address:
        yield address


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()
