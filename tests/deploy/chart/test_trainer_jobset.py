"""templates/trainer-jobset.yaml: the JobSet (jobset mode, the default for more than one worker).

Every pod's environment is fed to the trainer's own resolver with the names JobSet gives its pods
(kubernetes-sigs/jobset v0.12.0: child Job "<jobset>-<replicatedJob>-<jobIndex>", placement.GenJobName;
pod hostname "<job>-<index>", as for any Indexed Job; subdomain spec.network.subdomain, default the
JobSet's name, GetSubdomain; a headless Service of that name when network.enableDNSHostnames), and
failures are played through JobSet's failure policy (tests/deploy/failure_policy.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.failure_policy import DISRUPTED, JobSetRun, exit
from tests.deploy.rendering import (
    NAMESPACE,
    VALUE_SETS,
    containers,
    env_of,
    pod_spec,
    render,
    render_values,
    restricted_violations,
)
from tests.deploy.trainer_contract import EXIT_CODES
from trainer import config as trainer_config
from trainer.cluster import resolve

TEMPLATE = "trainer-jobset.yaml"
JOBSET_SETS = [name for name in VALUE_SETS if render(name).by_template(TEMPLATE)]


def _pod_names(jobset: dict[str, Any]) -> tuple[str, list[str]]:
    """JobSet's naming, from the JobSet's own fields: (subdomain, pod hostnames in index order)."""
    (replicated_job,) = jobset["spec"]["replicatedJobs"]
    assert replicated_job["replicas"] == 1, "one child Job holds the whole group"
    network = jobset["spec"].get("network", {})
    assert network.get("enableDNSHostnames", True) is True  # the webhook's default, stated
    subdomain = network.get("subdomain") or jobset["metadata"]["name"]
    child_job = f"{jobset['metadata']['name']}-{replicated_job['name']}-0"
    completions = replicated_job["template"]["spec"]["completions"]
    return subdomain, [f"{child_job}-{index}" for index in range(completions)]


def test_should_cover_the_jobset_in_several_value_sets() -> None:
    assert {"defaults", "jobset", "gpus"} <= set(JOBSET_SETS)


@pytest.mark.parametrize("value_set", JOBSET_SETS)
def test_should_resolve_every_pod_to_its_rank_and_the_hostnames_jobset_gives_when_rendered(value_set: str) -> None:
    rendered = render(value_set)
    jobset = rendered.one(TEMPLATE)
    workers = rendered.values["trainer"]["workers"]
    port = rendered.values["trainer"]["containerPorts"]["cluster"]
    subdomain, hostnames = _pod_names(jobset)
    assert len(hostnames) == workers
    expected = tuple(f"{host}.{subdomain}.{NAMESPACE}.svc.cluster.local:{port}" for host in hostnames)
    env = env_of(containers(jobset)[0])
    for index in range(workers):
        cluster = resolve({**env, "JOB_COMPLETION_INDEX": str(index)})  # set by Kubernetes in Indexed Jobs
        assert cluster.peers == expected
        assert cluster.rank == index and cluster.is_chief == (index == 0)
    assert network_ready(jobset)
    config = trainer_config.load({}, {**env, "JOB_COMPLETION_INDEX": "0"})
    assert config.model_name == rendered.values["model"]["name"]


def network_ready(jobset: dict[str, Any]) -> bool:
    """Workers resolve each other before any is ready (publishNotReadyAddresses), and the container's
    cluster port is the one in the peers' addresses."""
    env = env_of(containers(jobset)[0])
    port = next(p for p in containers(jobset)[0]["ports"] if p["name"] == "cluster")["containerPort"]
    return jobset["spec"]["network"].get("publishNotReadyAddresses", True) is True and port == int(
        env["TFSTACK_CLUSTER_PORT"])


@pytest.mark.parametrize(
    ("values", "workers"),
    [({"fullnameOverride": "a" * 40, "trainer": {"workers": 1000, "runId": "abcdefgh"}}, 1000),
     ({"nameOverride": "n" * 63, "trainer": {"workers": 1000}}, 1000)],
    ids=["long-fullname-and-run-id", "long-name-override"],
)
def test_should_pass_jobset_name_length_validation_when_names_are_long(values, workers: int) -> None:
    """jobset_webhook.go (v0.12.0): "<jobset>-<replicatedJob>-<jobIndex>-<podIndex>-abcde" must be a
    DNS-1035 label of at most 63 characters."""
    jobset = render_values(values).one(TEMPLATE)
    _, hostnames = _pod_names(jobset)
    longest = f"{hostnames[-1]}-abcde"
    assert len(longest) <= 63, longest
    assert len(hostnames) == workers


