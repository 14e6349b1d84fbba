"""k8s/chart/README.md's parameter table is exactly what tests/deploy/chart_readme.py generates from the
``## @param`` lines of values.yaml, multi-line descriptions included
(regenerate: ``python -m tests.deploy.chart_readme``)."""

from __future__ import annotations

import re

from tests.deploy.chart_readme import README, VALUES, parameters, readme_table, table


def test_should_list_every_documented_value_when_the_readme_is_read() -> None:
    params = re.findall(r"^\s*## @param (\S+)", VALUES.read_text(), re.M)
    assert [key for key, _ in parameters(VALUES.read_text())] == params
    assert readme_table(README.read_text()) == table(), "run: python -m tests.deploy.chart_readme"


def test_should_join_continuation_lines_when_a_param_spans_lines() -> None:
    text = """
## @param a.b First line
## and the second line
b: 1
## A section comment, not a description
section:
  ## @param c Only line
  c: x
"""
    assert parameters(text) == [("a.b", "First line and the second line"), ("c", "Only line")]
