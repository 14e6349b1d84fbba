"""``python -m serving.client`` as a user runs it: a real process against a real loopback server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.client.servers import ToyModel

ROOT = Path(__file__).resolve().parents[3]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "serving.client", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for name, data in (("a.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10), ("b.jpg", b"\xff\xd8\xff" + b"\x01" * 4)):
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_predict_prints_top_k_per_image(target: str, images: list[Path], toy: ToyModel) -> None:
    result = _run("predict", "--target", target, "--model", "toy", "--signature", "images", "--top-k", "2",
                  *map(str, images))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, path in zip(lines, images, strict=True):
        assert line.startswith(f"{path}: ")
        assert len(line.split(": ", 1)[1].split(", ")) == 2
    assert toy.seen[-1]["images"].tolist() == [p.read_bytes() for p in images]
    # top-1 comes with the model's class name, probabilities are sorted
    first = lines[0].split(": ", 1)[1].split(", ")
    assert first[0].split()[0] in ("zero", "one", "two")
    assert float(first[0].split()[1]) >= float(first[1].split()[1])


def test_status_and_metadata(target: str, toy: ToyModel) -> None:
    status = _run("status", "--target", target, "--model", "toy")
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines() == ["toy version 1: AVAILABLE", "toy version 2: AVAILABLE"]
    metadata = _run("metadata", "--target", target, "--model", "toy", "--version", "1")
    assert metadata.returncode == 0, metadata.stderr
    assert "  input  x: DT_FLOAT [?, 3]" in metadata.stdout
    toy.versions = {1: "LOADING"}
    loading = _run("status", "--target", target, "--model", "toy")
    assert loading.returncode == 1 and "toy version 1: LOADING" in loading.stdout
    assert loading.stderr.strip() == "error: model 'toy' has no AVAILABLE version"


def test_failures_exit_1_with_one_line(grpc_target: str, images: list[Path]) -> None:
    result = _run("predict", "--target", grpc_target, "--model", "nope", *map(str, images))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "NOT_FOUND" in result.stderr
    assert "Traceback" not in result.stderr
    verbose = _run("predict", "--target", grpc_target, "--model", "nope", "--verbose", *map(str, images))
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    missing = _run("predict", "--target", grpc_target, "--model", "toy", "/nonexistent.png")
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
