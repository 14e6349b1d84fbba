"""templates/serving-scaledobject.yaml: KEDA scales TF Serving on its request rate, CPU as the fallback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from tests.deploy.rendering import NAMESPACE, render, render_values

TEMPLATE = "serving-scaledobject.yaml"


def test_should_scale_the_deployment_on_the_request_rate_and_cpu_when_keda_is_enabled() -> None:
    rendered = render("groups")
    scaled = rendered.one(TEMPLATE)
    deployment = rendered.one("serving-deployment.yaml")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]
    prometheus, cpu = scaled["spec"]["triggers"]
    assert prometheus["type"] == "prometheus" and prometheus["metadata"]["threshold"] == "20"
    assert (cpu["type"], cpu["metricType"], cpu["metadata"]["value"]) == ("cpu", "Utilization", "70")
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == rendered.values["serving"]["autoscaling"]["behavior"]


def test_should_sum_the_request_rate_of_this_releases_replicas_when_prometheus_answers(
    promtool_path: Path, tmp_path: Path
) -> None:
    """The trigger's query over series labelled as the ServiceMonitor's targets are: 30/s + 10/s here, another
    release's traffic left out."""
    query = render("groups").one(TEMPLATE)["spec"]["triggers"][0]["metadata"]["query"]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "keda", "rules": [{"record": "keda:query", "expr": query}]}]}))

    def series(service: str, pod: str, per_minute: int) -> dict[str, str]:
        labels = f'namespace="{NAMESPACE}", service="{service}", pod="{pod}", model_name="digits", status="OK"'
        return {"series": f":tensorflow:serving:request_count{{{labels}}}", "values": f"0+{per_minute}x20"}

    test = {"interval": "1m", "input_series": [series("digits-tfstack-serving", "a", 1800),
                                               series("digits-tfstack-serving", "b", 600),
                                               series("other-serving", "c", 6000)],
            "promql_expr_test": [{"expr": "keda:query", "eval_time": "10m",
                                  "exp_samples": [{"labels": "keda:query", "value": 40}]}]}
    suite = tmp_path / "tests.yml"
    suite.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [test]}))
    result = subprocess.run([str(promtool_path), "test", "rules", str(suite)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_should_refuse_keda_without_a_request_rate_target() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"needs serving\.autoscaling\.requestsPerSecond"):
        render_values({"serving": {"autoscaling": {"enabled": True, "keda": {"enabled": True}}}})
