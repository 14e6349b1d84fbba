"""templates/trainer-job.yaml: the Indexed Job (indexedJob mode, and the default for one worker), checked
against the trainer's own role resolver and, for failures, against what Kubernetes does with its pod
failure policy (tests/deploy/failure_policy.py) under the trainer's exit-code contract."""

from __future__ import annotations

import pytest

from tests.deploy.failure_policy import DISRUPTED, IndexedJobRun, exit
from tests.deploy.pods import indexed_job_pods
from tests.deploy.rendering import (
    NAMESPACE,
    containers,
    env_of,
    one_group_sets,
    pod_spec,
    render,
    render_values,
    restricted_violations,
    trainer_workload,
)
from tests.deploy.trainer_contract import EXIT_CODES, load_config, resolve_search
from trainer.cluster import resolve

TEMPLATE = "trainer-job.yaml"
#: One group (trainer.groups = 1, no oracle); groups are tested in the group tests below and test_trainer_oracle_job.py.
INDEXED_SETS = one_group_sets(TEMPLATE)


def test_should_cover_the_indexed_job_in_several_value_sets() -> None:
    assert {"indexed_job", "single_worker", "existing_claim", "monitoring"} <= set(INDEXED_SETS)


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
    config = load_config(env)
    assert config.model_name == rendered.values["model"]["name"]
    assert str(config.export_base) == rendered.values["storage"]["mountPath"]
    assert str(config.run_dir) == rendered.values["storage"]["mountPath"] + "/.runs"
    assert config.metrics_port == rendered.values["trainer"]["containerPorts"]["metrics"]
    assert config.max_trials == rendered.values["trainer"]["search"]["maxTrials"]


@pytest.mark.parametrize(
    ("values", "kind"),
    [({}, "JobSet"), ({"trainer": {"workers": 1}}, "Job"), ({"trainer": {"mode": "indexedJob"}}, "Job"),
     ({"trainer": {"mode": "jobset", "workers": 1}}, "JobSet"), ({"trainer": {"mode": "tfjob"}}, "TFJob"),
     ({"trainer": {"workers": 1, "groups": 2}}, "JobSet")],
    ids=["default-2-workers", "default-1-worker", "indexed-job", "jobset-1-worker", "tfjob", "default-2-groups-of-1"],
)
def test_should_pick_the_workload_kind_when_mode_and_workers_are_set(values, kind: str) -> None:
    assert trainer_workload(render_values(values))["kind"] == kind


