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
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.config import CONTAINER_CONFIG_DIR
from tests.deploy.rendering import ROOT, containers, render

pytestmark = pytest.mark.slow

FIXTURE_VERSION = ROOT / "tests" / "fixtures" / "half_plus_two" / "00000123"


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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """The chart's serving container as a local process: config files from the ConfigMap, the export
    base in a temporary directory, free ports; the version poll shortened from 5 s to 1 s."""
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
    try:
        _wait(lambda: process.poll() is not None or _up(rest))
        assert process.poll() is None, process.stdout.read()
        yield rest, models / "digits"
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


def test_should_be_unready_but_known_when_no_version_is_exported(server: tuple[int, Path]) -> None:
    port, _ = server
    path = containers(render("defaults").one("serving-deployment.yaml"))[0]["readinessProbe"]["httpGet"]["path"]
    assert _get(f"http://127.0.0.1:{port}{path}") == 404
    assert _healthcheck(port) != 0


def test_should_become_ready_when_a_version_appears(server: tuple[int, Path]) -> None:
    port, base = server
    path = containers(render("defaults").one("serving-deployment.yaml"))[0]["readinessProbe"]["httpGet"]["path"]
    staging = base.parent / ".staging-1"
    shutil.copytree(FIXTURE_VERSION, staging)
    staging.rename(base / "1")  # versions appear atomically, as the trainer's export does
    _wait(lambda: _get(f"http://127.0.0.1:{port}{path}") == 200)
    assert _healthcheck(port) == 0
    assert _get(f"http://127.0.0.1:{port}/v1/models/digits") == 200
