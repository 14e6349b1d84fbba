"""templates/NOTES.txt."""

from __future__ import annotations

import shlex

import pytest

from serving.client.__main__ import build_parser
from tests.deploy.rendering import render


def test_should_print_a_predict_command_the_client_accepts_when_installed() -> None:
    notes = render("defaults").notes
    (line,) = [line for line in notes.splitlines() if "serving.client predict" in line]
    argv = shlex.split(line.strip())
    assert argv[:3] == ["python", "-m", "serving.client"]
    args = build_parser().parse_args(argv[3:])
    assert args.command == "predict" and args.model == "digits" and args.target == "localhost:8500"
    assert "helm test digits" in notes


@pytest.mark.parametrize(
    ("value_set", "kind", "chief_selector"),
    [("defaults", "JobSet", "-l jobset.sigs.k8s.io/jobset-name=digits-tfstack-trainer,"),
     ("indexed_job", "Indexed Job", "-l job-name=digits-tfstack-trainer,"),
     ("tfjob", "Kubeflow TFJob", "digits-tfstack-trainer-worker-0")],
    ids=["jobset", "indexed-job", "tfjob"],
)
def test_should_name_the_workload_and_its_chief_when_mode_is_set(value_set: str, kind: str, chief_selector: str
                                                                  ) -> None:
    notes = render(value_set).notes
    assert kind in notes and chief_selector in notes


def test_should_show_how_to_start_a_new_search_when_installed() -> None:
    (line,) = [line for line in render("jobset").notes.splitlines() if "A new search" in line]
    assert "--set trainer.runId=" in line


@pytest.mark.parametrize(
    ("value_set", "selectors"),
    [("groups", ["jobset.sigs.k8s.io/replicatedjob-name=oracle", "jobset.sigs.k8s.io/job-index=0,"]),
     ("groups_indexed_job",
      ["-l job-name=digits-tfstack-trainer-p3-oracle\n", "-l job-name=digits-tfstack-trainer-p3-0,"])],
    ids=["jobset", "indexed-job"],
)
def test_should_point_at_the_oracle_and_a_group_chief_when_groups_are_set(value_set: str, selectors: list[str]) -> None:
    notes = render(value_set).notes
    assert "3 groups of 2 worker(s)" in notes and "oracle" in notes
    assert all(selector in notes for selector in selectors), notes


def test_should_name_the_headless_address_when_client_side_balancing_is_on() -> None:
    rendered = render("monitoring")
    headless = rendered.one("serving-headless-service.yaml")["metadata"]["name"]
    assert f"dns:///{headless}.ml.svc.cluster.local:8500" in rendered.notes
    assert "dns:///" not in render("defaults").notes
