"""k8s/chart/README.md lists every documented value (the ``## @param`` lines of values.yaml)."""

from __future__ import annotations

import re

from tests.deploy.rendering import CHART_DIR


def test_should_list_every_documented_value_when_the_readme_is_read() -> None:
    params = re.findall(r"^\s*## @param (\S+)", (CHART_DIR / "values.yaml").read_text(), re.M)
    table = re.findall(r"^\| `([^`]+)` \|", (CHART_DIR / "README.md").read_text(), re.M)
    assert table == params
