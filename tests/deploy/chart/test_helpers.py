"""templates/_helpers.tpl: names, standard labels and selectors across every object."""

from __future__ import annotations

import re

import helm_python as helm
import pytest
import yaml

from tests.deploy.rendering import (
    CHART_DIR,
    VALUE_SET_IDS,
    env_of,
    pod_spec,
    pod_templates,
    render,
    render_values,
    trainer_workloads,
)
from tests.deploy.trainer_contract import EXIT_CODES, SAVE_DEADLINE_VARIABLE, load_config

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
    rendered = render_values({"fullnameOverride": "a" * 40, "trainer": {"mode": "indexedJob", "workers": 1000,
                                                                        "runId": "abcdefgh"}})
    job = rendered.one("trainer-job.yaml")
    assert job["metadata"]["name"].endswith("-trainer-abcdefgh")
    assert len(f"{job['metadata']['name']}-999") <= 63
    assert len(pod_spec(job)["subdomain"]) <= 63


@pytest.mark.parametrize("value_set", VALUE_SET_IDS)
def test_should_keep_version_labels_out_of_pod_templates_when_rendered(value_set: str) -> None:
    """A Job's (and a JobSet's) pod template is immutable: a label that changes with the chart version
    would make `helm upgrade` fail; on the Deployment it would restart TF Serving for nothing."""
    for path, obj in render(value_set):
        if obj["kind"] in {"Job", "JobSet", "TFJob", "Deployment"}:
            for template in pod_templates(obj):  # a JobSet with groups: the workers' and the oracle's
                labels = template["metadata"]["labels"]
                assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(labels), path
                assert set(labels) >= SELECTOR


def test_should_name_the_exit_code_contract_once_when_helpers_are_read() -> None:
    """The chart names the trainer's exit codes once (tfstack.trainer.exitCodes); they must be the trainer's own
    (trainer.errors through tests/deploy/trainer_contract.py), or the failure policies act on the wrong codes."""
    helpers = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    body = re.search(r'define "tfstack.trainer.exitCodes" -}}\n(.*?)\n\{\{- end', helpers, re.S)[1]
    assert yaml.safe_load(body) == EXIT_CODES
    templates = [p for p in (CHART_DIR / "templates").glob("*.yaml")]
    # no template spells an exit-code list itself
    assert [p.name for p in templates if re.search(r"values: \[\d", p.read_text())] == []


def test_should_pull_with_secrets_when_image_pull_secrets_is_set() -> None:
    rendered = render_values({"imagePullSecrets": [{"name": "regcred"}]})
    for _, obj in rendered:
        if obj["kind"] in {"JobSet", "Deployment", "Pod"}:
            assert pod_spec(obj)["imagePullSecrets"] == [{"name": "regcred"}]


@pytest.mark.parametrize("value_set", [name for name in VALUE_SET_IDS if render(name).values["trainer"]["enabled"]])
def test_should_give_the_trainer_its_save_deadline_inside_the_grace_period_when_rendered(value_set: str) -> None:
    """One value, trainer.terminationGracePeriodSeconds, is both the kubelet's SIGKILL deadline of every trainer
    pod (workers and oracle, every mode) and, less the margin, the deadline the trainer saves within after
    SIGTERM (TFSTACK_TERMINATION_GRACE_SECONDS, issue 23)."""
    rendered = render(value_set)
    trainer = rendered.values["trainer"]
    for workload in trainer_workloads(rendered):
        for template in pod_templates(workload):
            spec = template["spec"]
            assert spec["terminationGracePeriodSeconds"] == trainer["terminationGracePeriodSeconds"]
            deadline = int(env_of(spec["containers"][0])[SAVE_DEADLINE_VARIABLE])
            assert deadline == trainer["terminationGracePeriodSeconds"] - trainer["terminationGraceMarginSeconds"]
            assert 0 < deadline < spec["terminationGracePeriodSeconds"]
            assert load_config(env_of(spec["containers"][0])).termination_grace_seconds == deadline  # as read


def test_should_refuse_a_margin_that_leaves_the_trainer_no_time_to_save() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"terminationGraceMarginSeconds \(30\) must be less than"):
        render_values({"trainer": {"terminationGracePeriodSeconds": 30, "terminationGraceMarginSeconds": 30}})
