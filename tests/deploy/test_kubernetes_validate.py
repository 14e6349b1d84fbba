"""Every rendered object against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
fields fail), for the oldest supported (1.29) and the newest known Kubernetes. CRD objects (TFJob,
ServiceMonitor) are not in those schemas: their pod templates are validated as Pods, and their required
fields are checked in tests/deploy/chart/."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.rendering import VALUE_SET_IDS, pod_spec, render

KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
CRD_KINDS = {"TFJob", "ServiceMonitor"}


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


def test_should_reject_unknown_fields_when_validating_strictly() -> None:
    """The validator itself is strict: a misspelt field in a rendered Job fails (guards the tests above)."""
    job = next(obj for _, obj in render("defaults") if obj["kind"] == "Job")
    broken = {**job, "spec": {**job["spec"], "backofLimitPerIndex": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
