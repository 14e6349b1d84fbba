"""Role resolution: TF_CONFIG, Kubernetes Indexed Job, single process, and every invalid input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from trainer.cluster import Cluster, local_tf_configs, resolve
from trainer.errors import ClusterError, ConfigError


def _tf_config(cluster: dict, task_type: str, index: int) -> dict[str, str]:
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}


def _indexed_job(index: int, workers: int = 3, **extra: str) -> dict[str, str]:
    env = {
        "JOB_COMPLETION_INDEX": str(index),
        "TFSTACK_CLUSTER_WORKERS": str(workers),
        "TFSTACK_CLUSTER_JOB_NAME": "digits-trainer",
        "TFSTACK_CLUSTER_SERVICE": "digits-trainer-workers",
        "TFSTACK_CLUSTER_PORT": "2222",
    }
    env.update(extra)
    return env


def test_single_process_when_nothing_is_set() -> None:
    cluster = resolve({"HOME": "/root"})
    assert cluster == Cluster(peers=(), rank=0, source="single")
    assert cluster.is_chief and cluster.num_workers == 1
    assert cluster.tf_config() is None


def test_tf_config_workers_only_makes_worker_zero_the_chief() -> None:
    spec = {"worker": ["w0:2222", "w1:2222", "w2:2222"]}
    clusters = [resolve(_tf_config(spec, "worker", i)) for i in range(3)]
    assert [c.rank for c in clusters] == [0, 1, 2]
    assert [c.is_chief for c in clusters] == [True, False, False]
    assert all(c.peers == ("w0:2222", "w1:2222", "w2:2222") and c.num_workers == 3 for c in clusters)
    assert clusters[1].tf_config() == {"cluster": spec, "task": {"type": "worker", "index": 1}}


def test_tf_config_with_a_chief_task_ranks_the_chief_first() -> None:
    spec = {"chief": ["c:2222"], "worker": ["w0:2222", "w1:2222"]}
    chief = resolve(_tf_config(spec, "chief", 0))
    worker1 = resolve(_tf_config(spec, "worker", 1))
    assert chief.is_chief and chief.rank == 0
    assert worker1.rank == 2 and not worker1.is_chief
    assert worker1.peers == ("c:2222", "w0:2222", "w1:2222")
    # What TensorFlow is given round-trips to what Kubeflow set.
    assert worker1.tf_config() == {"cluster": spec, "task": {"type": "worker", "index": 1}}
    assert resolve({"TF_CONFIG": json.dumps(chief.tf_config())}) == chief


def test_tf_config_takes_precedence_over_indexed_job_variables() -> None:
    env = {**_indexed_job(2), **_tf_config({"worker": ["a:1", "b:1"]}, "worker", 1)}
    assert resolve(env).source == "tf_config"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{not json", "Expected TF_CONFIG to be JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "'cluster'"),
        (json.dumps({"cluster": {"worker": ["a:1"]}}), "'task'"),
        (json.dumps({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}), "['ps']"),
        (json.dumps({"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}), "list of"),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}), "task.index=1"),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": -1}}), "task.index=-1"),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}), "integer"),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}), "task.index=0"),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "boss", "index": 0}}), "'boss'"),
        (json.dumps({"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}), "duplicates"),
        (json.dumps({"cluster": {"worker": ["hostonly"]}, "task": {"type": "worker", "index": 0}}), "'hostonly'"),
        (json.dumps({"cluster": {"worker": ["a:99999"]}, "task": {"type": "worker", "index": 0}}), "'a:99999'"),
        (json.dumps({"cluster": {"chief": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}}), "one chief"),
    ],
    ids=[
        "not-json", "not-object", "no-cluster", "no-task", "parameter-server", "worker-not-list",
        "index-out-of-range", "negative-index", "index-not-int", "chief-missing", "unknown-type",
        "duplicate-address", "missing-port", "port-out-of-range", "two-chiefs",
    ],
)
def test_invalid_tf_config_names_the_problem(raw: str, fragment: str) -> None:
    with pytest.raises(ClusterError, match=r"TF_CONFIG|Expected") as info:
        resolve({"TF_CONFIG": raw})
    assert fragment in str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_indexed_job_builds_headless_service_peers() -> None:
    clusters = [resolve(_indexed_job(i)) for i in range(3)]
    expected = tuple(f"digits-trainer-{i}.digits-trainer-workers:2222" for i in range(3))
    assert all(c.peers == expected and c.source == "indexed_job" for c in clusters)
    assert [c.is_chief for c in clusters] == [True, False, False]
    assert clusters[2].tf_config() == {"cluster": {"worker": list(expected)}, "task": {"type": "worker", "index": 2}}


def test_indexed_job_with_domain_uses_fully_qualified_names() -> None:
    cluster = resolve(_indexed_job(1, workers=2, TFSTACK_CLUSTER_DOMAIN="ml.svc.cluster.local."))
    assert cluster.peers[1] == "digits-trainer-1.digits-trainer-workers.ml.svc.cluster.local:2222"


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"JOB_COMPLETION_INDEX": "3"}, "JOB_COMPLETION_INDEX"),
        ({"JOB_COMPLETION_INDEX": "-1"}, "JOB_COMPLETION_INDEX"),
        ({"JOB_COMPLETION_INDEX": "one"}, "JOB_COMPLETION_INDEX"),
        ({"JOB_COMPLETION_INDEX": None}, "JOB_COMPLETION_INDEX"),
        ({"TFSTACK_CLUSTER_WORKERS": "0"}, "TFSTACK_CLUSTER_WORKERS"),
        ({"TFSTACK_CLUSTER_WORKERS": None}, "TFSTACK_CLUSTER_WORKERS"),
        ({"TFSTACK_CLUSTER_PORT": None}, "TFSTACK_CLUSTER_PORT"),
        ({"TFSTACK_CLUSTER_PORT": "70000"}, "TFSTACK_CLUSTER_PORT"),
        ({"TFSTACK_CLUSTER_SERVICE": ""}, "TFSTACK_CLUSTER_SERVICE"),
        ({"TFSTACK_CLUSTER_JOB_NAME": "Bad_Name"}, "TFSTACK_CLUSTER_JOB_NAME"),
    ],
    ids=[
        "index-out-of-range", "negative-index", "index-not-int", "index-missing", "zero-workers",
        "workers-missing", "port-missing", "port-out-of-range", "service-empty", "job-not-dns",
    ],
)
def test_invalid_indexed_job_names_the_variable(change: dict[str, str | None], variable: str) -> None:
    env = _indexed_job(0)
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    with pytest.raises(ClusterError) as info:
        resolve(env)
    assert variable in str(info.value)


def test_local_tf_configs_wire_loopback_workers() -> None:
    configs = local_tf_configs([5001, 5002])
    assert [c["task"] for c in configs] == [{"type": "worker", "index": 0}, {"type": "worker", "index": 1}]
    assert all(c["cluster"] == {"worker": ["127.0.0.1:5001", "127.0.0.1:5002"]} for c in configs)
    assert [resolve({"TF_CONFIG": json.dumps(c)}).is_chief for c in configs] == [True, False]
    with pytest.raises(ClusterError, match="duplicates"):
        local_tf_configs([5001, 5001])


def test_cluster_module_does_not_import_tensorflow() -> None:
    code = "import sys, trainer.cluster; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------ parallel trial groups

_GROUPS = {"TFSTACK_GROUPS": "3", "TFSTACK_ORACLE": "digits-trainer-oracle-0-0.digits-trainer:2223"}


def test_a_worker_of_a_group_talks_to_the_oracle_with_its_group_as_kerastuner_tuner_id() -> None:
    spec = {"worker": ["127.0.0.1:5000", "127.0.0.1:5001"]}
    clusters = [resolve({**_tf_config(spec, "worker", i), **_GROUPS, "TFSTACK_GROUP": "2"}) for i in range(2)]
    assert [(c.rank, c.group, c.groups, c.is_chief, c.publishes) for c in clusters] == [
        (0, 2, 3, True, False), (1, 2, 3, False, False)]
    # Every worker of a group shares one tuner id: KerasTuner's create_trial returns the group's ongoing
    # trial to each of them (keras_tuner/src/engine/oracle.py, "Allow for multi-worker DistributionStrategy").
    assert {c.tuner_id for c in clusters} == {"group2"}
    assert clusters[1].kerastuner_env() == {
        "KERASTUNER_ORACLE_IP": "digits-trainer-oracle-0-0.digits-trainer", "KERASTUNER_ORACLE_PORT": "2223",
        "KERASTUNER_TUNER_ID": "group2"}
    assert clusters[0].tf_config() == json.loads(_tf_config(spec, "worker", 0)["TF_CONFIG"])


def test_the_oracle_publishes_and_ignores_the_cluster_variables() -> None:
    cluster = resolve({**_indexed_job(1), **_GROUPS, "TFSTACK_ROLE": "oracle"})
    assert cluster.is_oracle and cluster.publishes and not cluster.is_chief
    assert cluster.peers == () and cluster.tf_config() is None
    assert cluster.tuner_id == "chief"  # KerasTuner's is_chief_oracle(): "chief" in KERASTUNER_TUNER_ID
    assert cluster.kerastuner_env() == {}  # else BaseTuner.search would run KerasTuner's own server loop


def test_one_group_needs_no_oracle_and_its_chief_publishes() -> None:
    for env in ({}, {"TFSTACK_GROUPS": "1"}, {"TFSTACK_GROUPS": "1", "TFSTACK_GROUP": "0"}):
        cluster = resolve({**_indexed_job(0), **env})
        assert (cluster.groups, cluster.group, cluster.oracle, cluster.publishes) == (1, 0, None, True)
        assert cluster.kerastuner_env() == {}


def test_indexed_job_group_names_its_own_child_job() -> None:
    """A JobSet child Job is <jobset>-<replicatedJob>-<job index>; pod i is <child job>-<i> (JobSet's naming)."""
    env = {**_indexed_job(1, workers=2, TFSTACK_CLUSTER_JOB_NAME="digits-trainer-workers"), **_GROUPS,
           "TFSTACK_GROUP": "2"}
    cluster = resolve(env)
    assert cluster.peers == ("digits-trainer-workers-2-0.digits-trainer-workers:2222",
                             "digits-trainer-workers-2-1.digits-trainer-workers:2222")
    assert (cluster.rank, cluster.group) == (1, 2)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"TFSTACK_ROLE": "evaluator"}, "TFSTACK_ROLE"),
        ({"TFSTACK_ROLE": "oracle"}, "TFSTACK_GROUPS > 1"),
        ({"TFSTACK_GROUPS": "0"}, "TFSTACK_GROUPS >= 1"),
        ({"TFSTACK_GROUPS": "two"}, "TFSTACK_GROUPS to be an integer"),
        ({"TFSTACK_GROUPS": "2", "TFSTACK_GROUP": "0"}, "TFSTACK_ORACLE"),
        ({"TFSTACK_GROUPS": "2", "TFSTACK_ORACLE": "oracle:2223"}, "TFSTACK_GROUP (this worker's group"),
        ({"TFSTACK_GROUPS": "2", "TFSTACK_ORACLE": "oracle:2223", "TFSTACK_GROUP": "2"}, "TFSTACK_GROUP in [0, 1]"),
        ({"TFSTACK_GROUPS": "2", "TFSTACK_ORACLE": "oracle", "TFSTACK_GROUP": "0"}, "TFSTACK_ORACLE"),
        ({"TFSTACK_GROUP": "1"}, "TFSTACK_GROUP in [0, 0]"),
    ],
)
def test_invalid_group_settings_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ClusterError, match=re.escape(fragment)):
        resolve(env)
