"""templates/serving-dashboard-configmap.yaml: the Grafana dashboard for Grafana's sidecar."""

from __future__ import annotations

import json

from tests.deploy.rendering import CHART_DIR, ROOT, render, render_values

TEMPLATE = "serving-dashboard-configmap.yaml"


def test_should_ship_the_compose_dashboard_with_the_sidecar_label_when_enabled() -> None:
    config_map = render("monitoring").one(TEMPLATE)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's default label
    shipped = (ROOT / "docker" / "grafana" / "dashboards" / "tfstack-serving.json").read_text()
    assert (CHART_DIR / "files" / "dashboards" / "tfstack-serving.json").read_text() == shipped  # one dashboard
    assert json.loads(config_map["data"]["tfstack-serving.json"]) == json.loads(shipped)


def test_should_render_no_dashboard_by_default() -> None:
    assert render_values({}).by_template(TEMPLATE) == []
