"""templates/storage-pvc.yaml."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.deploy.pods import pods_of
from tests.deploy.rendering import render, render_values

TEMPLATE = "storage-pvc.yaml"


def test_should_claim_read_write_many_storage_when_storage_class_is_set() -> None:
    spec = render("gpus").one(TEMPLATE)["spec"]
    assert spec["accessModes"] == ["ReadWriteMany"]
    assert spec["storageClassName"] == "nfs-client"
    assert spec["resources"]["requests"]["storage"] == "20Gi"


def test_should_use_the_cluster_default_class_when_storage_class_is_empty() -> None:
    assert "storageClassName" not in render("defaults").one(TEMPLATE)["spec"]


def test_should_create_no_claim_when_an_existing_claim_is_set() -> None:
    rendered = render("existing_claim")
    assert rendered.by_template(TEMPLATE) == []
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for _, obj in rendered if obj["kind"] in {"Job", "Deployment"}
        for v in obj["spec"]["template"]["spec"]["volumes"] if v["name"] == "models"
    }
    assert claims == {"shared-models"}


def test_should_keep_the_models_when_the_release_is_uninstalled() -> None:
    """Helm skips resources annotated helm.sh/resource-policy: keep on uninstall (Helm docs, "Chart
    Development Tips and Tricks", "Tell Helm Not To Uninstall a Resource")."""
    assert render("defaults").one(TEMPLATE)["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    rendered = render_values({"storage": {"keepOnUninstall": False, "annotations": {"backup": "daily"}}})
    assert rendered.one(TEMPLATE)["metadata"]["annotations"] == {"backup": "daily"}
    assert "annotations" not in render_values({"storage": {"keepOnUninstall": False}}).one(TEMPLATE)["metadata"]


# -- a ReadWriteOnce claim mounted by several pods --------------------------------------------------------

def _pods_mounting(rendered, claim: str) -> int:
    """How many pods could mount `claim` at once, counted from the rendered workloads: every trainer pod
    (tests/deploy/pods.py; a TFJob's replicas from its spec) and the serving Deployment's replicas (its HPA's
    maxReplicas when autoscaled)."""
    def mounts(spec) -> bool:
        return any(v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in spec.get("volumes", []))

    count = sum(mounts(pod.spec) for pod in pods_of(rendered))
    for _, obj in rendered:
        if obj["kind"] == "TFJob":
            count += sum(r["replicas"] for r in obj["spec"]["tfReplicaSpecs"].values() if mounts(r["template"]["spec"]))
        if obj["kind"] == "Deployment" and mounts(obj["spec"]["template"]["spec"]):
            hpa = [o for _, o in rendered if o["kind"] == "HorizontalPodAutoscaler"]
            count += hpa[0]["spec"]["maxReplicas"] if hpa else obj["spec"]["replicas"]
    return count


ONE_NODE_CASES = {
    "defaults": {},
    "one-worker-no-serving": {"trainer": {"workers": 1}, "serving": {"enabled": False}},
    "serving-only-one-replica": {"trainer": {"enabled": False}, "serving": {"replicaCount": 1}},
    "tfjob": {"trainer": {"mode": "tfjob", "workers": 3}},
    "groups": {"trainer": {"groups": 2, "workers": 1}, "serving": {"enabled": False}},
    "autoscaled": {"trainer": {"enabled": False}, "serving": {"replicaCount": 1, "autoscaling": {"enabled": True}}},
}


@pytest.mark.parametrize("values", ONE_NODE_CASES.values(), ids=ONE_NODE_CASES.keys())
@pytest.mark.parametrize("mode", ["ReadWriteOnce", "ReadWriteOncePod"])
def test_should_refuse_a_single_node_claim_exactly_when_several_pods_would_mount_it(values: dict, mode: str) -> None:
    """Counted on the ReadWriteMany rendering of the same values: more than one pod refuses to render (they
    may land on different nodes: Multi-Attach, ContainerCreating forever), one pod renders."""
    rendered = render_values(values)
    pods = _pods_mounting(rendered, rendered.one(TEMPLATE)["metadata"]["name"])
    single = {**values, "storage": {"accessModes": [mode]}}
    if pods > 1:
        with pytest.raises(helm.HelmRenderError, match=rf"storage.accessModes \[{mode}\] cannot be shared") as error:
            render_values(single)
        assert "ReadWriteMany" in str(error.value) and "ReadOnlyMany" in str(error.value)
    else:
        assert render_values(single).one(TEMPLATE)["spec"]["accessModes"] == [mode]


def test_should_have_cases_on_both_sides_of_the_single_node_check() -> None:
    counts = {name: _pods_mounting(r := render_values(values), r.one(TEMPLATE)["metadata"]["name"])
              for name, values in ONE_NODE_CASES.items()}
    assert counts["one-worker-no-serving"] == counts["serving-only-one-replica"] == 1
    assert counts["defaults"] == 4 and counts["groups"] == 3 and counts["autoscaled"] == 8
