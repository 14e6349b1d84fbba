"""Replicas of the real local model server for the fleet tests: in-process servers and
``python -m serving.model_server`` processes on fixed ports (chosen free once, kept across restarts,
as a pod keeps its ports), with each server's own count of predicts served.

The count comes from the server's Prometheus page (``--monitoring_config_file``), an independent
source beside the client's counters: ``tfstack_model_server_requests_total{method="predict",status="OK"}``
today, or TF Serving's ``:tensorflow:serving:request_latency_count{API="Predict"|"predict"}`` (recorded
for successful requests only, servables/tensorflow/util.cc) once the server exports upstream's names.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.serving.client.models import MODEL

ROOT = Path(__file__).resolve().parents[3]
METRICS_PATH = "/monitoring/prometheus/metrics"


def monitoring_config(directory: Path) -> Path:
    path = directory / "monitoring.config"
    path.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    return path


def predicts_served(rest_port: int) -> int:
    """Successful predicts the server on ``rest_port`` counted itself (both metric namings)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}{METRICS_PATH}", timeout=10) as answer:
        text = answer.read().decode()
    ours = theirs = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "tfstack_model_server_requests_total" and labels.get("method") == "predict" \
                    and labels.get("status") == "OK":
                ours += sample.value
            elif sample.name == ":tensorflow:serving:request_latency_count" and \
                    labels.get("API") in ("Predict", "predict"):
                theirs += sample.value
    return int(ours or theirs)


def start_in_process(base: Path, *flags: str, grpc_port: int = 0, rest_port: int, **options: Any) -> Any:
    """A started in-process ``serving.model_server`` serving ``base`` as model "toy"."""
    from serving.model_server import ModelServer, parse_flags

    argv = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_name={MODEL}",
            f"--model_base_path={base}", *flags]
    server = ModelServer(replace(parse_flags(argv), host="127.0.0.1", grace_period_seconds=5.0, **options))
    server.start(timeout=120)
    return server


def poll(predicate: Any, timeout: float = 120.0, what: str = "condition") -> Any:
    """Wait until ``predicate()`` is truthy, re-checking every 50 ms (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        tick.wait(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


class Replica:
    """One ``python -m serving.model_server`` process on fixed ports; :meth:`restart` is what a pod
    restart does to it: SIGTERM, wait for the exit, a new process on the same ports."""

    def __init__(self, base: Path, grpc_port: int, rest_port: int, log: Path, *flags: str) -> None:
        self.base, self.grpc_port, self.rest_port, self.log = base, grpc_port, rest_port, log
        self.flags = flags
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "serving.model_server", f"--port={self.grpc_port}",
                f"--rest_api_port={self.rest_port}", f"--model_name={MODEL}", f"--model_base_path={self.base}",
                *self.flags]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"replica exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.rest_url}/v1/models/{MODEL}", timeout=2) as answer:
                return b"AVAILABLE" in answer.read()
        except OSError:
            return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        poll(self.ready, timeout, f"replica on port {self.grpc_port} ready")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.exit_codes.append(code)
        return code

    def restart(self) -> None:
        self.terminate()
        self.start()
        self.wait_ready()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
