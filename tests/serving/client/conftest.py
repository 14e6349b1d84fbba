"""Fixtures: a fresh ToyModel behind real loopback gRPC and REST servers, and a fresh registry."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.serving.client.models import MODEL, build_toy_model, copy_version
from tests.serving.client.servers import ToyModel, grpc_server, rest_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


# ---------------------------------------------------------------------------------------------- real server

@pytest.fixture(scope="session")
def toy_versions(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Versions 1 and 2 of the toy model (tests/serving/client/models.py), built once per session."""
    root = tmp_path_factory.mktemp("toy-builds")
    return {version: build_toy_model(root / str(version), version) for version in (1, 2)}


def start_model_server(*flags: str) -> Any:
    """An in-process ``serving.model_server`` on free loopback ports; returns it started."""
    from serving.model_server import ModelServer, parse_flags

    argv = ["--port=0", f"--rest_api_port={free_port()}", *flags]
    server = ModelServer(replace(parse_flags(argv), host="127.0.0.1", grace_period_seconds=5.0))
    server.start()
    return server


@pytest.fixture(scope="session")
def toy_server(tmp_path_factory: pytest.TempPathFactory, toy_versions: dict[int, Path]) -> Iterator[Any]:
    """The real local model server serving model "toy" versions 1 and 2, labels stable=1 and canary=2."""
    root = tmp_path_factory.mktemp("toy-served")
    base = root / MODEL
    base.mkdir()
    for version, path in toy_versions.items():
        copy_version(path, base, version)
    config = root / "models.config"
    labels = 'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 }'
    config.write_text(
        f'model_config_list {{ config {{ name: "toy" base_path: "{base}" model_platform: "tensorflow" '
        f"model_version_policy {{ all {{}} }} {labels} }} }}\n"
    )
    server = start_model_server(f"--model_config_file={config}")
    yield server
    server.stop(grace=5.0)


@pytest.fixture(params=["grpc", "rest"])
def served(request: pytest.FixtureRequest, toy_server: Any) -> str:
    """The real server's target for each transport: ``127.0.0.1:<grpc>`` and ``http://127.0.0.1:<rest>``."""
    if request.param == "grpc":
        return f"127.0.0.1:{toy_server.grpc_port}"
    return f"http://127.0.0.1:{toy_server.rest_port}"