# -- failures, under the trainer's exit-code contract -----------------------------------------------------

@pytest.mark.parametrize("code", ["badInput", "notPublished"])
def test_should_fail_the_jobset_at_once_when_a_worker_exits_do_not_retry(code: str) -> None:
    run = JobSetRun(render("defaults").one(TEMPLATE))
    assert run.pod_failed("worker", 1, exit(EXIT_CODES[code])) == "failed"
    assert run.restarts == 0


@pytest.mark.parametrize("failure", [exit(EXIT_CODES["crash"]), exit(EXIT_CODES["peerLost"]), DISRUPTED,
                                     exit(137)], ids=["crash", "peer-lost", "disrupted", "oom-killed"])
def test_should_restart_the_whole_group_when_any_worker_fails_otherwise(failure) -> None:
    jobset = render("defaults").one(TEMPLATE)
    run = JobSetRun(jobset)
    assert run.pod_failed("worker", 1, failure) == "restart"  # every child Job recreated
    assert run.restarts == 1
    assert jobset["spec"]["failurePolicy"]["restartStrategy"] == "BlockingRecreate"


@pytest.mark.parametrize("value_set", JOBSET_SETS)
def test_should_fail_after_max_restarts_when_workers_keep_failing(value_set: str) -> None:
    rendered = render(value_set)
    run = JobSetRun(rendered.one(TEMPLATE))
    max_restarts = rendered.values["trainer"]["maxRestarts"]
    outcomes = [run.pod_failed("worker", 0, exit(EXIT_CODES["crash"])) for _ in range(max_restarts + 1)]
    assert outcomes == ["restart"] * max_restarts + ["failed"]


def test_should_fail_the_jobset_when_an_attempt_exceeds_its_deadline() -> None:
    jobset = render("jobset").one(TEMPLATE)
    (replicated_job,) = jobset["spec"]["replicatedJobs"]
    assert replicated_job["template"]["spec"]["activeDeadlineSeconds"] == 43200
    assert JobSetRun(jobset).job_failure_action("worker", "DeadlineExceeded") == "FailJobSet"
    default = render("defaults").one(TEMPLATE)["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert "activeDeadlineSeconds" not in default


# -- lifecycle and scheduling ---------------------------------------------------------------------------

def test_should_name_the_search_by_run_id_and_delete_it_after_the_ttl_when_rendered() -> None:
    rendered = render("jobset")
    jobset = rendered.one(TEMPLATE)
    assert jobset["metadata"]["name"] == "digits-tfstack-trainer-r2"
    assert jobset["spec"]["ttlSecondsAfterFinished"] == rendered.values["trainer"]["ttlSecondsAfterFinished"] > 0


def test_should_carry_the_gang_scheduling_hooks_when_they_are_set() -> None:
    jobset = render("jobset").one(TEMPLATE)
    assert jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    spec = pod_spec(jobset)
    assert (spec["priorityClassName"], spec["schedulerName"]) == ("training", "volcano")
    assert jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["metadata"]["labels"]["team"] == "vision"
    default_spec = pod_spec(render("defaults").one(TEMPLATE))
    assert not {"priorityClassName", "schedulerName", "runtimeClassName"} & set(default_spec)


def test_should_request_gpus_and_place_pods_when_gpus_per_worker_is_set() -> None:
    jobset = render("gpus").one(TEMPLATE)
    spec = pod_spec(jobset)
    resources = containers(jobset)[0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["limits"]["memory"] == "8Gi"
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "podAntiAffinity" in spec["affinity"]


def test_should_mount_the_data_claim_read_only_when_data_volume_is_set() -> None:
    jobset = render("gpus").one(TEMPLATE)
    container = containers(jobset)[0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
    assert mount == {"name": "data", "mountPath": "/data", "readOnly": True}
    volume = next(v for v in pod_spec(jobset)["volumes"] if v["name"] == "data")
    assert volume["persistentVolumeClaim"] == {"claimName": "images", "readOnly": True}
    assert env_of(container)["TFSTACK_DATA"] == "/data/images"


@pytest.mark.parametrize("value_set", JOBSET_SETS)
def test_should_run_restricted_when_security_contexts_are_default(value_set: str) -> None:
    spec = pod_spec(render(value_set).one(TEMPLATE))
    assert restricted_violations(spec) == []
    assert spec["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert "subdomain" not in spec  # JobSet sets it (GetSubdomain)
