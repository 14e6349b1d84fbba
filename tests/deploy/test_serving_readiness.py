"""The chart's TF Serving container, run by the local stand-in (``python -m serving.model_server`` takes
tensorflow_model_server's flags): its rendered arguments and ConfigMap files start a server, and the
readiness probe (GET /v1/models/NAME/metadata) and the serving image's HEALTHCHECK fail until a version
is AVAILABLE, while the status URL already answers 200 for a known model. Real TF Serving answers the
same way (http_rest_api_handler.cc: /metadata needs a servable handle); this checks our side of it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.config import CONTAINER_CONFIG_DIR
from tests.deploy.rendering import ROOT, containers, render

pytestmark = pytest.mark.slow

#: Our rebuild of TF Serving's saved_model_half_plus_two_cpu (tests/fixtures/make_upstream_models.py).
FIXTURE_VERSION = ROOT / "tests" / "fixtures" / "upstream_models" / "saved_model_half_plus_two_cpu" / "00000123"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.1)  # polling interval, not synchronisation


def _up(port: int) -> bool:
    try:
        _get(f"http://127.0.0.1:{port}/v1/models/digits")
        return True
    except OSError:
        return False


class _Output:
    """The server's combined output, collected line by line so tests can poll for a log line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, subprocess.Popen[str]]]:
    """The chart's serving container as a local process: config files from the ConfigMap, the export
    base in a temporary directory, free ports; the version poll shortened from 5 s to 1 s.

    Like tensorflow_model_server, it opens no port until the model has an AVAILABLE version: the fixture
    waits for the log line saying it found none yet."""
    rendered = render("defaults")
    root = tmp_path_factory.mktemp("serving")
    config_dir, models = root / "etc", root / "models"
    config_dir.mkdir()
    (models / "digits").mkdir(parents=True)
    for name, text in rendered.one("serving-configmap.yaml")["data"].items():
        (config_dir / name).write_text(text.replace('"/models/', f'"{models}/'))
    grpc, rest = _free_port(), _free_port()
    args = [
        arg.replace(CONTAINER_CONFIG_DIR, str(config_dir))
        for arg in containers(rendered.one("serving-deployment.yaml"))[0]["args"]
    ]
    args = [re.sub(r"^--port=\d+$", f"--port={grpc}", a) for a in args]
    args = [re.sub(r"^--rest_api_port=\d+$", f"--rest_api_port={rest}", a) for a in args]
    args = [re.sub(r"^--file_system_poll_wait_seconds=\d+$", "--file_system_poll_wait_seconds=1", a) for a in args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen([sys.executable, "-m", "serving.model_server", *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = _Output(process)
    try:
        _wait(lambda: process.poll() is not None or output.has("no versions found under base path"))
        assert process.poll() is None, "".join(output.lines)
        yield rest, models / "digits", process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _healthcheck(port: int) -> int:
    """The serving image's HEALTHCHECK command, with the port changed."""
    dockerfile = (ROOT / "docker" / "serving.Dockerfile").read_text()
    command = json.loads(re.search(r"^\s*CMD (\[.*\])$", dockerfile, re.M)[1])
    command[-1] = command[-1].replace("/127.0.0.1/8501", f"/127.0.0.1/{port}")
    return subprocess.run(command, env={**os.environ, "MODEL_NAME": "digits"}, capture_output=True,
                          timeout=30).returncode


def test_should_be_unready_and_closed_when_no_version_is_exported(
    server: tuple[int, Path, subprocess.Popen[str]],
) -> None:
    port, _, process = server
    assert process.poll() is None  # alive, waiting for a version, as tensorflow_model_server does
    assert not _up(port)  # no port before the model is AVAILABLE: probes fail by connection
    assert _healthcheck(port) != 0


def test_should_become_ready_when_a_version_appears(server: tuple[int, Path, subprocess.Popen[str]]) -> None:
    port, base, _ = server
    path = containers(render("defaults").one("serving-deployment.yaml"))[0]["readinessProbe"]["httpGet"]["path"]
    staging = base.parent / ".staging-1"
    shutil.copytree(FIXTURE_VERSION, staging)
    staging.rename(base / "1")  # versions appear atomically, as the trainer's export does
    _wait(lambda: _up(port) and _get(f"http://127.0.0.1:{port}{path}") == 200)
    assert _healthcheck(port) == 0
    assert _get(f"http://127.0.0.1:{port}/v1/models/digits") == 200
