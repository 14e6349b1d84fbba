"""The chart's TF Serving pod, played on this machine with the local stand-in (``python -m
serving.model_server`` takes tensorflow_model_server's flags): the rendered wait-for-model init container,
arguments, ConfigMap files and probes, evaluated as the kubelet does (an HTTP probe succeeds on a status
in [200, 400), a TCP probe when the connection opens; a refused connection is a failure).

The real server opens no port until every model has an AVAILABLE version (server.cc builds ServerCore
first; ServerCore::WaitUntilModelsAvailable waits without a timeout), so nothing here waits for a port
before a version exists: a probe before that fails whether the port is closed (upstream, and the stand-in
once it starts as upstream does) or answers 404 (/metadata needs a servable handle)."""

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.config import CONTAINER_CONFIG_DIR
from tests.deploy.rendering import ROOT, containers, pod_spec, render_values
from tests.upstream import tf_serving_testdata

pytestmark = pytest.mark.slow

VALUES = {"serving": {"waitForModel": {"intervalSeconds": 1}}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Pod:
    """The rendered serving pod on loopback: container ports mapped to free local ports."""

    def __init__(self, root: Path) -> None:
        rendered = render_values(VALUES)
        self.deployment = rendered.one("serving-deployment.yaml")
        self.container = containers(self.deployment)[0]
        self.root = root
        self.config_dir, self.models = root / "etc", root / "models"
        self.config_dir.mkdir()
        self.base = self.models / rendered.values["model"]["name"]
        for name, text in rendered.one("serving-configmap.yaml")["data"].items():
            (self.config_dir / name).write_text(text.replace('"/models/', f'"{self.models}/'))
        named = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.ports = {number: _free_port() for number in named.values()}
        self.named = {name: self.ports[number] for name, number in named.items()}
        self.process: subprocess.Popen[str] | None = None

    # -- the init container ------------------------------------------------------------------------------
    def wait_for_model(self) -> subprocess.Popen[str]:
        (init,) = pod_spec(self.deployment)["initContainers"]
        command = [arg.replace("/models/", f"{self.models}/") for arg in init["command"]]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    # -- the server ----------------------------------------------------------------------------------------
    def start(self) -> None:
        args = [arg.replace(CONTAINER_CONFIG_DIR, str(self.config_dir)) for arg in self.container["args"]]
        args = [re.sub(r"^--port=\d+$", f"--port={self.named['grpc']}", a) for a in args]
        args = [re.sub(r"^--rest_api_port=\d+$", f"--rest_api_port={self.named['http']}", a) for a in args]
        args = [re.sub(r"^--file_system_poll_wait_seconds=\d+$", "--file_system_poll_wait_seconds=1", a) for a in args]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.process = subprocess.Popen([sys.executable, "-m", "serving.model_server", *args], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- probes, as the kubelet runs them --------------------------------------------------------------------
    def probe(self, kind: str) -> bool:
        probe: dict[str, Any] = self.container[kind]
        timeout = probe.get("timeoutSeconds", 1)
        if "httpGet" in probe:
            port = self._port(probe["httpGet"]["port"])
            url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return 200 <= response.status < 400
            except urllib.error.HTTPError as exc:
                return 200 <= exc.code < 400
            except OSError:
                return False
        port = self._port(probe["tcpSocket"]["port"])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                return True
        except OSError:
            return False

    def _port(self, port: int | str) -> int:
        return self.named[port] if isinstance(port, str) else self.ports[port]

    def budget(self, kind: str) -> float:
        probe = self.container[kind]
        return probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]


def _publish(base: Path) -> None:
    """A version appears atomically, as the trainer's export does (write aside, then rename)."""
    base.mkdir(parents=True, exist_ok=True)
    staging = base / ".staging-1"
    shutil.copytree(tf_serving_testdata("saved_model_half_plus_two_cpu", "00000123"), staging)  # upstream's own
    staging.rename(base / "1")


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f}s")
        time.sleep(0.2)  # the probe period, shortened; polling, not synchronisation


def _healthcheck(port: int) -> int:
    """The serving image's HEALTHCHECK command, with the port changed."""
    dockerfile = (ROOT / "docker" / "serving.Dockerfile").read_text()
    command = json.loads(re.search(r"^\s*CMD (\[.*\])$", dockerfile, re.M)[1])
    command[-1] = command[-1].replace("/127.0.0.1/8501", f"/127.0.0.1/{port}")
    return subprocess.run(command, env={**os.environ, "MODEL_NAME": "digits"}, capture_output=True,
                          timeout=30).returncode


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    pod = Pod(tmp_path)
    try:
        yield pod
    finally:
        pod.stop()


def test_should_start_the_server_only_after_the_first_version_when_the_pod_starts(pod: Pod) -> None:
    """The pod's flow: the init container holds the server back until a version exists (no probe runs,
    nothing restarts); then the startup probe succeeds within its budget, and readiness, liveness and the
    image's HEALTHCHECK pass."""
    init = pod.wait_for_model()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            init.wait(timeout=2.5)  # several looks at the volume: still waiting
        _publish(pod.base)
        assert init.wait(timeout=15) == 0
    finally:
        init.kill()
        init.wait()
    pod.start()
    _until(lambda: not pod.alive() or pod.probe("startupProbe"), min(pod.budget("startupProbe"), 180), "startup")
    assert pod.alive(), pod.process.stdout.read() if pod.process and pod.process.stdout else ""
    assert pod.probe("readinessProbe") and pod.probe("livenessProbe")
    assert _healthcheck(pod.named["http"]) == 0


def test_should_fail_startup_and_readiness_until_a_version_is_available_when_the_server_starts_first(
    pod: Pod,
) -> None:
    """Without the init container (serving.waitForModel.enabled=false, or a volume emptied later): the
    probes that gate traffic fail while no version is AVAILABLE, whether the server keeps its ports closed
    (as upstream does) or answers 404, and succeed once one is."""
    pod.base.mkdir(parents=True)
    pod.start()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:  # the server starting up, then running with no version
        assert pod.alive(), pod.process.stdout.read() if pod.process and pod.process.stdout else ""
        assert not pod.probe("startupProbe") and not pod.probe("readinessProbe")
        assert _healthcheck(pod.named["http"]) != 0
        time.sleep(0.5)  # probe period, shortened
    _publish(pod.base)
    _until(lambda: pod.probe("startupProbe"), 120, "startup after the first version")
    assert pod.probe("readinessProbe") and pod.probe("livenessProbe")
