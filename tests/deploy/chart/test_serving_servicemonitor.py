"""templates/serving-servicemonitor.yaml: a Prometheus Operator CRD, its required fields checked here."""

from __future__ import annotations

from serving.config import CONFIG_DIR
from serving.model_server.config import read_monitoring_config
from tests.deploy.rendering import NAMESPACE, render

TEMPLATE = "serving-servicemonitor.yaml"


def test_should_scrape_tf_serving_metrics_when_service_monitor_is_enabled() -> None:
    rendered = render("monitoring")
    monitor = rendered.one(TEMPLATE)
    service = rendered.one("serving-service.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    expected_path = read_monitoring_config(CONFIG_DIR / "monitoring.config").prometheus_config.path
    assert endpoint["path"] == expected_path == "/monitoring/prometheus/metrics"
    assert endpoint["interval"] == "30s"


def test_should_render_no_service_monitor_when_it_is_disabled() -> None:
    assert render("defaults").by_template(TEMPLATE) == []
