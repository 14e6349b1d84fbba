"""A small cluster around one rendering of the chart, for the NetworkPolicy behaviour tests: the release's
pods as the rendered templates make them, a Prometheus, a frontend, an unrelated pod, cluster DNS and an
address on the internet (tests/deploy/netpol.py evaluates the rendered policies over it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.deploy.netpol import Cluster, Endpoint, Namespace, pod_from_template
from tests.deploy.pods import workload_pods
from tests.deploy.rendering import NAMESPACE, TRAINER_KINDS, Rendered, pod_template

NAMESPACES = [
    Namespace(NAMESPACE),
    Namespace("monitoring", {"name": "monitoring"}),
    Namespace("frontend", {"name": "frontend"}),
    Namespace("kube-system"),
]
PROMETHEUS = Endpoint("prometheus", "10.0.9.1", "monitoring", {"app.kubernetes.io/name": "prometheus"})
FRONTEND = Endpoint("web", "10.0.9.2", "frontend", {"app": "web"})
STRANGER = Endpoint("stranger", "10.0.9.3", NAMESPACE, {"app": "other"})
DNS = Endpoint("coredns", "10.0.9.53", "kube-system", {"k8s-app": "kube-dns"})
INTERNET = Endpoint("storage.googleapis.com", "203.0.113.7")
#: NCCL's bootstrap and data connections use ephemeral ports (Linux default range 32768-60999).
NCCL_PORTS = [32768, 40123, 60999]


@dataclass
class World:
    cluster: Cluster
    trainers: list[Endpoint]
    """Every trainer pod: the workers of every group (the first is a chief), then the oracle if any."""
    serving: Endpoint | None
    test_client: Endpoint | None
    oracle: Endpoint | None = None
    """The oracle pod (trainer.groups > 1)."""


def world(rendered: Rendered) -> World:
    trainers: list[Endpoint] = []
    oracle = None
    workloads = [obj for _, obj in rendered if obj["kind"] in TRAINER_KINDS]
    for workload in workloads:
        if workload["kind"] == "TFJob":  # the operator's pods: the template, once per replica
            template = pod_template(workload)
            for index in range(rendered.values["trainer"]["workers"]):
                trainers.append(pod_from_template(f"trainer-{index}", NAMESPACE, template, f"10.0.1.{index + 1}"))
            continue
        for pod in workload_pods(workload):
            endpoint = pod_from_template(pod.hostname, NAMESPACE, {"metadata": pod.metadata, "spec": pod.spec},
                                         f"10.0.1.{len(trainers) + 1}")
            trainers.append(endpoint)
            if any(item.get("value") == "oracle" for item in pod.container().get("env", [])
                   if item["name"] == "TFSTACK_ROLE"):
                oracle = endpoint
    if oracle is not None:  # workers first: trainers[0] is a chief
        trainers.remove(oracle)
        trainers.append(oracle)
    serving = test_client = None
    deployments = rendered.by_template("serving-deployment.yaml")
    if deployments:
        serving = pod_from_template("serving-0", NAMESPACE, deployments[0]["spec"]["template"], "10.0.2.1")
        pod: dict[str, Any] = rendered.one("tests/client-test-pod.yaml")
        test_client = pod_from_template("test-client", NAMESPACE, pod, "10.0.3.1")
    policies = [obj for _, obj in rendered if obj["kind"] == "NetworkPolicy"]
    return World(Cluster(NAMESPACES, policies), trainers, serving, test_client, oracle)
