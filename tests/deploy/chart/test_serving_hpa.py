"""templates/serving-hpa.yaml: the HPA on TF Serving's request rate (a Pods metric from the Prometheus
Adapter, files/prometheus-adapter-rule.yaml) with CPU as the fallback."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.deploy.rendering import CHART_DIR, NAMESPACE, render

TEMPLATE = "serving-hpa.yaml"
ADAPTER_RULE = CHART_DIR / "files" / "prometheus-adapter-rule.yaml"


def test_should_scale_on_request_rate_cpu_and_memory_when_autoscaling_is_enabled() -> None:
    rendered = render("monitoring")
    hpa = rendered.one(TEMPLATE)
    target = hpa["spec"]["scaleTargetRef"]
    deployment = rendered.one("serving-deployment.yaml")["metadata"]["name"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    utilisation = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
                   for m in hpa["spec"]["metrics"] if m["type"] == "Resource"}
    assert utilisation == {"cpu": 70, "memory": 80}  # CPU stays: the HPA takes the largest proposal
    pods = metrics["Pods"]["pods"]
    assert pods["target"] == {"type": "AverageValue", "averageValue": "40"}
    assert pods["metric"]["name"] == yaml.safe_load(ADAPTER_RULE.read_text())["name"]["as"]


def test_should_add_capacity_fast_and_remove_it_slowly_when_autoscaling() -> None:
    behavior = render("monitoring").one(TEMPLATE)["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]


def test_should_render_no_hpa_when_autoscaling_is_disabled_or_keda_owns_it() -> None:
    assert render("defaults").by_template(TEMPLATE) == []
    assert render("groups").by_template(TEMPLATE) == []  # KEDA creates its own HPA


def test_should_serve_tf_servings_request_rate_per_pod_when_the_adapter_rule_is_used(
    promtool_path: Path, tmp_path: Path
) -> None:
    """The rule's name pattern matches TF Serving's metric name, and its queries, with the placeholders
    filled as the adapter fills them (pkg/naming/metrics_query.go: .Series, .LabelMatchers, .GroupBy), give
    each pod's request rate under promtool."""
    rule = yaml.safe_load(ADAPTER_RULE.read_text())
    name = ":tensorflow:serving:request_count"
    assert re.fullmatch(rule["name"]["matches"], name) and rule["seriesQuery"].startswith(name + "{")
    query = (rule["metricsQuery"].replace("<<.Series>>", name)
             .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"serving-a|serving-b"')
             .replace("<<.GroupBy>>", "pod"))
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [
        {"record": "adapter:series", "expr": rule["seriesQuery"]}, {"record": "adapter:rate", "expr": query}]}]}))
    labels = {"namespace": NAMESPACE, "model_name": "digits", "status": "OK"}

    def series(pod: str, per_minute: int) -> dict[str, str]:
        body = ", ".join(f'{k}="{v}"' for k, v in {**labels, "pod": pod}.items())
        return {"series": f"{name}{{{body}}}", "values": f"0+{per_minute}x20"}

    test = {"interval": "1m", "input_series": [series("serving-a", 1800), series("serving-b", 600)],
            "promql_expr_test": [{"expr": "adapter:rate", "eval_time": "10m", "exp_samples": [
                {"labels": 'adapter:rate{pod="serving-a"}', "value": 30},
                {"labels": 'adapter:rate{pod="serving-b"}', "value": 10}]}]}
    suite = tmp_path / "tests.yml"
    suite.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [test]}))
    result = subprocess.run([str(promtool_path), "test", "rules", str(suite)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
