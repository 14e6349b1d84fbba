"""Role resolution: TF_CONFIG, Kubernetes Indexed Job, single process, and every invalid input."""

from __future__ import annotations

import json
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
