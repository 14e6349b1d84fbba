"""Every ``.Values.x`` path a template reads exists in values.yaml and in values.schema.json
(bitnami's tensorflow-resnet chart reads ``.Values.server.port``, which its values never define)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.deploy.rendering import CHART_DIR

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
TEMPLATES = sorted(p for p in (CHART_DIR / "templates").rglob("*") if p.is_file())
_DIRECT = re.compile(r"\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_ALIAS = re.compile(r"\{\{-?\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*:=\s*\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def value_paths(text: str) -> set[str]:
    """Paths read directly (``.Values.a.b``) or through a variable (``$t := .Values.a`` then ``$t.b``)."""
    paths = {match[1:] for match in _DIRECT.findall(text)}
    for alias, prefix in _ALIAS.findall(text):
        paths.add(prefix[1:])
        for rest in re.findall(rf"\${alias}((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
            paths.add(prefix[1:] + rest)
    return paths


def _in_values(path: str) -> bool:
    node: Any = VALUES
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _in_schema(path: str) -> bool:
    node = SCHEMA
    for key in path.split("."):
        properties = node.get("properties", {})
        if key not in properties:
            return False
        node = properties[key]
    return True


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(CHART_DIR / "templates")))
def test_should_define_every_value_path_when_a_template_reads_it(template) -> None:
    paths = value_paths(template.read_text())
    assert all(path for path in paths)
    assert sorted(p for p in paths if not _in_values(p)) == [], "missing in values.yaml"
    assert sorted(p for p in paths if not _in_schema(p)) == [], "missing in values.schema.json"


def test_should_find_aliased_paths_when_a_template_uses_a_variable() -> None:
    text = "{{- $t := .Values.trainer }} {{ $t.workers }} {{ .Values.model.name }} {{ $.Values.storage.mode }}"
    assert value_paths(text) == {"trainer", "trainer.workers", "model.name", "storage.mode"}


def test_should_read_every_top_level_value_when_templates_are_scanned() -> None:
    read = {path.split(".")[0] for template in TEMPLATES for path in value_paths(template.read_text())}
    assert sorted(set(VALUES) - read) == []
