"""values.schema.json: it covers every key of values.yaml, closes every object, and rejects broken
values with a message naming the key (Helm validates it on install, upgrade, template and lint)."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.rendering import CHART_DIR, render_values

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
# Objects whose keys are Kubernetes' own (security contexts, affinity, ...) or free-form maps.
FREE_FORM = {"affinity", "podSecurityContext", "containerSecurityContext", "global"}


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for key, sub in schema.get("properties", {}).items():
        found += _walk(sub, f"{path}.{key}" if path else key)
    return found


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"trainer": {"workers": 0}}, ["/trainer/workers", "minimum"]),
        ({"storage": {"mode": "hostPath"}}, ["/storage/mode", "'pvc', 'existingClaim'"]),
        ({"storage": {"mode": "existingClaim"}}, ["/storage/existingClaim", "minLength"]),
        ({"trainer": {"mode": "mpijob"}}, ["/trainer/mode", "'jobset', 'indexedJob', 'tfjob'"]),
        ({"trainer": {"runId": "Run_2"}}, ["/trainer/runId"]),
        ({"trainer": {"runId": "much-too-long"}}, ["/trainer/runId"]),
        ({"trainer": {"maxRestarts": -1}}, ["/trainer/maxRestarts", "minimum"]),
        ({"trainer": {"priorityClassName": "High Priority"}}, ["/trainer/priorityClassName"]),
        ({"trainer": {"podLabels": {"team": 7}}}, ["/trainer/podLabels/team"]),
        ({"serving": {"image": {"tag": "2.21.0-gpu"}}}, ["/serving/gpus", "minimum"]),
        ({"serving": {"startupProbe": {"successThreshold": 2}}}, ["/serving/startupProbe/successThreshold"]),
        ({"trainer": {"gpusPerWorker": -1}}, ["/trainer/gpusPerWorker", "minimum"]),
        ({"trainer": {"wokers": 4}}, ["/trainer", "'wokers' not allowed"]),
        ({"trainer": {"search": {"tuner": "grid"}}}, ["/trainer/search/tuner"]),
        ({"trainer": {"search": {"backbone": "resnet9000"}}}, ["/trainer/search/backbone"]),
        ({"model": {"name": "My Model"}}, ["/model/name"]),
        ({"serving": {"image": {"pullPolicy": "Sometimes"}}}, ["/serving/image/pullPolicy"]),
        ({"serving": {"extraArgs": ["port=1"]}}, ["/serving/extraArgs/0"]),
        ({"trainer": {"groups": 0}}, ["/trainer/groups", "minimum"]),
        ({"trainer": {"groups": 1025}}, ["/trainer/groups", "maximum"]),
        ({"trainer": {"groupRestart": "group"}}, ["/trainer/groupRestart", "'job', 'jobSet'"]),
        ({"trainer": {"containerPorts": {"oracle": 0}}}, ["/trainer/containerPorts/oracle", "minimum"]),
        ({"trainer": {"oracle": {"gpus": 1}}}, ["/trainer/oracle", "'gpus' not allowed"]),
    ],
    ids=["workers-0", "bad-storage-mode", "existing-claim-without-name", "bad-trainer-mode", "run-id-not-dns",
         "run-id-too-long", "negative-max-restarts", "priority-class-not-dns", "pod-label-not-string",
         "gpu-image-without-gpu", "startup-success-threshold", "negative-gpus",
         "misspelt-key", "bad-tuner", "bad-backbone", "model-name-not-dns", "bad-pull-policy", "extra-arg-not-flag",
         "groups-0", "groups-over-restart-job-limit", "bad-group-restart", "oracle-port-0", "oracle-gpus"],
)
def test_should_reject_values_with_a_clear_message_when_a_value_is_broken(
    values: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(helm.HelmValuesError) as info:
        render_values(values)
    message = str(info.value)
    for part in expected:
        assert part in message, message


def test_should_accept_defaults_when_no_value_is_set() -> None:
    with helm.Chart.load(str(CHART_DIR)) as chart:
        chart.validate_schema({})


def test_should_cover_every_values_key_when_schema_is_read() -> None:
    def leaves(node: Any, schema: dict[str, Any], path: str) -> list[str]:
        missing = []
        if isinstance(node, dict) and path.rsplit(".", 1)[-1] not in FREE_FORM:
            for key, value in node.items():
                sub = schema.get("properties", {}).get(key)
                if sub is None:
                    if "additionalProperties" in schema and schema["additionalProperties"] not in (False,):
                        continue
                    missing.append(f"{path}.{key}".lstrip("."))
                    continue
                missing += leaves(value, sub, f"{path}.{key}")
        return missing

    assert leaves(VALUES, SCHEMA, "") == []


def test_should_close_every_object_when_schema_declares_properties() -> None:
    open_objects = [
        path for path, node in _walk(SCHEMA)
        if "properties" in node and node.get("additionalProperties") is not False
    ]
    assert open_objects == []


def test_should_describe_every_key_when_schema_is_read() -> None:
    undocumented = [path for path, node in _walk(SCHEMA) if path and not node.get("description")]
    assert undocumented == []


def test_should_document_every_values_key_when_values_yaml_is_read() -> None:
    """Every key of values.yaml has a ``## @param`` line (bitnami's readme-generator convention)."""
    text = (CHART_DIR / "values.yaml").read_text()
    documented = {line.split()[2] for line in text.splitlines() if line.strip().startswith("## @param")}

    def params(node: Any, path: str) -> list[str]:
        if not isinstance(node, dict) or not node or path.rsplit(".", 1)[-1] in FREE_FORM | {"resources"}:
            return [path]
        found = []
        for key, value in node.items():
            sub = f"{path}.{key}" if path else key
            found += [sub] if sub in documented else params(value, sub)
        return found

    assert sorted(set(params(VALUES, "")) - documented) == []
