"""What Kubernetes and JobSet do when a trainer pod fails, evaluated from the rendered objects, so that
tests ask "what happens when a worker exits 4?" instead of restating the failure policies.

- A Job's ``podFailurePolicy`` (Kubernetes docs, "Jobs", "Pod failure policy", and the API reference of
  PodFailurePolicyRule): the rules are evaluated in order and the first that matches decides; a rule
  matches on ``onExitCodes`` (``containerName`` if given, operator ``In``/``NotIn`` over ``values``, only
  containers that exited non-zero) or on ``onPodConditions`` (a condition of that type and status).
  Actions: ``FailJob`` (the Job fails at once, reason ``PodFailurePolicy``), ``FailIndex`` (the index
  fails), ``Ignore`` (not counted; the pod is replaced), ``Count`` (counted against the backoff limit).
  No matching rule: ``Count``. A Job with ``backoffLimit`` 0 fails with reason ``BackoffLimitExceeded`` at
  the first counted failure; with ``backoffLimitPerIndex`` an index fails after that many counted
  failures plus one, and ``maxFailedIndexes`` 0 fails the Job with the first failed index.
- A JobSet's ``failurePolicy`` (kubernetes-sigs/jobset, api/jobset/v1alpha2/jobset_types.go and
  pkg/controllers/failure_policy.go at v0.12.0): when a child Job fails, the rules are evaluated in
  order, the first whose ``onJobFailureReasons`` (empty: any) holds the Job's failure reason and whose
  ``targetReplicatedJobs`` (empty: all) holds its replicatedJob applies; none: ``RestartJobSet``.
  ``RestartJobSet`` recreates every child Job while the restarts so far are below ``maxRestarts``, and
  fails the JobSet otherwise; ``FailJobSet`` fails it at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PodFailure:
    """How one pod ended: its containers' exit codes and the conditions it carries."""

    exit_codes: Mapping[str, int] = field(default_factory=dict)
    conditions: Sequence[str] = ()


def exit(code: int, container: str = "tensorflow") -> PodFailure:
    return PodFailure(exit_codes={container: code})


DISRUPTED = PodFailure(exit_codes={"tensorflow": 137}, conditions=("DisruptionTarget",))


def pod_failure_action(job_spec: Mapping[str, Any], failure: PodFailure) -> str:
    """The action a Job takes for a failed pod: FailJob, FailIndex, Ignore or Count."""
    for rule in (job_spec.get("podFailurePolicy") or {}).get("rules", []):
        if "onExitCodes" in rule:
            requirement = rule["onExitCodes"]
            codes = [
                code for name, code in failure.exit_codes.items()
                if code != 0 and requirement.get("containerName") in (None, name)
            ]
            values = set(requirement["values"])
            if requirement["operator"] == "In" and any(code in values for code in codes):
                return str(rule["action"])
            if requirement["operator"] == "NotIn" and any(code not in values for code in codes):
                return str(rule["action"])
        for condition in rule.get("onPodConditions", []):
            if condition["type"] in failure.conditions and condition.get("status", "True") == "True":
                return str(rule["action"])
    return "Count"


@dataclass
class IndexedJobRun:
    """An Indexed Job with per-index backoff (the chart's indexedJob mode), failure by failure."""

    spec: Mapping[str, Any]
    counted: dict[int, int] = field(default_factory=dict)
    failed: str | None = None
    """The Job's failure reason once it has failed."""

    def pod_failed(self, index: int, failure: PodFailure) -> str:
        action = pod_failure_action(self.spec, failure)
        if self.failed:
            return action
        if action == "FailJob":
            self.failed = "PodFailurePolicy"
        elif action in ("Count", "FailIndex"):
            self.counted[index] = self.counted.get(index, 0) + 1
            limit = self.spec.get("backoffLimitPerIndex")
            if limit is None:
                if sum(self.counted.values()) > self.spec.get("backoffLimit", 6):
                    self.failed = "BackoffLimitExceeded"
            elif action == "FailIndex" or self.counted[index] > limit:
                failed_indexes = 1 + sum(1 for i, n in self.counted.items() if i != index and n > limit)
                if failed_indexes > self.spec.get("maxFailedIndexes", self.spec["completions"]):
                    self.failed = "MaxFailedIndexesExceeded"
        return action


@dataclass
class JobSetRun:
    """A JobSet (the chart's jobset mode): child Job failures drive its failure policy."""

    jobset: Mapping[str, Any]
    restarts: int = 0
    failed: bool = False
    children: dict[str, IndexedJobRun] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._recreate()

    def _recreate(self) -> None:
        self.children = {
            rj["name"]: IndexedJobRun(rj["template"]["spec"]) for rj in self.jobset["spec"]["replicatedJobs"]
        }

    def pod_failed(self, replicated_job: str, index: int, failure: PodFailure) -> str:
        """Returns what the JobSet does: "running" (the Job absorbed it), "restart" or "failed"."""
        child = self.children[replicated_job]
        child.pod_failed(index, failure)
        if child.failed is None:
            return "running"
        action = self.job_failure_action(replicated_job, child.failed)
        policy = self.jobset["spec"].get("failurePolicy") or {}
        if action == "FailJobSet" or (action == "RestartJobSet" and self.restarts >= policy.get("maxRestarts", 0)):
            self.failed = True
            return "failed"
        if action == "RestartJobSetAndIgnoreMaxRestarts" or action == "RestartJobSet":
            self.restarts += action == "RestartJobSet"
            self._recreate()
            return "restart"
        raise NotImplementedError(action)

    def job_failure_action(self, replicated_job: str, reason: str) -> str:
        policy = self.jobset["spec"].get("failurePolicy")
        if policy is None:
            return "FailJobSet"  # no failure policy: the JobSet fails with its first failed Job
        for rule in policy.get("rules", []):
            reasons = rule.get("onJobFailureReasons") or []
            targets = rule.get("targetReplicatedJobs") or []
            if (not reasons or reason in reasons) and (not targets or replicated_job in targets):
                return str(rule["action"])
        return "RestartJobSet"
