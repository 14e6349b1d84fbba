"""templates/trainer-job.yaml: the Indexed Job, checked against the trainer's own role resolver."""

from __future__ import annotations

import pytest

from tests.deploy.rendering import (
    NAMESPACE,
    containers,
    env_of,
    pod_spec,
    render,
    render_values,
    restricted_violations,
)
from trainer import config as trainer_config
from trainer.cluster import resolve

TEMPLATE = "trainer-job.yaml"
INDEXED_SETS = ["defaults", "gpus", "existing_claim", "monitoring"]


@pytest.mark.parametrize("value_set", INDEXED_SETS)
def test_should_build_the_cluster_from_headless_dns_when_each_index_resolves_its_role(value_set: str) -> None:
    rendered = render(value_set)
    job = rendered.one(TEMPLATE)
    service = rendered.one("trainer-headless-service.yaml")
    workers = rendered.values["trainer"]["workers"]
    port = rendered.values["trainer"]["containerPorts"]["cluster"]
    job_name, service_name = job["metadata"]["name"], service["metadata"]["name"]
    env = env_of(containers(job)[0])
    expected = tuple(f"{job_name}-{i}.{service_name}.{NAMESPACE}.svc.cluster.local:{port}" for i in range(workers))

    for index in range(workers):
        # Kubernetes sets JOB_COMPLETION_INDEX in every pod of an Indexed Job.
        cluster = resolve({**env, "JOB_COMPLETION_INDEX": str(index)})
        assert cluster.source == "indexed_job"
        assert cluster.peers == expected
        assert cluster.rank == index
        assert cluster.is_chief == (index == 0)
        assert cluster.num_workers == workers
        tf_config = cluster.tf_config()
        assert tf_config == {"cluster": {"worker": list(expected)}, "task": {"type": "worker", "index": index}}


@pytest.mark.parametrize("value_set", INDEXED_SETS)
def test_should_make_peers_reachable_when_pods_use_the_headless_subdomain(value_set: str) -> None:
    rendered = render(value_set)
    job = rendered.one(TEMPLATE)
    service = rendered.one("trainer-headless-service.yaml")
    spec = pod_spec(job)
    assert spec["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())
    # pods' hostnames are "<job>-<index>": a DNS label
    assert len(f"{job['metadata']['name']}-{rendered.values['trainer']['workers'] - 1}") <= 63
    cluster_port = next(p for p in containers(job)[0]["ports"] if p["name"] == "cluster")
    assert cluster_port["containerPort"] == int(env_of(containers(job)[0])["TFSTACK_CLUSTER_PORT"])


@pytest.mark.parametrize("value_set", INDEXED_SETS)
def test_should_pass_the_trainer_config_when_the_pod_environment_is_loaded(value_set: str) -> None:
    """trainer.config fails on unknown TFSTACK_* names: the chart must set only names it knows."""
    rendered = render(value_set)
    env = {**env_of(containers(rendered.one(TEMPLATE))[0]), "JOB_COMPLETION_INDEX": "0"}
    config = trainer_config.load({}, env)
    assert config.model_name == rendered.values["model"]["name"]
    assert str(config.export_base) == rendered.values["storage"]["mountPath"]
    assert str(config.run_dir) == rendered.values["storage"]["mountPath"] + "/.runs"
    assert config.metrics_port == rendered.values["trainer"]["containerPorts"]["metrics"]
    assert config.max_trials == rendered.values["trainer"]["search"]["maxTrials"]


def test_should_run_n_indexed_completions_when_workers_is_set() -> None:
    job = render("gpus").one(TEMPLATE)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert containers(job)[0]["args"] == ["search"]


def test_should_retry_per_index_and_ignore_disruptions_when_pods_fail() -> None:
    spec = render("defaults").one(TEMPLATE)["spec"]
    assert spec["backoffLimitPerIndex"] == 3
    assert spec["maxFailedIndexes"] == 0
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailIndex" and rules[1]["onExitCodes"]["values"] == [2]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy


def test_should_request_gpus_and_place_pods_when_gpus_per_worker_is_set() -> None:
    job = render("gpus").one(TEMPLATE)
    spec = pod_spec(job)
    resources = containers(job)[0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["limits"]["memory"] == "8Gi"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "podAntiAffinity" in spec["affinity"]
    assert job["spec"]["activeDeadlineSeconds"] == 86400
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600


def test_should_request_no_gpu_when_gpus_per_worker_is_zero() -> None:
    resources = containers(render("defaults").one(TEMPLATE))[0]["resources"]
    assert not any("gpu" in name for name in resources.get("limits", {}))


def test_should_mount_the_data_claim_read_only_when_data_volume_is_set() -> None:
    job = render("gpus").one(TEMPLATE)
    container = containers(job)[0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
    assert mount == {"name": "data", "mountPath": "/data", "readOnly": True}
    volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == "data")
    assert volume["persistentVolumeClaim"] == {"claimName": "images", "readOnly": True}
    assert env_of(container)["TFSTACK_DATA"] == "/data/images"


def test_should_train_on_embedded_digits_when_data_is_not_set() -> None:
    assert "TFSTACK_DATA" not in env_of(containers(render("defaults").one(TEMPLATE))[0])


@pytest.mark.parametrize("value_set", INDEXED_SETS)
def test_should_run_restricted_when_security_contexts_are_default(value_set: str) -> None:
    assert restricted_violations(pod_spec(render(value_set).one(TEMPLATE))) == []


def test_should_mount_the_export_claim_and_writable_scratch_when_root_fs_is_read_only() -> None:
    job = render("existing_claim").one(TEMPLATE)
    mounts = {m["mountPath"]: m for m in containers(job)[0]["volumeMounts"]}
    assert "readOnly" not in mounts["/models"]
    assert {"/tmp", "/dev/shm"} <= set(mounts)
    claim = next(v for v in pod_spec(job)["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert claim["claimName"] == "shared-models"


def test_should_render_no_job_when_trainer_is_disabled_or_tfjob_mode_is_set() -> None:
    assert render("serving_only").by_template(TEMPLATE) == []
    assert render("tfjob").by_template(TEMPLATE) == []


def test_should_pin_the_image_by_digest_when_trainer_image_digest_is_set() -> None:
    digest = "sha256:" + "0" * 64
    job = render_values({"trainer": {"image": {"registry": "ghcr.io", "repository": "acme/trainer",
                                                "digest": digest}}}).one(TEMPLATE)
    assert containers(job)[0]["image"] == f"ghcr.io/acme/trainer@{digest}"


def test_should_give_keras_a_writable_home_with_the_baked_weights_when_root_fs_is_read_only() -> None:
    spec = pod_spec(render("defaults").one(TEMPLATE))
    (init,) = spec["initContainers"]
    assert init["image"] == spec["containers"][0]["image"]
    assert init["command"] == ["sh", "-c", "cp -R /opt/keras/. /keras-cache/"]
    assert {"name": "keras", "mountPath": "/keras-cache"} in init["volumeMounts"]
    assert {"name": "keras", "mountPath": "/opt/keras"} in spec["containers"][0]["volumeMounts"]
    assert {"name": "keras", "emptyDir": {}} in spec["volumes"]
