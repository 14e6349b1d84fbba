"""The parameter table of k8s/chart/README.md, generated from the ``## @param`` lines of values.yaml
(bitnami's readme-generator convention: ``## @param <key> <description>``; the description goes on over
the following ``##`` comment lines until the next ``@param`` or the key itself).

    python -m tests.deploy.chart_readme      # rewrite the table in k8s/chart/README.md
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.deploy.rendering import CHART_DIR

VALUES = CHART_DIR / "values.yaml"
README = CHART_DIR / "README.md"
HEADER = "| key | description | default |\n| --- | --- | --- |\n"


def parameters(text: str) -> list[tuple[str, str]]:
    """(key, description) of every ``## @param``, descriptions joined over their continuation lines."""
    found: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        match = re.match(r"^## @param (\S+)\s*(.*)$", stripped)
        if match:
            current = [match[2]] if match[2] else []
            found.append((match[1], current))
        elif current is not None and stripped.startswith("## ") and "@" not in stripped.split()[1][:1]:
            current.append(stripped[3:].strip())
        else:
            current = None
    return [(key, " ".join(parts)) for key, parts in found]


def _default(values: dict[str, Any], key: str) -> str:
    node: Any = values
    for part in key.split("."):
        node = node[part]
    if isinstance(node, dict) and node:
        return "`see values.yaml`"
    if isinstance(node, list) and node and all(not isinstance(i, (dict, list)) for i in node):
        return "`[" + ", ".join(str(i) for i in node) + "]`"
    if isinstance(node, (dict, list)) and node:
        return "`see values.yaml`"
    if node == "":
        return '`""`'
    return "`" + yaml.safe_dump(node, default_flow_style=True).strip().removesuffix("...").strip() + "`"


def table() -> str:
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    rows = [f"| `{key}` | {description.replace('|', chr(92) + '|')} | {_default(values, key)} |"
            for key, description in parameters(text)]
    return HEADER + "\n".join(rows) + "\n"


def readme_table(readme: str) -> str:
    start = readme.index(HEADER)
    end = readme.find("\n\n", start)
    return readme[start:end + 1 if end != -1 else len(readme)]


def main() -> None:
    readme = README.read_text()
    README.write_text(readme.replace(readme_table(readme), table()))


if __name__ == "__main__":
    main()
