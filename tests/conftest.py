"""Fixtures shared by every test: a clean environment, so no test sees the developer's cluster settings."""

from __future__ import annotations

import os

import pytest

_CLEARED_PREFIXES = ("TFSTACK_", "KERASTUNER_")
_CLEARED = {
    "TF_CONFIG",
    "JOB_COMPLETION_INDEX",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "grpc_proxy",
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear TF_CONFIG, TFSTACK_* and proxy variables (a proxy would swallow loopback traffic)."""
    for name in list(os.environ):
        if name in _CLEARED or name.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
