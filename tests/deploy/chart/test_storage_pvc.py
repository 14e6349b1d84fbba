"""templates/storage-pvc.yaml."""

from __future__ import annotations

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
