"""templates/_helpers.tpl: names, standard labels and selectors across every object."""

from __future__ import annotations

import pytest

from tests.deploy.rendering import VALUE_SET_IDS, pod_spec, render, render_values

STANDARD = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
            "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "helm.sh/chart"}
SELECTOR = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}


@pytest.mark.parametrize("value_set", VALUE_SET_IDS)
def test_should_label_every_object_when_value_set_is_rendered(value_set: str) -> None:
    for path, obj in render(value_set):
        labels = obj["metadata"].get("labels", {})
        assert set(labels) >= STANDARD, f"{path}: {sorted(STANDARD - set(labels))}"
        assert labels["app.kubernetes.io/instance"] == "digits"


@pytest.mark.parametrize("value_set", VALUE_SET_IDS)
def test_should_select_on_name_instance_component_only_when_selectors_are_rendered(value_set: str) -> None:
    for path, obj in render(value_set):
        spec = obj.get("spec", {})
        selector = spec.get("selector", {})
        selector = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
        if obj["kind"] in {"Service", "Deployment", "PodDisruptionBudget", "ServiceMonitor"}:
            assert set(selector) == SELECTOR, path
        if obj["kind"] == "NetworkPolicy":
            assert set(spec["podSelector"]["matchLabels"]) == SELECTOR, path


@pytest.mark.parametrize("value_set", VALUE_SET_IDS)
def test_should_never_run_a_pod_in_the_default_namespace_when_rendered(value_set: str) -> None:
    assert {obj["metadata"]["namespace"] for _, obj in render(value_set)} == {"ml"}


def test_should_add_common_labels_when_common_labels_is_set() -> None:
    rendered = render_values({"commonLabels": {"team": "vision"}})
    assert all(obj["metadata"]["labels"]["team"] == "vision" for _, obj in rendered)


def test_should_keep_job_pod_hostnames_dns_labels_when_the_release_name_is_long() -> None:
    rendered = render_values({"fullnameOverride": "a" * 40, "trainer": {"workers": 999}})
    job = rendered.one("trainer-job.yaml")
    assert len(f"{job['metadata']['name']}-998") <= 63
    assert len(pod_spec(job)["subdomain"]) <= 63


def test_should_pull_with_secrets_when_image_pull_secrets_is_set() -> None:
    rendered = render_values({"imagePullSecrets": [{"name": "regcred"}]})
    for _, obj in rendered:
        if obj["kind"] in {"Job", "Deployment", "Pod"}:
            assert pod_spec(obj)["imagePullSecrets"] == [{"name": "regcred"}]
