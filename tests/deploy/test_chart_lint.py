"""`helm lint --strict` (Helm's own linter, through helm-python-sdk) over the value matrix."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.deploy.rendering import CHART_DIR, NAMESPACE, VALUE_SETS

KUBE_VERSIONS = ["v1.29.0", "v1.33.0"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_should_lint_clean_in_strict_mode_when_value_set_is_used(value_set: str, kube_version: str) -> None:
    report = helm.lint(
        str(CHART_DIR), VALUE_SETS[value_set], strict=True, namespace=NAMESPACE, kube_version=kube_version
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 1] == []


def test_should_report_an_error_when_lint_meets_a_broken_value() -> None:
    report = helm.lint(str(CHART_DIR), {"trainer": {"workers": 0}}, strict=True, namespace=NAMESPACE)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), report
