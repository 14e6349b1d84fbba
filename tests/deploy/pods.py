"""The pods that Kubernetes and JobSet create from the chart's rendered trainer workloads: their names,
labels, annotations and the environment each container sees at run time, so that tests hand EVERY pod's
environment to the trainer's own resolver (trainer.cluster.resolve) instead of restating the templates.

- An Indexed Job (Kubernetes docs, "Jobs", "Completion mode"): pod i carries the annotation and label
  ``batch.kubernetes.io/job-completion-index: i``, its containers get ``JOB_COMPLETION_INDEX`` (the Job
  controller appends it to every container's env as a downward-API reference to that annotation,
  pkg/controller/job/indexed_job_utils.go, addCompletionIndexEnvVariable), and its hostname is
  ``<job>-<i>``; with ``spec.subdomain`` and a headless Service of that name it is reachable as
  ``<hostname>.<subdomain>.<namespace>.svc.<clusterDomain>``. The pod's own name is
  ``<job>-<i>-<random suffix>``.
- A JobSet (kubernetes-sigs/jobset v0.12.0, pkg/controllers/jobset_controller.go): a replicatedJob ``r``
  with ``replicas: n`` gives n child Jobs ``<jobset>-<r>-<j>`` (placement.GenJobName), each with the
  replicatedJob's template as its spec (constructJob); labelAndAnnotateObject puts the same labels and
  annotations on the child Job and its pod template: jobset-name, replicatedjob-name, restart-attempt,
  replicatedjob-replicas, global-replicas, job-index (``j``), job-global-index, among others. With
  ``network.enableDNSHostnames`` (the webhook's default: true) the pod template's subdomain becomes
  ``network.subdomain`` or else the JobSet's name (GetSubdomain), the name of the headless Service that
  JobSet creates.
- A container's environment (Kubernetes docs, "Define Dependent Environment Variables" and "Expose Pod
  Information to Containers Through Environment Variables"): the ``env`` list in order; a ``value`` has
  its ``$(NAME)`` references expanded with the variables defined before it in the list (an undefined
  reference stays as written; ``$$`` is an escaped ``$``); ``valueFrom.fieldRef`` reads
  ``metadata.name``, ``metadata.namespace``, ``metadata.uid``, ``metadata.labels['k']`` or
  ``metadata.annotations['k']`` of the pod (other sources are not modelled and raise).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: the downward-API fields a fieldRef may name in env (Kubernetes API reference, ObjectFieldSelector)
_FIELD = re.compile(r"^metadata\.(?P<map>labels|annotations)\['(?P<key>[^']+)'\]$")
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOBSET = "jobset.sigs.k8s.io/"


def expand(value: str, defined: Mapping[str, str]) -> str:
    """Kubernetes' expansion of ``$(NAME)`` references in an env value (kubernetes/kubernetes,
    third_party/forked/golang/expansion/expand.go): ``$(NAME)`` becomes NAME's value when NAME is
    defined, else stays ``$(NAME)``; ``$$`` becomes ``$``; an unclosed ``$(`` and any other ``$x`` stay."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == "$" and i + 1 < len(value):
            following = value[i + 1]
            if following == "$":
                out.append("$")
                i += 2
                continue
            if following == "(":
                end = value.find(")", i + 2)
                if end != -1:
                    name = value[i + 2:end]
                    out.append(defined.get(name, f"$({name})"))
                    i = end + 1
                    continue
            out.append("$" + following)
            i += 2
            continue
        out.append(value[i])
        i += 1
    return "".join(out)


def container_env(container: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, str]:
    """The environment a container of a pod with `metadata` sees (env in order, references resolved)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "valueFrom" in item:
            env[name] = _field_value(item["valueFrom"], metadata, name)
        else:
            env[name] = expand(str(item.get("value", "")), env)
    return env


def _field_value(source: Mapping[str, Any], metadata: Mapping[str, Any], name: str) -> str:
    if set(source) != {"fieldRef"}:
        raise NotImplementedError(f"Expected env {name} from a fieldRef. Received: {sorted(source)}")
    path = source["fieldRef"]["fieldPath"]
    if path in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(metadata[path.split(".")[1]])
    match = _FIELD.match(path)
    if match is None:
        raise NotImplementedError(f"Expected a metadata fieldPath for env {name}. Received: {path!r}")
    values = metadata.get(match["map"], {})
    # A label or annotation the pod does not carry gives "" (the kubelet's ExtractFieldPathAsString).
    return str(values.get(match["key"], ""))


@dataclass(frozen=True)
class Pod:
    """One pod of a Job as the cluster runs it."""

    job: str
    index: int
    """Its completion index in its Job."""
    namespace: str
    metadata: Mapping[str, Any]
    spec: Mapping[str, Any]
    replicated_job: str | None = None
    """The JobSet replicatedJob whose child Job owns it (None for a plain Job)."""
    job_index: int = 0
    """The child Job's index in its replicatedJob (JobSet's job-index)."""

    @property
    def hostname(self) -> str:
        return f"{self.job}-{self.index}"

    def dns_name(self, cluster_domain: str = "cluster.local") -> str:
        """``<hostname>.<subdomain>.<namespace>.svc.<clusterDomain>``: its A record under the headless Service."""
        subdomain = self.spec.get("subdomain")
        assert subdomain, f"pod {self.hostname} has no subdomain, so no DNS name of its own"
        return f"{self.hostname}.{subdomain}.{self.namespace}.svc.{cluster_domain}"

    def container(self, name: str = "tensorflow") -> dict[str, Any]:
        (found,) = [c for c in self.spec["containers"] if c["name"] == name]
        return found

    def env(self, container: str = "tensorflow") -> dict[str, str]:
        return container_env(self.container(container), self.metadata)

    def container_ports(self, container: str = "tensorflow") -> dict[str, int]:
        return {p["name"]: p["containerPort"] for p in self.container(container).get("ports", [])}


def indexed_job_pods(job: Mapping[str, Any]) -> list[Pod]:
    """The pods of an Indexed Job: what the Job controller adds to the template for index i."""
    spec = job["spec"]
    assert spec.get("completionMode") == "Indexed", f"{job['metadata']['name']} is not an Indexed Job"
    template = spec["template"]
    labels = dict(job["metadata"].get("labels", {}))
    pods = []
    for index in range(spec["completions"]):
        pod_spec = dict(template["spec"])
        pod_spec["containers"] = [_with_completion_index(c) for c in template["spec"]["containers"]]
        pod_spec["initContainers"] = [_with_completion_index(c) for c in template["spec"].get("initContainers", [])]
        metadata = {
            "name": f"{job['metadata']['name']}-{index}-abcde",
            "namespace": job["metadata"]["namespace"],
            "uid": f"uid-{job['metadata']['name']}-{index}",
            "labels": {**template["metadata"].get("labels", {}), "job-name": job["metadata"]["name"],
                       "batch.kubernetes.io/job-name": job["metadata"]["name"],
                       COMPLETION_INDEX_ANNOTATION: str(index)},
            "annotations": {**template["metadata"].get("annotations", {}), COMPLETION_INDEX_ANNOTATION: str(index)},
        }
        pods.append(Pod(job=job["metadata"]["name"], index=index, namespace=job["metadata"]["namespace"],
                        metadata=metadata, spec=pod_spec, replicated_job=labels.get(JOBSET + "replicatedjob-name"),
                        job_index=int(labels.get(JOBSET + "job-index", 0))))
    return pods


def _with_completion_index(container: Mapping[str, Any]) -> dict[str, Any]:
    env = list(container.get("env", []))
    if not any(item["name"] == "JOB_COMPLETION_INDEX" for item in env):
        env.append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}})
    return {**container, "env": env}


def jobset_child_jobs(jobset: Mapping[str, Any], restarts: int = 0) -> list[dict[str, Any]]:
    """The child Jobs JobSet creates (constructJob, labelAndAnnotateObject, GetSubdomain), in
    replicatedJob order, then job index."""
    name = jobset["metadata"]["name"]
    namespace = jobset["metadata"]["namespace"]
    replicated_jobs = jobset["spec"]["replicatedJobs"]
    network = jobset["spec"].get("network") or {}
    global_replicas = sum(rj.get("replicas", 1) for rj in replicated_jobs)
    jobs = []
    global_index = 0
    for rj in replicated_jobs:
        replicas = rj.get("replicas", 1)
        for index in range(replicas):
            job_name = f"{name}-{rj['name']}-{index}"
            stamp = {
                JOBSET + "jobset-name": name,
                JOBSET + "replicatedjob-name": rj["name"],
                JOBSET + "restart-attempt": str(restarts),
                JOBSET + "replicatedjob-replicas": str(replicas),
                JOBSET + "global-replicas": str(global_replicas),
                JOBSET + "job-index": str(index),
                JOBSET + "job-global-index": str(global_index),
                JOBSET + "job-key": hashlib.sha1(f"{namespace}/{job_name}".encode()).hexdigest(),
            }
            global_index += 1
            job_template = rj["template"]
            spec = dict(job_template["spec"])
            pod_template = spec["template"]
            pod_spec = dict(pod_template["spec"])
            if network.get("enableDNSHostnames", True):
                pod_spec["subdomain"] = network.get("subdomain") or name
            spec["template"] = {
                "metadata": {
                    **pod_template.get("metadata", {}),
                    "labels": {**pod_template.get("metadata", {}).get("labels", {}), **stamp},
                    "annotations": {**pod_template.get("metadata", {}).get("annotations", {}), **stamp},
                },
                "spec": pod_spec,
            }
            jobs.append({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {
                    "name": job_name,
                    "namespace": namespace,
                    "labels": {**job_template.get("metadata", {}).get("labels", {}), **stamp},
                    "annotations": {**job_template.get("metadata", {}).get("annotations", {}), **stamp},
                },
                "spec": spec,
            })
    return jobs


def workload_pods(workload: Mapping[str, Any]) -> list[Pod]:
    """Every pod of a rendered Job or JobSet."""
    if workload["kind"] == "JobSet":
        return [pod for job in jobset_child_jobs(workload) for pod in indexed_job_pods(job)]
    if workload["kind"] == "Job":
        return indexed_job_pods(workload)
    raise NotImplementedError(f"Expected a Job or a JobSet. Received: {workload['kind']}")


def pods_of(objects: Iterator[tuple[str, dict[str, Any]]] | Any) -> list[Pod]:
    """Every trainer pod of a rendering (its Jobs and JobSets)."""
    return [pod for _, obj in objects if obj["kind"] in ("Job", "JobSet") for pod in workload_pods(obj)]
