"""A real Prometheus scrapes the local model server: every query of docker/'s Grafana dashboard answers.

The server runs upstream's ``saved_model_half_plus_two_cpu`` (shared/upstream, tests/upstream.py) with
batching and warm-up on; Prometheus is Debian's ``prometheus`` (tests/deploy/tools.py installs it on
demand), on loopback with a one-second scrape interval, polled through its HTTP API (never slept on).
Traffic goes through ``serving.client`` over gRPC and REST, some of it refused, so that every panel has
something to show: request rate, error ratio, request/runtime latency, load attempts, warm-up, batches.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.client import Client, InvalidInput, ModelNotFound
from tests.deploy.test_grafana_dashboard import _queries
from tests.deploy.tools import prometheus, promtool
from tests.serving.model_server.conftest import (
    free_port,
    half_plus_two_warmup_record,
    http,
    wait_until,
    write_tfrecord,
)
from tests.upstream import require

pytestmark = pytest.mark.slow

METRICS_PATH = "/monitoring/prometheus/metrics"
HALF_PLUS_TWO_CPU = ("tensorflow_serving", "servables", "tensorflow", "testdata", "saved_model_half_plus_two_cpu")


@pytest.fixture
def metrics_server(tmp_path: Path, start_server: Callable[..., Any]) -> Any:
    base = tmp_path / "models" / "half_plus_two"
    shutil.copytree(require(*HALF_PLUS_TWO_CPU), base)
    # Upstream's model ships no warm-up file: the test writes one (TensorFlow's own TFRecord writer).
    write_tfrecord(base / "00000123" / "assets.extra" / "tf_serving_warmup_requests", [half_plus_two_warmup_record()])
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 2000 } "
                        "num_batch_threads { value: 2 }\n")
    return start_server("--model_name=half_plus_two", f"--model_base_path={base}",
                        f"--monitoring_config_file={monitoring}", "--enable_batching=true",
                        f"--batching_parameters_file={batching}", "--enable_model_warmup=true")


@pytest.fixture
def prometheus_url(tmp_path: Path, metrics_server: Any) -> Iterator[str]:
    binary = prometheus()
    if binary is None:
        pytest.skip("prometheus is not installed and cannot be (apt-get install prometheus needs root)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "tf-serving", "metrics_path": METRICS_PATH,
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_server.rest_port}"]}]}],
    }))
    process = subprocess.Popen(
        [str(binary), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is None and http("GET", f"{url}/-/ready", timeout=5)[0] == 200, timeout=60)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    status, body = http("GET", f"{url}/api/v1/query?query={urllib.parse.quote(expr)}", timeout=10)
    answer = json.loads(body) if isinstance(body, (str, bytes)) else body
    assert status == 200 and answer["status"] == "success", (expr, body)
    return list(answer["data"]["result"])


def _answers(result: list[dict[str, Any]]) -> bool:
    """Data: at least one series, every value a number (histogram_quantile of no traffic is NaN)."""
    return bool(result) and all(math.isfinite(float(series["value"][1])) for series in result)


def _traffic(server: Any, stop: threading.Event) -> None:
    """gRPC and REST predicts through the client, plus refused ones (bad input, unknown model)."""
    grpc = Client(f"127.0.0.1:{server.grpc_port}", model="half_plus_two", timeout=10, validate=False)
    rest = Client(f"http://127.0.0.1:{server.rest_port}", model="half_plus_two", timeout=10, validate=False)
    missing = Client(f"127.0.0.1:{server.grpc_port}", model="missing", timeout=10, validate=False)
    with grpc, rest, missing:
        while not stop.is_set():
            assert grpc.predict({"x": np.array([1.0, 2.0], np.float32)})["y"].tolist() == [2.5, 3.0]
            assert [a.tolist() for a in rest.predict({"x": np.array([3.0], np.float32)}).values()] == [[3.5]]
            with pytest.raises(InvalidInput):
                grpc.predict({"nope": np.array([1.0], np.float32)})
            with pytest.raises(ModelNotFound):
                missing.predict({"x": np.array([1.0], np.float32)})
            stop.wait(0.05)  # pacing between rounds, not synchronisation


def test_should_answer_every_dashboard_query_when_prometheus_scrapes_the_local_server(
    metrics_server: Any, prometheus_url: str
) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _traffic(metrics_server, stop)
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)

    sender = threading.Thread(target=run, daemon=True)
    sender.start()
    queries = _queries()
    assert len(queries) >= 10
    results: dict[str, list[dict[str, Any]]] = {}
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and not errors:
            results = {expr: _query(prometheus_url, expr) for expr in queries}
            if all(_answers(r) for r in results.values()):
                break
            stop.wait(0.5)  # polling interval
    finally:
        stop.set()
        sender.join(timeout=30)
    assert not errors, errors
    empty = [expr for expr, result in results.items() if not _answers(result)]
    assert not empty, f"queries without data after 120 s: {empty}"
    # The series carry upstream's labels and values (util.cc, prediction_service_impl.cc, http_server.cc).
    latency = _query(prometheus_url, ":tensorflow:serving:request_latency_count")
    apis = {(s["metric"]["API"], s["metric"]["entrypoint"]) for s in latency}
    assert apis == {("Predict", "GRPC"), ("predict", "REST")}
    statuses = {(s["metric"]["model_name"], s["metric"]["status"])
                for s in _query(prometheus_url, ":tensorflow:serving:request_count")}
    assert {("half_plus_two", "OK"), ("half_plus_two", "INVALID_ARGUMENT"), ("missing", "NOT_FOUND")} <= statuses
    loads = _query(prometheus_url, ":tensorflow:cc:saved_model:load_attempt_count")
    assert [(s["metric"]["status"], s["value"][1]) for s in loads] == [("success", "1")]
    assert loads[0]["metric"]["model_path"].endswith("half_plus_two/00000123")
    # The chart's alerts (templates/serving-prometheusrule.yaml) read series that the server really exports.
    missing = [name for name in _alerted_series() if not _query(prometheus_url, f'count({{__name__="{name}"}})')]
    assert not missing, f"the chart's PrometheusRule reads series the server never exported: {missing}"


def _alerted_series() -> set[str]:
    """The TF Serving series named in the rendered serving PrometheusRule's expressions."""
    from tests.deploy.rendering import render

    rule = render("monitoring").one("serving-prometheusrule.yaml")
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    names = {name for expr in exprs for name in re.findall(r":tensorflow:[a-z_:]+", expr)}
    assert names, exprs
    return names


def test_should_pass_promtool_parsing_when_it_checks_the_metrics_page(metrics_server: Any) -> None:
    """promtool parses the page (exit 1 would be a format error); its lint findings (exit 3) may only be
    the ones upstream's own names cause: ``:`` in names, counters without ``_total`` (``request_count``,
    ``load_attempt_count``), microseconds."""
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is not installed and cannot be (apt-get install prometheus needs root)")
    with Client(f"127.0.0.1:{metrics_server.grpc_port}", model="half_plus_two", timeout=10, validate=False) as client:
        client.predict({"x": np.array([1.0], np.float32)})
    status, page = http("GET", f"http://127.0.0.1:{metrics_server.rest_port}{METRICS_PATH}")
    assert status == 200 and ":tensorflow:serving:request_count{" in page
    result = subprocess.run([str(tool), "check", "metrics"], input=page, capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 3), result.stdout + result.stderr
    findings = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    allowed = ('counter metrics should have "_total" suffix', "metric names should not contain ':'", "use base unit",
               'non-histogram and non-summary metrics should not have "_count" suffix')
    assert all(line.startswith(":tensorflow:") and any(text in line for text in allowed) for line in findings), findings
