"""`helm upgrade` to a new chart version: the trainer's workload spec, pod template included, must not
change, because a Job's spec.template is immutable (kubernetes/kubernetes,
pkg/apis/batch/validation/validation.go, ValidateJobSpecUpdate) and so are a
JobSet's replicatedJobs; an upgrade that changed them would be refused. The chart is copied and its
Chart.yaml bumped, then both versions are rendered with the same values."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.rendering import CHART_DIR, pod_template, render_values, trainer_workload, trainer_workloads

MODES = ["jobset", "indexedJob", "tfjob"]


def _bumped(tmp_path: Path, version: str, app_version: str | None = None) -> Path:
    chart = tmp_path / "chart"
    shutil.copytree(CHART_DIR, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    assert meta["version"] != version
    meta["version"] = version
    if app_version is not None:
        meta["appVersion"] = app_version
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return chart


def _trainer(values: dict[str, Any], chart: Path = CHART_DIR) -> dict[str, Any]:
    return trainer_workload(render_values(values, chart))


@pytest.mark.parametrize("mode", MODES)
def test_should_keep_the_trainer_spec_identical_when_only_the_chart_version_changes(mode: str, tmp_path: Path) -> None:
    values = {"trainer": {"mode": mode, "workers": 3}}
    before, after = _trainer(values), _trainer(values, _bumped(tmp_path, "0.2.0"))
    assert after["metadata"]["labels"]["helm.sh/chart"] != before["metadata"]["labels"]["helm.sh/chart"]
    assert after["spec"] == before["spec"]


@pytest.mark.parametrize("mode", MODES)
def test_should_keep_the_trainer_spec_identical_when_images_are_pinned_and_app_version_changes(
    mode: str, tmp_path: Path
) -> None:
    values = {"trainer": {"mode": mode, "image": {"tag": "0.1.0"}}}
    before, after = _trainer(values), _trainer(values, _bumped(tmp_path, "0.2.0", "0.2.0"))
    assert after["metadata"]["labels"]["app.kubernetes.io/version"] == "0.2.0"
    assert after["spec"] == before["spec"]


def test_should_change_the_trainer_image_when_its_tag_follows_a_new_app_version(tmp_path: Path) -> None:
    """Documented (docs/deploy.md, "Upgrade"): a new trainer image is a new search; set trainer.runId."""
    before, after = _trainer({}), _trainer({}, _bumped(tmp_path, "0.2.0", "0.2.0"))
    assert pod_template(after) != pod_template(before)
    renamed = _trainer({"trainer": {"runId": "v2"}}, _bumped(tmp_path / "b", "0.2.0", "0.2.0"))
    assert renamed["metadata"]["name"] != before["metadata"]["name"]


def test_should_not_restart_tf_serving_when_only_the_chart_version_changes(tmp_path: Path) -> None:
    before = render_values({}).one("serving-deployment.yaml")
    after = render_values({}, _bumped(tmp_path, "0.2.0")).one("serving-deployment.yaml")
    assert after["spec"]["template"] == before["spec"]["template"]


def test_should_keep_every_trainer_spec_identical_when_groups_are_set_and_only_the_chart_version_changes(
    tmp_path: Path,
) -> None:
    """With groups: the JobSet (workers and oracle), and each group's and the oracle's Indexed Job."""
    for mode in ("jobset", "indexedJob"):
        values = {"trainer": {"mode": mode, "groups": 3, "workers": 2}}
        chart = _bumped(tmp_path / mode, "0.2.0")
        before = trainer_workloads(render_values(values))
        after = trainer_workloads(render_values(values, chart))
        assert len(before) == (1 if mode == "jobset" else 4)
        assert [w["spec"] for w in after] == [w["spec"] for w in before]
