"""Metadata that follows versions: upstream's ``saved_model_half_plus_two_2_versions`` (versions 123 and
124, tensorflow_serving/servables/tensorflow/testdata/, in ../shared/upstream) copied in version by
version under a real local model server that polls its base path, as an export pipeline adds versions.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from serving.client import Client
from tests.serving.client.conftest import free_port
from tests.serving.client.replicas import poll
from tests.upstream import require

NAME = "saved_model_half_plus_two_2_versions"


def _copy_in(source: Path, base: Path, version: str) -> None:
    """Copy a version aside, then rename it into place: the server never sees half a version."""
    staging = base / f".staging-{version}"
    shutil.copytree(source / version, staging)
    staging.rename(base / str(int(version)))


@pytest.fixture
def half_plus_two(tmp_path: Path) -> Iterator[tuple[Any, Path, Path]]:
    """A real server of version 123 only, polling for new versions every second."""
    from dataclasses import replace

    from serving.model_server import ModelServer, parse_flags

    source = require("tensorflow_serving", "servables", "tensorflow", "testdata", NAME)
    base = tmp_path / "hp2"
    base.mkdir()
    _copy_in(source, base, "00000123")
    flags = parse_flags(["--port=0", f"--rest_api_port={free_port()}", "--model_name=hp2",
                         f"--model_base_path={base}", "--file_system_poll_wait_seconds=1"])
    server = ModelServer(replace(flags, host="127.0.0.1", grace_period_seconds=5.0))
    server.start(timeout=120)
    try:
        yield server, source, base
    finally:
        server.stop(grace=5.0)


def _target(server: Any, transport: str) -> str:
    return f"127.0.0.1:{server.grpc_port}" if transport == "grpc" else f"http://127.0.0.1:{server.rest_port}"


def _wait_for_124(server: Any, transport: str) -> None:
    """Poll with a separate client, so the client under test sees no status answer."""
    with Client(_target(server, transport), "hp2", registry=CollectorRegistry()) as watcher:
        poll(lambda: watcher.status().available_versions == (124,), what="version 124 served alone")


def test_grpc_replies_naming_a_newer_version_refresh_the_metadata(half_plus_two: tuple[Any, Path, Path]) -> None:
    server, source, base = half_plus_two
    with Client(_target(server, "grpc"), "hp2", metadata_ttl=None, registry=CollectorRegistry()) as client:
        assert client.metadata().version == 123
        assert client.predict({"x": [[1.0], [2.0]]})["y"].tolist() == [[2.5], [3.0]]
        _copy_in(source, base, "00000124")
        _wait_for_124(server, "grpc")
        assert client.metadata().version == 123  # nothing said otherwise yet (and no TTL)
        client.predict({"x": [[1.0]]})  # answered by 124, whose ModelSpec says so
        assert client.metadata().version == 124  # without refresh=True


def test_rest_metadata_follows_on_its_ttl(half_plus_two: tuple[Any, Path, Path]) -> None:
    """TF Serving's REST predict answers carry no version: there the TTL brings the new metadata."""
    server, source, base = half_plus_two
    with Client(_target(server, "rest"), "hp2", metadata_ttl=1.0, registry=CollectorRegistry()) as client:
        assert client.metadata().version == 123
        _copy_in(source, base, "00000124")
        _wait_for_124(server, "rest")
        poll(lambda: client.predict({"x": [[1.0]]}) and client.metadata().version == 124, timeout=30,
             what="metadata of version 124 within the TTL")


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_a_status_answer_listing_a_newer_version_refreshes_the_metadata(
    half_plus_two: tuple[Any, Path, Path], transport: str
) -> None:
    server, source, base = half_plus_two
    with Client(_target(server, transport), "hp2", metadata_ttl=None, registry=CollectorRegistry()) as client:
        assert client.metadata().version == 123
        _copy_in(source, base, "00000124")
        poll(lambda: 124 in client.status().available_versions, what="version 124 listed")
        assert client.metadata().version == 124
