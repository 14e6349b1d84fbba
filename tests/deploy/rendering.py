"""Rendering the chart offline (helm-python-sdk: Helm's own engine, no cluster, no helm binary).

`render(name)` renders one of the named value sets of `VALUE_SETS` once per test session and returns
the parsed objects; every chart test reads from this cache, so the matrix costs one render per set.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from tests.deploy import pods

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "k8s" / "chart"
RELEASE = "digits"
NAMESPACE = "ml"

#: The values matrix: each set is rendered, validated against the Kubernetes schemas (and the JobSet and TFJob
#: CRDs), linted and scanned by checkov. The trainer modes: defaults and gpus render a JobSet (more than one
#: worker), jobset names it explicitly with the scheduling hooks, indexed_job/existing_claim/monitoring/
#: single_worker an Indexed Job, tfjob a TFJob. groups and groups_indexed_job run parallel trials (3 groups of
#: 2 workers and the oracle) as a JobSet and as Indexed Jobs.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "jobset": {
        "trainer": {
            "mode": "jobset",
            "workers": 3,
            "runId": "r2",
            "maxRestarts": 3,
            "activeDeadlineSeconds": 43200,
            "queueName": "gpu-queue",
            "kueuePriorityClass": "research",
            "priorityClassName": "training",
            "schedulerName": "volcano",
            "volcano": {"enabled": True, "queue": "training"},
            "podLabels": {"team": "vision"},
        },
        "networkPolicy": {"allowExternalEgress": False},
    },
    "indexed_job": {"trainer": {"mode": "indexedJob", "workers": 3, "queueName": "cpu-queue"}},
    "single_worker": {"trainer": {"workers": 1}},
    "tfjob": {"trainer": {"mode": "tfjob", "workers": 3, "queueName": "tf-queue"}},
    "gpus": {
        "trainer": {
            "workers": 4,
            "gpusPerWorker": 1,
            "runtimeClassName": "nvidia",
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "trainer"}},
                            },
                        }
                    ]
                }
            },
            "search": {"backbone": "mobilenet_v2,efficientnet_b0", "data": "/data/images", "maxTrials": 20},
            "dataVolume": {"existingClaim": "images"},
            "activeDeadlineSeconds": 86400,
            "ttlSecondsAfterFinished": 3600,
        },
        "storage": {"storageClassName": "nfs-client"},
        "serving": {
            "image": {"tag": "2.21.0-gpu"},
            "gpus": 1,
            "runtimeClassName": "nvidia",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "serving"}},
                }
            ],
        },
    },
    "existing_claim": {
        "trainer": {"mode": "indexedJob"},
        "storage": {"mode": "existingClaim", "existingClaim": "shared-models"},
    },
    "monitoring": {
        "trainer": {"mode": "indexedJob"},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
                    "podMonitor": {"enabled": True}, "dashboard": {"enabled": True}},
        "tensorboard": {"enabled": True},
        "serving": {
            "autoscaling": {"enabled": True, "targetMemory": 80, "requestsPerSecond": 40},
            "pdb": {"minAvailable": 1},
            "image": {"digest": "sha256:" + "ab" * 32},
            "headlessService": {"enabled": True},
        },
        "networkPolicy": {
            "allowExternalEgress": False,
            "servingIngressFrom": [{"namespaceSelector": {"matchLabels": {"name": "frontend"}}}],
            "metricsIngressFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        },
    },
    "serving_only": {"trainer": {"enabled": False}, "serving": {"batching": False}},
    "groups": {
        "trainer": {
            "groups": 3,
            "workers": 2,
            "groupRestart": "job",  # a failed group restarts alone (JobSet's RestartJob gate on)
            "gpusPerWorker": 1,
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "runtimeClassName": "nvidia",
            "priorityClassName": "training",
            "oracle": {"nodeSelector": {"pool": "cpu"}},
            "activeDeadlineSeconds": 86400,
        },
        "serving": {"autoscaling": {"enabled": True, "requestsPerSecond": 20, "keda": {"enabled": True}}},
        "networkPolicy": {"allowExternalEgress": False},
    },
    "groups_indexed_job": {"trainer": {"mode": "indexedJob", "groups": 3, "workers": 2, "runId": "p3"}},
}
VALUE_SET_IDS = list(VALUE_SETS)


@dataclass(frozen=True)
class Rendered:
    """One rendered value set: objects by template file, and NOTES.txt."""

    values: dict[str, Any]
    objects: tuple[tuple[str, dict[str, Any]], ...]
    notes: str

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(self.objects)

    def by_template(self, template: str) -> list[dict[str, Any]]:
        """Objects rendered from ``templates/<template>``."""
        return [obj for path, obj in self.objects if path == f"tfstack/templates/{template}"]

    def one(self, template: str) -> dict[str, Any]:
        found = self.by_template(template)
        assert len(found) == 1, f"Expected one object from {template}. Received: {len(found)}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(obj["kind"] for _, obj in self.objects)


@functools.cache
def _chart(chart_dir: Path = CHART_DIR) -> helm.Chart:
    return helm.Chart.load(str(chart_dir))


def render_values(values: dict[str, Any], chart_dir: Path = CHART_DIR) -> Rendered:
    """Render the chart (in `chart_dir`) with `values` (not cached: for one-off cases)."""
    chart = _chart(chart_dir)
    manifests = chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[tuple[str, dict[str, Any]]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append((path, doc))
    return Rendered(values=chart.merge_values(copy.deepcopy(values)), objects=tuple(objects), notes=notes)


@functools.cache
def render(name: str) -> Rendered:
    """Render the value set `name` of `VALUE_SETS` (cached for the session)."""
    return render_values(VALUE_SETS[name])


def one_group_sets(template: str) -> list[str]:
    """The value sets that render `template` with one group (trainer.groups = 1, no oracle)."""
    return [name for name in VALUE_SETS
            if render(name).by_template(template) and render(name).values["trainer"]["groups"] == 1]


TRAINER_KINDS = ("JobSet", "Job", "TFJob")


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a workload (Pod, Deployment, Job, JobSet, TFJob)."""
    return pod_spec(obj)["containers"]


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    """The (workers') pod template (metadata + spec) of a Deployment, Job, JobSet (its first replicatedJob,
    the workers) or TFJob."""
    return pod_templates(obj)[0]


def pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod template of a workload: a JobSet has one per replicatedJob (workers, and the oracle when
    trainer.groups > 1)."""
    kind = obj["kind"]
    if kind == "TFJob":
        return [spec["template"] for spec in obj["spec"]["tfReplicaSpecs"].values()]
    if kind == "JobSet":
        return [rj["template"]["spec"]["template"] for rj in obj["spec"]["replicatedJobs"]]
    return [obj["spec"]["template"]]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj["spec"]
    return pod_template(obj)["spec"]


def jobset_child_jobs(jobset: dict[str, Any]) -> list[dict[str, Any]]:
    """The Jobs JobSet creates: "<jobset>-<replicatedJob>-<index>" with the replicatedJob's template as spec,
    labelled and annotated as JobSet does (kubernetes-sigs/jobset, pkg/controllers/jobset_controller.go,
    constructJob; tests/deploy/pods.py); the JobSet's own labels and annotations are added to the Job's (for
    checkov's skips and the standard labels)."""
    jobs = pods.jobset_child_jobs(jobset)
    for job in jobs:
        job["metadata"]["labels"] = {**jobset["metadata"].get("labels", {}), **job["metadata"]["labels"]}
        job["metadata"]["annotations"] = {**jobset["metadata"].get("annotations", {}),
                                          **job["metadata"]["annotations"]}
    return jobs


def trainer_workloads(rendered: Rendered) -> list[dict[str, Any]]:
    """The trainer workloads of a rendering: a JobSet, a TFJob, or Indexed Jobs (one per group, and the
    oracle's, when trainer.groups > 1)."""
    return [obj for _, obj in rendered if obj["kind"] in TRAINER_KINDS]


def trainer_workload(rendered: Rendered) -> dict[str, Any]:
    """The one trainer workload of a rendering (a JobSet, an Indexed Job or a TFJob)."""
    (workload,) = trainer_workloads(rendered)
    return workload


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """Literal environment of a container: the variables with a ``value`` (with trainer.groups > 1 a JobSet's
    workers also read TFSTACK_GROUP through the downward API: tests/deploy/pods.py resolves those)."""
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks the restrictive profile: non-root, no privilege escalation, all
    capabilities dropped, read-only root filesystem, RuntimeDefault seccomp, no service account token."""
    problems = []
    pod = spec.get("securityContext", {})
    if pod.get("runAsNonRoot") is not True:
        problems.append("pod runAsNonRoot")
    if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("pod seccompProfile")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken")
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container.get("securityContext", {})
        name = container["name"]
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem")
        if context.get("capabilities", {}).get("drop") != ["ALL"] or context.get("capabilities", {}).get("add"):
            problems.append(f"{name}: capabilities")
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if (context.get("runAsUser", pod.get("runAsUser")) or 0) < 10000:
            problems.append(f"{name}: runAsUser below 10000")
    return problems
