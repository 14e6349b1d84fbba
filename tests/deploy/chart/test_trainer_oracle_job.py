"""templates/trainer-oracle-job.yaml: the oracle of parallel trials in indexedJob mode (trainer.groups > 1),
an Indexed Job of one pod that the groups' workers reach under the headless Service; and the oracle's part
of the rendered pod environment, resolved by the trainer (tests/deploy/trainer_contract.py)."""

from __future__ import annotations

import pytest

from tests.deploy.failure_policy import DISRUPTED, IndexedJobRun, exit
from tests.deploy.pods import indexed_job_pods
from tests.deploy.rendering import containers, pod_spec, render, render_values, restricted_violations
from tests.deploy.trainer_contract import EXIT_CODES
from trainer.cluster import resolve

TEMPLATE = "trainer-oracle-job.yaml"


def test_should_run_one_oracle_pod_with_a_stable_dns_name_when_groups_are_set() -> None:
    rendered = render("groups_indexed_job")
    job = rendered.one(TEMPLATE)
    service = rendered.one("trainer-headless-service.yaml")
    assert job["metadata"]["name"] == "digits-tfstack-trainer-p3-oracle"
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 1, 1)
    (pod,) = indexed_job_pods(job)
    assert pod.hostname == "digits-tfstack-trainer-p3-oracle-0"
    assert pod.spec["subdomain"] == service["metadata"]["name"]
    assert all(pod.metadata["labels"][k] == v for k, v in service["spec"]["selector"].items())
    cluster = resolve(pod.env())
    assert cluster.is_oracle and cluster.groups == 3
    assert cluster.oracle == f"{pod.dns_name()}:{pod.container_ports()['oracle']}"
    oracle_port = next(p for p in service["spec"]["ports"] if p["name"] == "oracle")
    assert oracle_port["port"] == rendered.values["trainer"]["containerPorts"]["oracle"]


def test_should_give_the_oracle_no_cluster_variables_and_no_gpu_when_rendered() -> None:
    rendered = render_values({"trainer": {"mode": "indexedJob", "groups": 2, "gpusPerWorker": 2}})
    (container,) = containers(rendered.one(TEMPLATE))
    names = {item["name"] for item in container["env"]}
    assert not {name for name in names if name.startswith("TFSTACK_CLUSTER_")} | ({"TFSTACK_GROUP"} & names)
    assert not any("gpu" in name for part in container["resources"].values() for name in part)
    assert restricted_violations(pod_spec(rendered.one(TEMPLATE))) == []


@pytest.mark.parametrize("code", ["badInput", "notPublished"])
def test_should_fail_the_oracle_job_at_once_when_the_oracle_exits_do_not_retry(code: str) -> None:
    run = IndexedJobRun(render("groups_indexed_job").one(TEMPLATE)["spec"])
    run.pod_failed(0, exit(EXIT_CODES[code]))
    assert run.failed == "PodFailurePolicy"


def test_should_recreate_the_oracle_within_its_retries_when_it_crashes_or_is_disrupted() -> None:
    spec = render("groups_indexed_job").one(TEMPLATE)["spec"]
    run = IndexedJobRun(spec)
    assert run.pod_failed(0, DISRUPTED) == "Ignore"
    for _ in range(spec["backoffLimitPerIndex"]):
        assert run.pod_failed(0, exit(EXIT_CODES["crash"])) == "Count" and run.failed is None
    run.pod_failed(0, exit(EXIT_CODES["crash"]))
    assert run.failed == "MaxFailedIndexesExceeded"
    assert spec["activeDeadlineSeconds"] > 0


@pytest.mark.parametrize("value_set", ["indexed_job", "single_worker", "groups", "defaults"])
def test_should_render_no_oracle_job_without_groups_or_in_jobset_mode(value_set: str) -> None:
    assert render(value_set).by_template(TEMPLATE) == []
