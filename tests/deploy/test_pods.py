"""tests/deploy/pods.py, the model of the pods Kubernetes and JobSet create, against the behaviour the
Kubernetes and JobSet documentation and sources describe (its docstring cites them)."""

from __future__ import annotations

import pytest

from tests.deploy.pods import container_env, expand, indexed_job_pods, jobset_child_jobs, workload_pods


def test_should_expand_dependent_variables_as_the_kubernetes_docs_example_does() -> None:
    """Kubernetes docs, "Define Dependent Environment Variables": the example's env and its printed result."""
    container = {"env": [
        {"name": "SERVICE_PORT", "value": "80"},
        {"name": "SERVICE_IP", "value": "172.17.0.1"},
        {"name": "UNCHANGED_REFERENCE", "value": "$(PROTOCOL)://$(SERVICE_IP):$(SERVICE_PORT)"},
        {"name": "PROTOCOL", "value": "https"},
        {"name": "SERVICE_ADDRESS", "value": "$(PROTOCOL)://$(SERVICE_IP):$(SERVICE_PORT)"},
        {"name": "ESCAPED_REFERENCE", "value": "$$(PROTOCOL)://$(SERVICE_IP):$(SERVICE_PORT)"},
    ]}
    env = container_env(container, {})
    assert env["UNCHANGED_REFERENCE"] == "$(PROTOCOL)://172.17.0.1:80"
    assert env["SERVICE_ADDRESS"] == "https://172.17.0.1:80"
    assert env["ESCAPED_REFERENCE"] == "$(PROTOCOL)://172.17.0.1:80"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("$(A)-$(B)", "1-$(B)"), ("$$", "$"), ("$$$(A)", "$1"), ("a$", "a$"), ("$(A", "$(A"), ("$x$(A)", "$x1"),
     ("$()", "$()"), ("100$", "100$")],
    ids=["defined-and-undefined", "escape", "escape-then-reference", "trailing-dollar", "unclosed",
         "other-character", "empty-name", "plain"],
)
def test_should_expand_like_kubernetes_expansion_when_references_are_unusual(value: str, expected: str) -> None:
    """kubernetes/kubernetes third_party/forked/golang/expansion/expand.go, Expand and tryReadVariableName."""
    assert expand(value, {"A": "1"}) == expected


def test_should_read_the_downward_api_fields_and_refuse_others() -> None:
    metadata = {"name": "p-0-abcde", "namespace": "ml", "uid": "u", "labels": {"l": "x"},
                "annotations": {"jobset.sigs.k8s.io/job-index": "2"}}
    container = {"env": [
        {"name": "G", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['jobset.sigs.k8s.io/job-index']"}}},
        {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['l']"}}},
        {"name": "MISSING", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['none']"}}},
        {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "REF", "value": "$(N)/$(G)"},
    ]}
    assert container_env(container, metadata) == {"G": "2", "L": "x", "MISSING": "", "N": "ml", "REF": "ml/2"}
    with pytest.raises(NotImplementedError):
        container_env({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}, metadata)
    with pytest.raises(NotImplementedError):
        container_env({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}, metadata)


def _job(name: str, completions: int, env: list | None = None) -> dict:
    pod_spec = {"subdomain": "svc", "containers": [{"name": "tensorflow", "env": env or []}]}
    return {"kind": "Job", "metadata": {"name": name, "namespace": "ml", "labels": {}},
            "spec": {"completionMode": "Indexed", "completions": completions,
                     "template": {"metadata": {"labels": {"app": "t"}}, "spec": pod_spec}}}


def test_should_give_indexed_job_pods_their_index_and_hostname() -> None:
    pods = indexed_job_pods(_job("train", 3, [{"name": "A", "value": "i=$(JOB_COMPLETION_INDEX)"}]))
    assert [pod.hostname for pod in pods] == ["train-0", "train-1", "train-2"]
    assert [pod.env()["JOB_COMPLETION_INDEX"] for pod in pods] == ["0", "1", "2"]
    # The Job controller appends JOB_COMPLETION_INDEX after the template's env: an earlier reference stays.
    assert pods[1].env()["A"] == "i=$(JOB_COMPLETION_INDEX)"
    assert pods[2].dns_name() == "train-2.svc.ml.svc.cluster.local"
    assert pods[2].metadata["annotations"]["batch.kubernetes.io/job-completion-index"] == "2"


def test_should_name_and_annotate_jobset_children_as_jobset_does() -> None:
    template = _job("x", 2)["spec"]
    oracle = {**template, "completions": 1}
    jobset = {"kind": "JobSet", "metadata": {"name": "js", "namespace": "ml"},
              "spec": {"replicatedJobs": [{"name": "worker", "replicas": 2, "template": {"spec": template}},
                                          {"name": "oracle", "replicas": 1, "template": {"spec": oracle}}]}}
    jobs = jobset_child_jobs(jobset)
    assert [job["metadata"]["name"] for job in jobs] == ["js-worker-0", "js-worker-1", "js-oracle-0"]
    annotations = [job["spec"]["template"]["metadata"]["annotations"] for job in jobs]
    assert [a["jobset.sigs.k8s.io/job-index"] for a in annotations] == ["0", "1", "0"]
    assert [a["jobset.sigs.k8s.io/job-global-index"] for a in annotations] == ["0", "1", "2"]
    assert {a["jobset.sigs.k8s.io/global-replicas"] for a in annotations} == {"3"}
    pods = workload_pods(jobset)
    assert [pod.hostname for pod in pods] == ["js-worker-0-0", "js-worker-0-1", "js-worker-1-0", "js-worker-1-1",
                                              "js-oracle-0-0"]
    assert {pod.spec["subdomain"] for pod in pods} == {"js"}  # GetSubdomain: the JobSet's name by default
    assert [(pod.replicated_job, pod.job_index) for pod in pods][-2:] == [("worker", 1), ("oracle", 0)]
