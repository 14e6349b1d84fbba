"""``python -m serving.client`` as a user runs it: a real process against a real loopback server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serving.client.conftest import start_model_server
from tests.serving.client.servers import ToyModel
from tests.serving.model_server.conftest import build_contract_model

ROOT = Path(__file__).resolve().parents[3]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "serving.client", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """A dark PNG and a light JPEG, encoded by Pillow."""
    from PIL import Image

    paths = []
    for name, value in (("dark.png", 10), ("light.jpg", 245)):
        path = tmp_path / name
        Image.new("RGB", (8, 8), (value, value, value)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def contract_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real local model server serving a model that follows the trainer's export contract
    (images -> probabilities, class_id, class_name; classes "dark" and "light")."""
    base = tmp_path_factory.mktemp("contract") / "shades"
    base.mkdir()
    build_contract_model(base / "1")
    server = start_model_server("--model_name=shades", f"--model_base_path={base}")
    yield server
    server.stop(grace=5.0)


@pytest.fixture(params=["grpc", "rest"])
def real_target(request: pytest.FixtureRequest, contract_server: Any) -> str:
    if request.param == "grpc":
        return f"127.0.0.1:{contract_server.grpc_port}"
    return f"http://127.0.0.1:{contract_server.rest_port}"


def test_predict_prints_top_k_per_image(real_target: str, images: list[Path]) -> None:
    result = _run("predict", "--target", real_target, "--model", "shades", "--top-k", "2", *map(str, images))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [str(p) for p in images]
    top = [line.split(": ", 1)[1].split(", ") for line in lines]
    assert [len(t) for t in top] == [2, 2]
    assert [t[0].split()[0] for t in top] == ["dark", "light"]  # the model's class names, best first
    assert all(float(t[0].split()[1]) >= float(t[1].split()[1]) for t in top)


def test_status_and_metadata(real_target: str) -> None:
    status = _run("status", "--target", real_target, "--model", "shades")
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines() == ["shades version 1: AVAILABLE"]
    metadata = _run("metadata", "--target", real_target, "--model", "shades", "--version", "1")
    assert metadata.returncode == 0, metadata.stderr
    assert "  input  pixels: DT_FLOAT [?, 8, 8, 3]" in metadata.stdout


def test_status_exits_1_while_no_version_is_available(target: str, toy: ToyModel) -> None:
    # A version stuck LOADING: a state the fake server can hold on demand (servers.py).
    toy.versions = {1: "LOADING"}
    loading = _run("status", "--target", target, "--model", "toy")
    assert loading.returncode == 1 and "toy version 1: LOADING" in loading.stdout
    assert loading.stderr.strip() == "error: model 'toy' has no AVAILABLE version"


def test_failures_exit_1_with_one_line(contract_server: Any, images: list[Path]) -> None:
    grpc_target = f"127.0.0.1:{contract_server.grpc_port}"
    result = _run("predict", "--target", grpc_target, "--model", "nope", *map(str, images))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "NOT_FOUND" in result.stderr
    assert "Traceback" not in result.stderr
    verbose = _run("predict", "--target", grpc_target, "--model", "nope", "--verbose", *map(str, images))
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    missing = _run("predict", "--target", grpc_target, "--model", "shades", "/nonexistent.png")
    assert missing.returncode == 1 and "/nonexistent.png" in missing.stderr


@pytest.mark.parametrize(
    "args",
    [(), ("predict",), ("status", "--version", "x"), ("frobnicate",), ("status", "--header", "novalue")],
    ids=["nothing", "no-images", "bad-version", "unknown-command", "bad-header"],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr
