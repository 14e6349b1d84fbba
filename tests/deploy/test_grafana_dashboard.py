"""docker/grafana/dashboards/tfstack-serving.json: TF Serving's request rate, errors, latency quantiles
and loaded versions; every PromQL query parsed by promtool (as recording rules)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.rendering import ROOT

DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "tfstack-serving.json"


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _queries() -> list[str]:
    """The dashboard's PromQL with Grafana's variables filled in, as Grafana sends it."""
    return [
        re.sub(r"\$__rate_interval", "1m", target["expr"]).replace("$model", ".*")
        for panel in _dashboard()["panels"] for target in panel["targets"]
    ]


def test_should_chart_rate_latency_errors_and_versions_when_the_dashboard_loads() -> None:
    dashboard = _dashboard()
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert "rate(:tensorflow:serving:request_count" in exprs
    assert 'status!="OK"' in exprs
    assert "histogram_quantile(0.99, sum by (le, model_name) (rate(:tensorflow:serving:request_latency_bucket" in exprs
    assert ":tensorflow:cc:saved_model:load_attempt_count" in exprs
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert dashboard["uid"] == "tfstack-serving"


def test_should_use_the_datasource_variable_when_panels_query_prometheus() -> None:
    dashboard = _dashboard()
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "model"}
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])


def test_should_fill_every_grafana_variable_when_queries_are_prepared() -> None:
    assert _queries() and all("$" not in query for query in _queries())


def test_should_parse_every_query_when_promtool_checks_them(promtool_path: Path, tmp_path: Path) -> None:
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"tfstack:dashboard_query_{i}", "expr": q} for i, q in enumerate(_queries())]}]}))
    result = subprocess.run([str(promtool_path), "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(_queries())} rules found" in result.stdout


def test_should_reject_a_broken_query_when_promtool_checks_it(promtool_path: Path, tmp_path: Path) -> None:
    rules = tmp_path / "broken.rules.yml"
    rules.write_text("groups:\n- name: x\n  rules:\n  - record: x:y\n    expr: sum(rate(foo[1m])\n")
    result = subprocess.run([str(promtool_path), "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode != 0
