"""Every rendered object against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
fields fail), for the oldest supported (1.29) and the newest known Kubernetes. CRD objects (JobSet, TFJob,
ServiceMonitor, PodMonitor, PrometheusRule, ScaledObject, PodGroup) are not in those schemas: the JobSet's
child Job is validated as the Job JobSet creates from it, the TFJob's pod template as a Pod, and JobSet and
TFJob against their own CRDs (test_crd_schemas.py)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.rendering import VALUE_SET_IDS, jobset_child_jobs, pod_spec, render

KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
CRD_KINDS = {"JobSet", "TFJob", "ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject", "PodGroup"}


def _validate(obj: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on Kubernetes {version}: {path}: {exc.message}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: f"k8s-{v}")
@pytest.mark.parametrize("value_set", VALUE_SET_IDS)
def test_should_validate_strictly_when_value_set_is_rendered(value_set: str, version: str) -> None:
    validated = 0
    for _, obj in render(value_set):
        if obj["kind"] in CRD_KINDS:
            continue
        _validate(obj, version)
        validated += 1
    assert validated >= 6, f"Expected the chart's core objects to be validated. Received: {validated}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: f"k8s-{v}")
def test_should_validate_tfjob_pod_template_as_a_pod_when_mode_is_tfjob(version: str) -> None:
    (tfjob,) = [obj for _, obj in render("tfjob") if obj["kind"] == "TFJob"]
    template = tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]
    spec = dict(pod_spec(tfjob))
    spec.pop("restartPolicy")  # TFJob replicas take OnFailure, which the operator applies to its pods
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w", **template["metadata"]}, "spec": spec}
    _validate(pod, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: f"k8s-{v}")
@pytest.mark.parametrize("value_set", ["defaults", "jobset", "gpus"])
def test_should_validate_the_child_job_jobset_creates_when_mode_is_jobset(value_set: str, version: str) -> None:
    """JobSet creates "<jobset>-<replicatedJob>-<index>" with the replicatedJob's template as its spec
    (jobset_controller.go, constructJob): that Job must pass Kubernetes' own validation."""
    (jobset,) = [obj for _, obj in render(value_set) if obj["kind"] == "JobSet"]
    jobs = jobset_child_jobs(jobset)
    assert len(jobs) == 1
    for job in jobs:
        _validate(job, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: f"k8s-{v}")
def test_should_validate_every_group_job_and_the_oracle_job_jobset_creates_when_groups_are_set(version: str) -> None:
    (jobset,) = [obj for _, obj in render("groups") if obj["kind"] == "JobSet"]
    jobs = jobset_child_jobs(jobset)
    assert [job["metadata"]["name"] for job in jobs] == [f"digits-tfstack-trainer-{rj}" for rj in
                                                         ("worker-0", "worker-1", "worker-2", "oracle-0")]
    for job in jobs:
        _validate(job, version)


def test_should_reject_unknown_fields_when_validating_strictly() -> None:
    """The validator itself is strict: a misspelt field in a rendered Job fails (guards the tests above)."""
    job = next(obj for _, obj in render("indexed_job") if obj["kind"] == "Job")
    broken = {**job, "spec": {**job["spec"], "backofLimitPerIndex": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
