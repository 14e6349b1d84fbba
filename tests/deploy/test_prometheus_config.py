"""docker/prometheus/prometheus.yml: valid for Prometheus (promtool check config)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.deploy.rendering import ROOT


def test_should_accept_the_prometheus_config_when_promtool_checks_it(promtool_path: Path) -> None:
    config = ROOT / "docker" / "prometheus" / "prometheus.yml"
    result = subprocess.run([str(promtool_path), "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
