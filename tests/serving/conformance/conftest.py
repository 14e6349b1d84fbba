"""Fixtures for the conformance suite: TF Serving's own test expectations, run against the local server.

Every test here cites the upstream file (and test) of tensorflow/serving its expectation comes from. The
models are ours, rebuilt to upstream's specification by ``tests/fixtures/make_upstream_models.py`` under
upstream's names (``saved_model_half_plus_two_cpu``, ...). Servers run in this process on real loopback
ports (``start_server``) or as ``python -m serving.model_server`` subprocesses; readiness is polled.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serving.model_server.conftest import (  # noqa: F401 - fixtures re-exported for this directory
    UPSTREAM_MODELS,
    free_port,
    http,
    start_server,
    wait_until,
)


def upstream_model(tmp_path: Path, name: str, versions: tuple[str, ...] | None = None) -> Path:
    """A copy of one of our upstream-equivalent models (all versions, or ``versions``) under ``tmp_path``."""
    source = UPSTREAM_MODELS / name
    target = tmp_path / "models" / name
    target.mkdir(parents=True)
    for version in sorted(p.name for p in source.iterdir()):
        if versions is None or version in versions:
            shutil.copytree(source / version, target / version)
    return target


@pytest.fixture
def half_plus_two(tmp_path: Path) -> Path:
    """Base path of ``saved_model_half_plus_two_cpu`` (version 123), as upstream's tests use it."""
    return upstream_model(tmp_path, "saved_model_half_plus_two_cpu")


@pytest.fixture
def default_server(start_server, half_plus_two: Path):  # type: ignore[no-untyped-def]  # noqa: F811
    """``--model_name=default --model_base_path=<saved_model_half_plus_two_cpu>``: RunServer('default', ...)."""
    return start_server("--model_name=default", f"--model_base_path={half_plus_two}")


def write_config(path: Path, models: dict[str, Path], extra: str = "") -> Path:
    """A ModelServerConfig text proto serving ``models`` (name -> base path), platform tensorflow."""
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" {extra} }}\n'
        for name, base in models.items()
    )
    staging = path.with_suffix(".staging")
    staging.write_text("model_config_list {\n" + entries + "}\n")
    staging.rename(path)  # replace atomically: a poller never reads half a file
    return path
