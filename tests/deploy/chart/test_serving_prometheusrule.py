"""templates/serving-prometheusrule.yaml: TF Serving's alerts, replayed by promtool on series named as TF
Serving exports them (:tensorflow:serving:request_count{model_name,status}, request_latency_bucket in
microseconds, :tensorflow:cc:saved_model:load_attempt_count{model_path,status}) with the labels the
Prometheus Operator adds to a ServiceMonitor's targets (namespace, service, pod)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.prometheus_rules import alert_case, check_and_test, series
from tests.deploy.rendering import NAMESPACE, render, render_values

TEMPLATE = "serving-prometheusrule.yaml"
SERVICE = {"namespace": NAMESPACE, "service": "digits-tfstack-serving"}
REQUESTS = ":tensorflow:serving:request_count"


def _requests(failing_per_minute: int, ok_per_minute: int = 100) -> list[dict[str, str]]:
    target = {**SERVICE, "pod": "digits-tfstack-serving-a", "model_name": "digits"}
    return [series(REQUESTS, {**target, "status": "OK"}, f"0+{ok_per_minute}x40"),
            series(REQUESTS, {**target, "status": "INVALID_ARGUMENT"}, f"0+{failing_per_minute}x40")]


def _latency(microseconds: int) -> list[dict[str, str]]:
    """100 requests a minute, every one taking `microseconds` (a bucket per decade, as cumulative counts)."""
    target = {**SERVICE, "pod": "digits-tfstack-serving-a", "model_name": "digits", "API": "predict",
              "entrypoint": "GRPC"}
    buckets = ["10000", "100000", "1e+06", "1e+07", "+Inf"]
    return [series(f"{':tensorflow:serving:request_latency'}_bucket", {**target, "le": le},
                   "0+100x40" if le == "+Inf" or float(le) >= microseconds else "0x40") for le in buckets]


def _up(*values: str) -> list[dict[str, str]]:
    return [series("up", {**SERVICE, "pod": f"digits-tfstack-serving-{i}", "job": "digits-tfstack-serving"}, v)
            for i, v in enumerate(values)]


def _loads(status: str) -> list[dict[str, str]]:
    path = {**SERVICE, "pod": "digits-tfstack-serving-a", "model_path": "/models/digits/2"}
    return [series(":tensorflow:cc:saved_model:load_attempt_count", {**path, "status": "success"}, "1x30"),
            series(":tensorflow:cc:saved_model:load_attempt_count", {**path, "status": status}, "0x10 1x20")]


def test_should_fire_each_alert_exactly_when_its_condition_holds(promtool_path: Path, tmp_path: Path) -> None:
    rule = render("monitoring").one(TEMPLATE)
    model = {"model_name": "digits"}
    cases = [
        alert_case(_requests(10), "TFServingHighErrorRatio", "25m", [model], rule),  # 9 % fail
        alert_case(_requests(1), "TFServingHighErrorRatio", "25m", [], rule),  # 1 %
        alert_case(_requests(10), "TFServingHighErrorRatio", "5m", [], rule),  # not yet for 10m
        alert_case(_latency(800_000), "TFServingHighLatencyP99", "25m", [model], rule),  # 800 ms > 500 ms
        alert_case(_latency(50_000), "TFServingHighLatencyP99", "25m", [], rule),
        alert_case(_up("0x30", "0x30"), "TFServingNoModelAvailable", "20m", [{}], rule),
        alert_case(_up("0x30", "1x30"), "TFServingNoModelAvailable", "20m", [], rule),
        alert_case([series("up", {"namespace": "other", "service": "x"}, "1x30")], "TFServingNoModelAvailable",
                   "20m", [SERVICE], rule),  # no target at all: absent() carries the matchers
        alert_case(_loads("fail"), "TFServingModelLoadFailed", "15m", [{"model_path": "/models/digits/2"}], rule),
        alert_case(_loads("success"), "TFServingModelLoadFailed", "15m", [], rule),
    ]
    result = check_and_test(promtool_path, rule, cases, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_should_follow_the_thresholds_when_they_are_set(promtool_path: Path, tmp_path: Path) -> None:
    rule = render_values({"metrics": {"prometheusRule": {"enabled": True, "latencyP99Ms": 1000,
                                                         "errorRatio": 0.2, "for": "1m"}}}).one(TEMPLATE)
    cases = [alert_case(_latency(800_000), "TFServingHighLatencyP99", "25m", [], rule),
             alert_case(_requests(10), "TFServingHighErrorRatio", "25m", [], rule),
             alert_case(_requests(50), "TFServingHighErrorRatio", "5m", [{"model_name": "digits"}], rule)]
    result = check_and_test(promtool_path, rule, cases, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


NO_SERVING = {"serving": {"enabled": False}, "metrics": {"prometheusRule": {"enabled": True}}}


@pytest.mark.parametrize("values", [{}, NO_SERVING], ids=["disabled", "no-serving"])
def test_should_render_no_serving_rule_when_off(values: dict) -> None:
    assert render_values(values).by_template(TEMPLATE) == []
