"""templates/trainer-jobset.yaml: the JobSet (jobset mode, the default for more than one worker).

Every pod's environment is fed to the trainer's own resolver with the names JobSet gives its pods
(kubernetes-sigs/jobset v0.12.0: child Job "<jobset>-<replicatedJob>-<jobIndex>", placement.GenJobName;
pod hostname "<job>-<index>", as for any Indexed Job; subdomain spec.network.subdomain, default the
JobSet's name, GetSubdomain; a headless Service of that name when network.enableDNSHostnames), and
failures are played through JobSet's failure policy (tests/deploy/failure_policy.py). With trainer.groups
> 1 every pod JobSet would create (tests/deploy/pods.py) is resolved by the trainer
(tests/deploy/trainer_contract.py, resolve_search)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.failure_policy import DISRUPTED, JobSetRun, PodFailure, WebhookRefused, exit
from tests.deploy.pods import workload_pods
from tests.deploy.rendering import (
    NAMESPACE,
    VALUE_SETS,
    containers,
    env_of,
    one_group_sets,
    pod_spec,
    render,
    render_values,
    restricted_violations,
)
from tests.deploy.trainer_contract import EXIT_CODES, load_config, resolve_search
from trainer.cluster import resolve

TEMPLATE = "trainer-jobset.yaml"
#: One group (trainer.groups = 1, no oracle); groups are tested in the group tests below.
JOBSET_SETS = one_group_sets(TEMPLATE)


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
    config = load_config({**env, "JOB_COMPLETION_INDEX": "0"})
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


@pytest.mark.parametrize("failure", [exit(EXIT_CODES["crash"]), exit(EXIT_CODES["peerLost"]), exit(137)],
                         ids=["crash", "peer-lost", "oom-killed"])
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


@pytest.mark.parametrize("value_set", JOBSET_SETS)
def test_should_restart_outside_max_restarts_when_workers_are_disrupted(value_set: str) -> None:
    """A drained, preempted or evicted worker (DisruptionTarget), whatever it exits with (137 when killed,
    4 once the trainer has saved on SIGTERM), restarts the group without using up maxRestarts, however
    often; a crash afterwards still counts, and exits 2 and 3 still fail at once."""
    rendered = render(value_set)
    run = JobSetRun(rendered.one(TEMPLATE))
    max_restarts = rendered.values["trainer"]["maxRestarts"]
    for attempt in range(max_restarts + 2):
        failure = PodFailure({"tensorflow": (137, EXIT_CODES["peerLost"])[attempt % 2]}, ("DisruptionTarget",))
        assert run.pod_failed("worker", attempt % 2, failure) == "restart"
        assert run.reason == "FailurePolicy_disrupted"
    assert (run.restarts, run.total_restarts_counted) == (max_restarts + 2, 0)
    assert run.pod_failed("worker", 0, exit(EXIT_CODES["crash"])) == "restart"
    assert run.total_restarts_counted == 1
    assert run.pod_failed("worker", 1, exit(EXIT_CODES["badInput"])) == "failed"
    assert run.reason == "FailJobSetFailurePolicyAction"


def test_should_count_the_restart_when_a_peer_fails_before_the_disrupted_worker_has_ended() -> None:
    """The known gap (docs/deploy.md): the child Job fails with its first failed pod. When a peer that
    lost the disrupted worker exits 4 before the disrupted pod is terminal, the Job fails with
    BackoffLimitExceeded and the restart counts."""
    run = JobSetRun(render("defaults").one(TEMPLATE))
    assert run.pod_failed("worker", 0, exit(EXIT_CODES["peerLost"])) == "restart"
    assert run.total_restarts_counted == 1 and run.reason == "FailurePolicy_restartGroup"


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


# -- parallel trials: trainer.groups = G > 1 -------------------------------------------------------------

GROUP_SETS = [name for name in VALUE_SETS if render(name).by_template(TEMPLATE)
              and render(name).values["trainer"]["groups"] > 1]


def test_should_cover_groups_of_workers_in_a_value_set() -> None:
    assert GROUP_SETS == ["groups"]


@pytest.mark.parametrize(("groups", "workers"), [(3, 2), (2, 1), (1, 2), (1, 3)], ids=["3x2", "2x1", "1x2", "1x3"])
def test_should_give_every_pod_its_group_rank_peers_and_oracle_when_groups_of_workers_are_set(
    groups: int, workers: int
) -> None:
    """Every pod JobSet creates (child Job "<jobset>-<replicatedJob>-<j>", its job-index annotation, the
    Indexed Job's completion index and hostname, the JobSet's subdomain) resolved by the trainer."""
    rendered = render_values({"trainer": {"mode": "jobset", "groups": groups, "workers": workers}})
    jobset = rendered.one(TEMPLATE)
    pods = workload_pods(jobset)
    assert len(pods) == groups * workers + (groups > 1)
    search = resolve_search(pods)
    assert {g: len(members) for g, members in search.groups.items()} == dict.fromkeys(range(groups), workers)
    for group, members in search.groups.items():
        assert {pod.job for pod, _ in members} == {f"{jobset['metadata']['name']}-worker-{group}"}
    if groups > 1:
        ((oracle, _),) = search.oracles
        assert oracle.hostname == f"{jobset['metadata']['name']}-oracle-0-0"
        assert oracle.replicated_job == "oracle" and network_ready(jobset)


def test_should_render_one_group_exactly_as_before_when_groups_is_one() -> None:
    jobset = render("defaults").one(TEMPLATE)
    assert [rj["name"] for rj in jobset["spec"]["replicatedJobs"]] == ["worker"]
    env = env_of(containers(jobset)[0])
    assert not {"TFSTACK_ROLE", "TFSTACK_GROUPS", "TFSTACK_GROUP", "TFSTACK_ORACLE"} & set(env)
    assert env["TFSTACK_CLUSTER_JOB_NAME"] == f"{jobset['metadata']['name']}-worker-0"
    assert [rule["action"] for rule in jobset["spec"]["failurePolicy"]["rules"]] == [
        "RestartJobSetAndIgnoreMaxRestarts", "FailJobSet", "RestartJobSet"]
    assert not any("targetReplicatedJobs" in rule for rule in jobset["spec"]["failurePolicy"]["rules"])


def test_should_run_the_oracle_without_gpu_and_on_its_own_nodes_when_groups_are_set() -> None:
    jobset = render("groups").one(TEMPLATE)
    (workers, oracle) = jobset["spec"]["replicatedJobs"]
    assert (workers["name"], workers["replicas"], oracle["name"], oracle["replicas"]) == ("worker", 3, "oracle", 1)
    assert oracle["template"]["spec"]["completionMode"] == "Indexed"  # a stable hostname "<job>-0"
    assert oracle["template"]["spec"]["completions"] == 1
    worker_spec = workers["template"]["spec"]["template"]["spec"]
    oracle_spec = oracle["template"]["spec"]["template"]["spec"]
    (container,) = oracle_spec["containers"]
    assert container["args"] == ["search"] and container["image"] == worker_spec["containers"][0]["image"]
    assert not any("gpu" in name for part in container["resources"].values() for name in part)
    assert worker_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"] == render("groups").values["trainer"]["oracle"]["resources"]
    assert oracle_spec["nodeSelector"] == {"pool": "cpu"} and "tolerations" not in oracle_spec
    assert "runtimeClassName" not in oracle_spec and worker_spec["runtimeClassName"] == "nvidia"
    assert oracle_spec["priorityClassName"] == worker_spec["priorityClassName"] == "training"
    assert restricted_violations(oracle_spec) == [] and oracle_spec["restartPolicy"] == "Never"
    assert {p["name"] for p in container["ports"]} == {"oracle", "metrics"}


@pytest.mark.parametrize(
    ("values", "workers"),
    [({"fullnameOverride": "a" * 40, "trainer": {"workers": 1000, "groups": 10, "runId": "abcdefgh"}}, 1000),
     ({"fullnameOverride": "a" * 40, "trainer": {"workers": 1000, "groups": 1024, "runId": "abcdefgh"}}, 1000),
     ({"nameOverride": "n" * 63, "trainer": {"workers": 999, "groups": 100}}, 999)],
    ids=["10-groups", "1024-groups", "100-groups-long-name-override"],
)
def test_should_pass_jobset_name_length_validation_when_there_are_many_groups(values, workers: int) -> None:
    """jobset_webhook.go (v0.12.0): for every replicatedJob, "<jobset>-<rj>-<last job>-<last pod>-abcde"
    must be a DNS-1035 label of at most 63 characters."""
    jobset = render_values(values).one(TEMPLATE)
    for rj in jobset["spec"]["replicatedJobs"]:
        last_job, last_pod = rj["replicas"] - 1, rj["template"]["spec"]["completions"] - 1
        longest = f"{jobset['metadata']['name']}-{rj['name']}-{last_job}-{last_pod}-abcde"
        assert len(longest) <= 63, longest
    assert jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["completions"] == workers


def _groups_run(values: dict | None = None, **kwargs) -> JobSetRun:
    jobset = render_values(values).one(TEMPLATE) if values is not None else render("groups").one(TEMPLATE)
    return JobSetRun(jobset, **kwargs)


@pytest.mark.parametrize("code", ["badInput", "notPublished"])
@pytest.mark.parametrize(("replicated_job", "job"), [("worker", 1), ("oracle", 0)], ids=["worker", "oracle"])
def test_should_fail_the_jobset_at_once_when_any_pod_of_the_search_exits_do_not_retry(
    code: str, replicated_job: str, job: int
) -> None:
    run = _groups_run()
    assert run.pod_failed(replicated_job, 0, exit(EXIT_CODES[code]), job=job) == "failed"
    assert run.total_restarts_counted == 0


@pytest.mark.parametrize("failure", [exit(EXIT_CODES["crash"]), exit(EXIT_CODES["peerLost"]), exit(137)],
                         ids=["crash", "peer-lost", "oom-killed"])
def test_should_restart_only_that_group_when_a_worker_of_one_group_fails(failure) -> None:
    run = _groups_run()
    assert run.pod_failed("worker", 1, failure, job=2) == "restart-job"
    assert run.attempts == {("worker", 0): 1, ("worker", 1): 1, ("worker", 2): 2, ("oracle", 0): 1}
    assert (run.restarts, run.total_restarts_counted) == (0, 1)  # RestartJob counts against maxRestarts


@pytest.mark.parametrize(("values", "group_alone"), [(None, True), ({"trainer": {"groups": 3, "workers": 2}}, False)],
                         ids=["groupRestart-job", "groupRestart-jobSet"])
def test_should_restart_outside_max_restarts_when_a_group_or_the_oracle_is_disrupted(values, group_alone) -> None:
    run = _groups_run(values)
    budget = run.jobset["spec"]["failurePolicy"]["maxRestarts"]
    for attempt in range(budget + 1):
        assert run.pod_failed("worker", 0, DISRUPTED, job=attempt % 3) == ("restart-job" if group_alone else "restart")
    assert run.pod_failed("oracle", 0, DISRUPTED) == "restart"
    assert run.total_restarts_counted == 0
    assert run.pod_failed("oracle", 0, exit(EXIT_CODES["notPublished"])) == "failed"


@pytest.mark.parametrize("failure", [exit(EXIT_CODES["crash"]), exit(EXIT_CODES["peerLost"]), exit(137)],
                         ids=["crash", "peer-lost", "oom-killed"])
def test_should_restart_the_whole_search_when_the_oracle_fails(failure) -> None:
    run = _groups_run()
    assert run.pod_failed("oracle", 0, failure) == "restart"
    assert set(run.attempts.values()) == {2}
    assert (run.restarts, run.total_restarts_counted) == (1, 1)


def test_should_restart_the_whole_search_once_when_the_oracle_and_the_groups_that_lost_it_fail_together() -> None:
    """The oracle's rule comes before the groups': whichever failed Job the controller sees first, one
    restart of everything, counted once."""
    run = _groups_run()
    run.pod_failed("worker", 0, exit(EXIT_CODES["crash"]), job=0, reconcile=False)  # lost the oracle first
    run.pod_failed("oracle", 0, exit(137), reconcile=False)
    run.pod_failed("worker", 1, exit(EXIT_CODES["crash"]), job=2, reconcile=False)
    assert run.reconcile() == "restart"
    assert set(run.attempts.values()) == {2} and run.total_restarts_counted == 1


def test_should_share_one_restart_budget_between_groups_and_oracle_when_failures_repeat() -> None:
    rendered = render("groups")
    run = JobSetRun(rendered.one(TEMPLATE))
    budget = rendered.values["trainer"]["maxRestarts"]
    outcomes = [run.pod_failed("worker", 0, exit(EXIT_CODES["peerLost"]), job=i % 3) for i in range(budget - 1)]
    outcomes.append(run.pod_failed("oracle", 0, exit(EXIT_CODES["crash"])))
    assert outcomes == ["restart-job"] * (budget - 1) + ["restart"]
    assert run.total_restarts_counted == budget
    assert run.pod_failed("worker", 0, exit(EXIT_CODES["crash"]), job=1) == "failed"


def test_should_complete_when_every_group_and_the_oracle_have_exited_zero() -> None:
    rendered = render("groups")
    run = JobSetRun(rendered.one(TEMPLATE))
    workers = rendered.values["trainer"]["workers"]
    run.pod_failed("worker", 1, exit(EXIT_CODES["crash"]), job=1)  # group 1 restarts once on the way
    outcomes = [run.pod_succeeded("worker", index, job=group) for group in range(3) for index in range(workers)]
    assert set(outcomes) == {"running"}  # the oracle is still evaluating and publishing
    assert run.pod_succeeded("oracle", 0) == "completed"
    assert rendered.one(TEMPLATE)["spec"]["successPolicy"] == {"operator": "All"}


def test_should_fail_the_jobset_when_an_oracle_or_group_attempt_exceeds_its_deadline() -> None:
    jobset = render("groups").one(TEMPLATE)
    for rj in jobset["spec"]["replicatedJobs"]:
        assert rj["template"]["spec"]["activeDeadlineSeconds"] == 86400
        assert JobSetRun(jobset).job_failure_action(rj["name"], "DeadlineExceeded") == "FailJobSet"


@pytest.mark.parametrize("values", [{"trainer": {"groups": 3, "workers": 2}},
                                    {"trainer": {"groups": 3, "workers": 2, "groupRestart": "jobSet"}}],
                         ids=["default", "jobSet"])
def test_should_restart_everything_when_group_restart_is_jobset(values: dict) -> None:
    """trainer.groupRestart=jobSet, the default: a JobSet controller without the RestartJob feature gate accepts it."""
    run = _groups_run(values, restart_job_gate=False)
    assert run.pod_failed("worker", 0, exit(EXIT_CODES["peerLost"]), job=1) == "restart"
    assert set(run.attempts.values()) == {2}


def test_should_be_refused_by_a_jobset_without_the_restart_job_gate_when_group_restart_is_job() -> None:
    """pkg/webhooks/jobset_webhook.go (v0.12.0) refuses RestartJob unless the controller runs with
    --feature-gates=RestartJob=true (alpha, off by default: pkg/features/features.go)."""
    with pytest.raises(WebhookRefused, match="RestartJob feature gate is disabled"):
        _groups_run(restart_job_gate=False)
    JobSetRun(render("defaults").one(TEMPLATE), restart_job_gate=False)  # one group: no RestartJob
