"""The rendered JobSet and TFJob against the openAPIV3Schema of their own CRDs (vendored, unchanged, in
shared/upstream/crds/ beside the checkout, see tests/upstream.py and tests/deploy/crds/README.md:
kubernetes-sigs/jobset v0.12.0 and kubeflow/training-operator release-1.9), with
jsonschema. Strict like `kubectl apply --validate=strict`: an object schema that lists its properties
rejects others, unless it says x-kubernetes-preserve-unknown-fields (the API server would otherwise
prune an unknown field silently, and the setting it meant would be lost)."""

from __future__ import annotations

import copy
import functools
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.rendering import VALUE_SET_IDS, render
from tests.upstream import require

CRD_FILES = {"JobSet": "jobset.x-k8s.io_jobsets.yaml", "TFJob": "kubeflow.org_tfjobs.yaml"}


def _strict(schema: Any) -> Any:
    """The CRD schema with additionalProperties: false where Kubernetes' strict field validation would
    reject unknown fields, and int-or-string fields accepting both."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _strict(value) for key, value in schema.items()}
    if schema.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


@functools.cache
def crd_validator(kind: str, api_version: str) -> jsonschema.Draft4Validator:
    crd = yaml.safe_load(require("crds", CRD_FILES[kind]).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served["served"] is True
    schema = _strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    # metadata is the API server's ObjectMeta (validated by it, not by the CRD): name and namespace here.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(schema)


def _errors(obj: dict[str, Any]) -> list[str]:
    validator = crd_validator(obj["kind"], obj["apiVersion"])
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message[:300]}" for e in validator.iter_errors(obj)]


CRD_CASES = [
    (name, obj["kind"]) for name in VALUE_SET_IDS for _, obj in render(name) if obj["kind"] in CRD_FILES
]


def test_should_render_every_crd_kind_in_some_value_set() -> None:
    assert {kind for _, kind in CRD_CASES} == set(CRD_FILES)


@pytest.mark.parametrize(("value_set", "kind"), CRD_CASES, ids=[f"{n}-{k}" for n, k in CRD_CASES])
def test_should_validate_against_its_crd_schema_when_rendered(value_set: str, kind: str) -> None:
    (obj,) = [o for _, o in render(value_set) if o["kind"] == kind]
    assert _errors(obj) == []
    assert obj["metadata"]["name"] and len(obj["metadata"]["name"]) <= 63


@pytest.mark.parametrize(
    ("kind", "path", "value", "expected"),
    [
        ("JobSet", ("spec", "failurePolicy", "maxRestarts"), "five", "is not of type 'integer'"),
        ("JobSet", ("spec", "failurePolicy", "restartStrategy"), "Sometimes", "is not one of"),
        ("JobSet", ("spec", "failurePolicy", "rules", 0, "action"), "RestartEverything", "is not one of"),
        ("JobSet", ("spec", "netwrk"), {}, "Additional properties"),
        ("JobSet", ("spec", "replicatedJobs", 0, "template", "spec", "podFailurePolicy", "rules", 0, "actoin"),
         "FailJob", "Additional properties"),
        ("TFJob", ("spec", "runPolicy", "backoffLimit"), "six", "is not of type 'integer'"),
        ("TFJob", ("spec", "tfReplicaSpecs", "Worker", "replica"), 3, "Additional properties"),
    ],
    ids=["maxRestarts-string", "bad-restart-strategy", "bad-action", "misspelt-network", "misspelt-pfp-field",
         "backoff-limit-string", "misspelt-replicas"],
)
def test_should_reject_a_broken_object_when_the_crd_schema_is_applied(kind, path, value, expected) -> None:
    """The schemas are really applied (guards the test above)."""
    value_set = {"JobSet": "defaults", "TFJob": "tfjob"}[kind]
    (obj,) = [copy.deepcopy(o) for _, o in render(value_set) if o["kind"] == kind]
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = _errors(obj)
    assert errors and any(expected in e for e in errors), errors
