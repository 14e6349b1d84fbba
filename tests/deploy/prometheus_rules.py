"""Rendered PrometheusRules under promtool: `check rules` parses them, `test rules` replays series through
them (Prometheus's own rule evaluation), so alert tests say "this traffic fires that alert"."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml


def check_and_test(promtool: Path, rule: dict[str, Any], tests: list[dict[str, Any]],
                   directory: Path) -> subprocess.CompletedProcess[str]:
    """Write the PrometheusRule's groups as a rule file, `promtool check rules` it, then `promtool test
    rules` with `tests` (promtool's unit-test format, one evaluation interval of 1m); the test run's result."""
    rules = directory / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run([str(promtool), "check", "rules", str(rules)], capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    suite = directory / "tests.yml"
    suite.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests}))
    return subprocess.run([str(promtool), "test", "rules", str(suite)], capture_output=True, text=True,
                          cwd=directory, timeout=120)


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    """One input series in promtool's notation."""
    body = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def alert_case(input_series: list[dict[str, str]], alert: str, eval_time: str,
               fired: list[dict[str, str]], rule: dict[str, Any]) -> dict[str, Any]:
    """A test case: at `eval_time`, `alert` fires once per label set in `fired` (none: it does not fire),
    each with the rule's labels and annotations."""
    (spec,) = [r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == alert]
    expected = [{"exp_labels": {**spec.get("labels", {}), **labels}, "exp_annotations": spec.get("annotations", {})}
                for labels in fired]
    return {"interval": "1m", "input_series": input_series,
            "alert_rule_test": [{"eval_time": eval_time, "alertname": alert, "exp_alerts": expected}]}
