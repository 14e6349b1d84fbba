"""templates/trainer-tfjob.yaml: the Kubeflow TFJob (v1 training operator), checked field by field
(the CRD is not in kubernetes-validate's schemas) and against the trainer's role resolver."""

from __future__ import annotations

import json

import helm_python as helm
import pytest

from tests.deploy.rendering import NAMESPACE, containers, env_of, pod_spec, render, render_values, restricted_violations
from tests.deploy.trainer_contract import load_config
from trainer.cluster import INDEXED_JOB_VARIABLES, resolve

TEMPLATE = "trainer-tfjob.yaml"


def test_should_have_the_operator_required_fields_when_mode_is_tfjob() -> None:
    tfjob = render("tfjob").one(TEMPLATE)
    assert tfjob["apiVersion"] == "kubeflow.org/v1"
    assert tfjob["kind"] == "TFJob"
    assert tfjob["metadata"]["name"] and tfjob["metadata"]["namespace"] == NAMESPACE
    replica_specs = tfjob["spec"]["tfReplicaSpecs"]
    assert set(replica_specs) == {"Worker"}  # no separate Chief: worker 0 is the chief
    worker = replica_specs["Worker"]
    assert worker["replicas"] == 3
    assert worker["restartPolicy"] in {"Always", "OnFailure", "Never", "ExitCode"}
    (container,) = worker["template"]["spec"]["containers"]
    assert container["name"] == "tensorflow"  # the operator finds the TF container by this name
    assert {"name": "tfjob-port", "containerPort": 2222, "protocol": "TCP"} in container["ports"]
    assert tfjob["spec"]["runPolicy"]["backoffLimit"] == 6
    assert tfjob["spec"]["runPolicy"]["cleanPodPolicy"] in {"All", "Running", "None"}


def test_should_resolve_roles_from_the_operator_tf_config_when_mode_is_tfjob() -> None:
    tfjob = render("tfjob").one(TEMPLATE)
    name = tfjob["metadata"]["name"]
    env = env_of(containers(tfjob)[0])
    assert not set(env) & set(INDEXED_JOB_VARIABLES), "TF_CONFIG from the operator is the only cluster source"
    peers = [f"{name}-worker-{i}.{NAMESPACE}.svc:2222" for i in range(3)]
    for index in range(3):
        # What Kubeflow's training operator sets in each worker pod.
        tf_config = {"cluster": {"worker": peers}, "task": {"type": "worker", "index": index}}
        cluster = resolve({**env, "TF_CONFIG": json.dumps(tf_config)})
        assert cluster.source == "tf_config"
        assert cluster.peers == tuple(peers)
        assert cluster.rank == index and cluster.is_chief == (index == 0)
    load_config(env)


def test_should_run_restricted_when_mode_is_tfjob() -> None:
    spec = pod_spec(render("tfjob").one(TEMPLATE))
    assert restricted_violations(spec) == []
    assert "subdomain" not in spec


def test_should_render_no_headless_service_when_mode_is_tfjob() -> None:
    assert render("tfjob").by_template("trainer-headless-service.yaml") == []
    assert render("defaults").by_template(TEMPLATE) == []


def test_should_queue_with_kueue_and_keep_version_labels_off_pods_when_mode_is_tfjob() -> None:
    tfjob = render("tfjob").one(TEMPLATE)
    assert tfjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "tf-queue"
    labels = tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["metadata"]["labels"]
    assert "helm.sh/chart" not in labels and labels["app.kubernetes.io/component"] == "trainer"


@pytest.mark.parametrize("groups", [2, 5])
def test_should_refuse_to_render_when_groups_are_set_in_tfjob_mode(groups: int) -> None:
    """A TFJob has one set of workers sharing one TF_CONFIG: it cannot express groups plus an oracle."""
    with pytest.raises(helm.HelmRenderError, match=rf"trainer.groups={groups} needs trainer.mode jobset or indexedJob"):
        render_values({"trainer": {"mode": "tfjob", "groups": groups}})
    assert render_values({"trainer": {"mode": "tfjob", "groups": 1}}).one(TEMPLATE)["kind"] == "TFJob"
