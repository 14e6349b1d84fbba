"""checkov on the rendered manifests of every value set and on the Dockerfiles: no failed check.

Skips are justified where they apply: ``checkov.io/skipN`` annotations in the chart's templates
(helper ``tfstack.checkovSkips``) and ``# checkov:skip=ID: reason`` comments in the Dockerfiles.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.rendering import ROOT, VALUE_SETS, jobset_child_jobs, render
from tests.deploy.tools import run_checkov


def _failures(reports: list[dict[str, Any]]) -> list[str]:
    return [
        f"{check['check_id']} {check['check_name']} at {check['file_path']} ({check.get('resource', '')})"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]


def _summary(reports: list[dict[str, Any]], key: str) -> int:
    return sum(report.get("summary", {}).get(key, 0) for report in reports)


@pytest.fixture(scope="module")
def manifests_report(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """One checkov run per value set (one run over all sets is much slower: its graph checks link the
    same-named objects of every set), two at a time."""
    root = tmp_path_factory.mktemp("manifests")
    directories = []
    for name in VALUE_SETS:
        directory = root / name
        directory.mkdir()
        objects = [obj for _, obj in render(name)]
        # checkov knows no JobSet: scan the Job JobSet creates from it, so its pods are checked too.
        objects += [job for obj in objects if obj["kind"] == "JobSet" for job in jobset_child_jobs(obj)]
        (directory / f"{name}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
        directories.append(directory)
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = pool.map(lambda directory: run_checkov(directory, "kubernetes"), directories)
        return [report for per_set in reports for report in per_set]


def test_should_pass_every_checkov_kubernetes_check_when_the_value_matrix_is_rendered(
    manifests_report: list[dict[str, Any]],
) -> None:
    assert len(manifests_report) == len(VALUE_SETS)
    assert _summary(manifests_report, "resource_count") >= 6 * len(VALUE_SETS), manifests_report[0].get("summary")
    assert _summary(manifests_report, "passed") > 0
    assert _failures(manifests_report) == []
    assert _summary(manifests_report, "parsing_errors") == 0


def test_should_justify_every_skip_when_checkov_skips_a_kubernetes_check(
    manifests_report: list[dict[str, Any]],
) -> None:
    skipped = [check for report in manifests_report for check in report.get("results", {}).get("skipped_checks", [])]
    assert skipped, "Expected the chart's annotated skips to be reported as skipped"
    unjustified = [
        check["check_id"] for check in skipped if len(str(check["check_result"].get("suppress_comment", ""))) < 20
    ]
    assert unjustified == []


def test_should_pass_every_checkov_dockerfile_check_when_scanning_docker_dir(tmp_path: Path) -> None:
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        # checkov recognises files named Dockerfile (or *.Dockerfile) anywhere under the directory
        (tmp_path / dockerfile.name).write_text(dockerfile.read_text())
    reports = run_checkov(tmp_path, "dockerfile")
    assert _summary(reports, "resource_count") == 3
    assert _failures(reports) == []
    skipped = [check for report in reports for check in report.get("results", {}).get("skipped_checks", [])]
    # only HEALTHCHECK, only where the image runs no server (trainer: batch job; client: one-shot CLI)
    assert sorted((c["check_id"], Path(c["file_path"]).name) for c in skipped) == [
        ("CKV_DOCKER_2", "client.Dockerfile"), ("CKV_DOCKER_2", "trainer.Dockerfile")]
    assert all(len(c["check_result"].get("suppress_comment", "")) >= 20 for c in skipped)