def test_should_run_n_indexed_completions_when_workers_is_set() -> None:
    job = render("indexed_job").one(TEMPLATE)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert containers(job)[0]["args"] == ["search"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "cpu-queue"


# -- failures, under the trainer's exit-code contract -----------------------------------------------------

@pytest.mark.parametrize("code", ["badInput", "notPublished"])
def test_should_fail_the_job_at_once_when_a_worker_exits_do_not_retry(code: str) -> None:
    run = IndexedJobRun(render("indexed_job").one(TEMPLATE)["spec"])
    run.pod_failed(1, exit(EXIT_CODES[code]))
    assert run.failed == "PodFailurePolicy"


def test_should_count_one_retry_per_incident_when_a_worker_dies_and_its_peers_exit_peer_lost() -> None:
    """One pod crashes; the survivors see the lost peer and exit with the peer-lost code: every index is
    recreated (a group restart) and only the crashed index uses a retry."""
    spec = render("indexed_job").one(TEMPLATE)["spec"]
    run = IndexedJobRun(spec)
    limit = spec["backoffLimitPerIndex"]
    for _incident in range(limit):
        assert run.pod_failed(2, exit(EXIT_CODES["crash"])) == "Count"
        assert [run.pod_failed(i, exit(EXIT_CODES["peerLost"])) for i in (0, 1)] == ["Ignore", "Ignore"]
        assert run.failed is None
    assert run.counted == {2: limit}
    run.pod_failed(2, exit(EXIT_CODES["crash"]))
    assert run.failed == "MaxFailedIndexesExceeded"  # synchronous training needs every rank


def test_should_never_fail_the_job_when_workers_only_exit_peer_lost_or_are_disrupted() -> None:
    spec = render("indexed_job").one(TEMPLATE)["spec"]
    run = IndexedJobRun(spec)
    for _ in range(20):
        run.pod_failed(0, exit(EXIT_CODES["peerLost"]))
        run.pod_failed(1, DISRUPTED)
    assert run.failed is None and run.counted == {}


@pytest.mark.parametrize("value_set", INDEXED_SETS)
def test_should_bound_the_run_when_peer_lost_exits_are_not_counted(value_set: str) -> None:
    """Ignored peer-lost exits could repeat for ever (a chief retry whose peers already completed, a pod
    that never schedules): the Job always has a deadline in this mode."""
    rendered = render(value_set)
    spec = rendered.one(TEMPLATE)["spec"]
    trainer = rendered.values["trainer"]
    expected = trainer.get("activeDeadlineSeconds") or trainer["indexedJobDeadlineSeconds"]
    assert spec["activeDeadlineSeconds"] == expected > 0
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy


def test_should_use_the_deadline_and_ttl_values_when_they_are_set() -> None:
    spec = render_values({"trainer": {"mode": "indexedJob", "activeDeadlineSeconds": 600,
                                      "ttlSecondsAfterFinished": 60}}).one(TEMPLATE)["spec"]
    assert (spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (600, 60)
    assert "ttlSecondsAfterFinished" not in render_values(
        {"trainer": {"mode": "indexedJob", "ttlSecondsAfterFinished": None}}).one(TEMPLATE)["spec"]


# -- pods ---------------------------------------------------------------------------------------------------

def test_should_request_no_gpu_when_gpus_per_worker_is_zero() -> None:
    resources = containers(render("indexed_job").one(TEMPLATE))[0]["resources"]
    assert not any("gpu" in name for name in resources.get("limits", {}))


def test_should_train_on_embedded_digits_when_data_is_not_set() -> None:
    assert "TFSTACK_DATA" not in env_of(containers(render("indexed_job").one(TEMPLATE))[0])


def test_should_leave_the_batch_to_the_trainer_unless_batch_size_is_set() -> None:
    """batchSize null (default) sets no TFSTACK_BATCH_SIZE: the trainer picks 32, or less on a small folder."""
    default = env_of(containers(render("indexed_job").one(TEMPLATE))[0])
    assert "TFSTACK_BATCH_SIZE" not in default and load_config(default).batch_size is None
    pinned = env_of(containers(render_values({"trainer": {"mode": "indexedJob", "search": {"batchSize": 16}}})
                               .one(TEMPLATE))[0])
    assert load_config(pinned).batch_size == 16


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


def test_should_render_no_job_when_trainer_is_disabled_or_another_mode_is_set() -> None:
    assert render("serving_only").by_template(TEMPLATE) == []
    assert render("tfjob").by_template(TEMPLATE) == []
    assert render("defaults").by_template(TEMPLATE) == []


def test_should_pin_the_image_by_digest_when_trainer_image_digest_is_set() -> None:
    digest = "sha256:" + "0" * 64
    image = {"registry": "ghcr.io", "repository": "acme/trainer", "digest": digest}
    job = render_values({"trainer": {"mode": "indexedJob", "image": image}}).one(TEMPLATE)
    assert containers(job)[0]["image"] == f"ghcr.io/acme/trainer@{digest}"


def test_should_give_keras_a_writable_home_with_the_baked_weights_when_root_fs_is_read_only() -> None:
    spec = pod_spec(render("indexed_job").one(TEMPLATE))
    (init,) = spec["initContainers"]
    assert init["image"] == spec["containers"][0]["image"]
    assert init["command"] == ["sh", "-c", "cp -R /opt/keras/. /keras-cache/"]
    assert {"name": "keras", "mountPath": "/keras-cache"} in init["volumeMounts"]
    assert {"name": "keras", "mountPath": "/opt/keras"} in spec["containers"][0]["volumeMounts"]
    assert {"name": "keras", "emptyDir": {}} in spec["volumes"]


# -- parallel trials: trainer.groups = G > 1 -------------------------------------------------------------

@pytest.mark.parametrize(("groups", "workers"), [(3, 2), (2, 1), (1, 3)], ids=["3x2", "2x1", "1x3"])
def test_should_give_every_pod_its_group_rank_peers_and_oracle_when_groups_of_workers_are_set(
    groups: int, workers: int
) -> None:
    rendered = render_values({"trainer": {"mode": "indexedJob", "groups": groups, "workers": workers}})
    jobs = rendered.by_template(TEMPLATE) + rendered.by_template("trainer-oracle-job.yaml")
    pods = [pod for job in jobs for pod in indexed_job_pods(job)]
    assert len(pods) == groups * workers + (groups > 1)
    search = resolve_search(pods)
    name = "digits-tfstack-trainer"
    expected_jobs = [f"{name}-{g}" for g in range(groups)] if groups > 1 else [name]
    assert [job["metadata"]["name"] for job in rendered.by_template(TEMPLATE)] == expected_jobs
    assert {g: members[0][0].job for g, members in search.groups.items()} == dict(enumerate(expected_jobs))
    for job in rendered.by_template(TEMPLATE):
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == workers


def test_should_set_each_jobs_group_literally_when_groups_are_set() -> None:
    for group, job in enumerate(render("groups_indexed_job").by_template(TEMPLATE)):
        env = env_of(containers(job)[0])
        assert (env["TFSTACK_GROUP"], env["TFSTACK_GROUPS"], env["TFSTACK_ROLE"]) == (str(group), "3", "worker")
        assert job["metadata"]["name"].endswith(f"-p3-{group}")


def test_should_handle_each_groups_failures_in_its_own_job_when_groups_are_set() -> None:
    """No Job restarts another: a group's crash restarts that group alone (its peers exit peer-lost, which
    is ignored), and a do-not-retry exit fails that group's Job only. Documented (docs/deploy.md): the
    oracle's failure does not restart the groups, and the deadline bounds every Job; JobSet does both."""
    jobs = render("groups_indexed_job").by_template(TEMPLATE)
    runs = [IndexedJobRun(job["spec"]) for job in jobs]
    assert runs[1].pod_failed(0, exit(EXIT_CODES["crash"])) == "Count"
    assert runs[1].pod_failed(1, exit(EXIT_CODES["peerLost"])) == "Ignore"
    runs[2].pod_failed(1, exit(EXIT_CODES["badInput"]))
    assert [run.failed for run in runs] == [None, None, "PodFailurePolicy"]
    assert all(job["spec"]["activeDeadlineSeconds"] > 0 for job in jobs)


def test_should_name_the_oracle_port_on_the_headless_service_only_when_groups_are_set() -> None:
    ports = {p["name"] for p in render("groups_indexed_job").one("trainer-headless-service.yaml")["spec"]["ports"]}
    assert ports == {"cluster", "metrics", "oracle"}
    assert {p["name"] for p in render("indexed_job").one("trainer-headless-service.yaml")["spec"]["ports"]} == {
        "cluster", "metrics"}
