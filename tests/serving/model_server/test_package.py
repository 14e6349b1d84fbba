"""The package's public names, pinned; importing it stays cheap (TensorFlow only on first use)."""

from __future__ import annotations

import subprocess
import sys

import serving.model_server as model_server

from .conftest import REPO


def test_public_names_are_pinned() -> None:
    assert model_server.__all__ == [
        "READY_MESSAGE",
        "ConfigError",
        "FlagError",
        "ModelServer",
        "ModelServerError",
        "ServerOptions",
        "parse_flags",
    ]
    for name in model_server.__all__:
        assert getattr(model_server, name) is not None


def test_importing_the_package_does_not_import_tensorflow() -> None:
    code = "import sys, serving.model_server; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
