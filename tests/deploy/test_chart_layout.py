"""The chart's layout habits: one object per template file, file names prefixed by component, and a
test module in tests/deploy/chart/ mirroring each template."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.rendering import CHART_DIR, VALUE_SETS, render

TEMPLATES = CHART_DIR / "templates"
MANIFESTS = sorted(p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*.yaml"))
COMPONENTS = ("trainer-", "serving-", "storage-", "tensorboard-", "tests/client-test-")


#: The one exception: in indexedJob mode each group of parallel trials is its own Indexed Job (a plain Job
#: cannot hold several groups), so this template renders trainer.groups Jobs.
PER_GROUP = {"trainer-job.yaml"}


@pytest.mark.parametrize("template", MANIFESTS)
def test_should_render_at_most_one_object_when_any_value_set_is_used(template: str) -> None:
    counts = {name: len(render(name).by_template(template)) for name in VALUE_SETS}
    limits = {name: render(name).values["trainer"]["groups"] if template in PER_GROUP else 1 for name in VALUE_SETS}
    assert all(counts[name] in (0, limits[name]) for name in VALUE_SETS), counts
    assert max(counts.values()) >= 1, f"{template} renders nothing in any value set: untested"


def test_should_prefix_every_file_by_component_when_templates_are_listed() -> None:
    assert [template for template in MANIFESTS if not template.startswith(COMPONENTS)] == []


def test_should_have_a_mirroring_test_module_for_every_template() -> None:
    def module(template: str) -> Path:
        stem = Path(template).with_suffix("").as_posix().replace("/", "_").replace("-", "_").lstrip("_")
        return Path(__file__).parent / "chart" / f"test_{stem.lower()}.py"

    assert [module(t).name for t in [*MANIFESTS, "NOTES.txt", "_helpers.tpl"] if not module(t).is_file()] == []
