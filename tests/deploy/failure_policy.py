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
  pkg/controllers/failure_policy.go at v0.12.0): when child Jobs have failed, the rules are evaluated in
  order, and the first rule that matches one of the failed Jobs applies to the earliest failed Job it
  matches (``findFirstFailedPolicyRuleAndJob``); a rule matches a Job whose failure reason is in its
  ``onJobFailureReasons`` (empty: any), whose failure message one of its ``onJobFailureMessagePatterns``
  matches (Go's ``regexp.MatchString``: unanchored, as ``re.search``; empty: any) and whose replicatedJob is
  in its ``targetReplicatedJobs`` (empty: all) (``ruleIsApplicable``); no rule: ``RestartJobSet``. The
  Job's failure message for a ``FailJob`` rule is Kubernetes' own (pkg/controller/job/pod_failure_policy.go,
  matchPodFailurePolicy): "Container C for pod NS/P failed with exit code N matching FailJob rule at index
  I" or "Pod NS/P has condition DisruptionTarget matching FailJob rule at index I".
  ``FailJobSet`` fails the JobSet at once. ``RestartJobSet`` recreates
  every child Job (``status.restarts`` + 1) while the restarts that count are fewer than ``maxRestarts``
  and fails the JobSet otherwise; ``RestartJob`` recreates only the failed child Job (its
  ``jobRestarts[jobIndex]`` + 1) under the same check. Both count (``restartsCountTowardsMax``,
  ``jobRestartsCountTowardsMax``), against ONE budget: ``totalRestartsCountTowardsMax`` = global restarts +
  every child Job's own restarts; the ``...AndIgnoreMaxRestarts`` variants recreate without counting or
  checking. ``RestartJob`` is behind JobSet's ``RestartJob`` feature gate (pkg/features/features.go:
  alpha, off by default in v0.12.0); with the gate off, the webhook refuses a JobSet whose rules use it
  (pkg/webhooks/jobset_webhook.go, validateFailurePolicy). ``restartStrategy`` (Recreate,
  BlockingRecreate) only says when the new Jobs are created: with ``BlockingRecreate`` no Job is created
  while any Job of an earlier attempt still exists (jobset_controller.go, constructJobsFromTemplate),
  for ``RestartJob`` too. Success (``successPolicy``, operator ``All``, no targets): every child Job of
  every replicatedJob has completed.
"""

from __future__ import annotations

import re
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
    return pod_failure_match(job_spec, failure)[0]


def pod_failure_match(job_spec: Mapping[str, Any], failure: PodFailure,
                      pod: str = "ns/pod") -> tuple[str, str | None]:
    """(action, the Job's failure message for a FailJob rule), as matchPodFailurePolicy: each rule has either
    onExitCodes or onPodConditions; the first rule that matches decides."""
    for index, rule in enumerate((job_spec.get("podFailurePolicy") or {}).get("rules", [])):
        action = str(rule["action"])
        if "onExitCodes" in rule:
            requirement = rule["onExitCodes"]
            values = set(requirement["values"])
            for name, code in failure.exit_codes.items():
                if code == 0 or requirement.get("containerName") not in (None, name):
                    continue
                if (code in values) == (requirement["operator"] == "In"):
                    return action, (f"Container {name} for pod {pod} failed with exit code {code} matching "
                                    f"{action} rule at index {index}")
            continue
        for condition in rule.get("onPodConditions", []):
            if condition["type"] in failure.conditions and condition.get("status", "True") == "True":
                return action, f"Pod {pod} has condition {condition['type']} matching {action} rule at index {index}"
    return "Count", None


@dataclass
class IndexedJobRun:
    """An Indexed Job with per-index backoff (the chart's indexedJob mode), failure by failure."""

    spec: Mapping[str, Any]
    counted: dict[int, int] = field(default_factory=dict)
    failed: str | None = None
    """The Job's failure reason once it has failed."""
    message: str = ""
    """The Job's failure message once it has failed."""
    succeeded: set[int] = field(default_factory=set)
    """Indexes whose pod exited 0."""

    @property
    def complete(self) -> bool:
        return self.failed is None and len(self.succeeded) >= self.spec["completions"]

    def pod_succeeded(self, index: int) -> None:
        self.succeeded.add(index)

    def pod_failed(self, index: int, failure: PodFailure) -> str:
        action, message = pod_failure_match(self.spec, failure, pod=f"ns/pod-{index}")
        if self.failed:
            return action
        if action == "FailJob":
            self.failed, self.message = "PodFailurePolicy", message or ""
        elif action in ("Count", "FailIndex"):
            self.counted[index] = self.counted.get(index, 0) + 1
            limit = self.spec.get("backoffLimitPerIndex")
            if limit is None:
                if sum(self.counted.values()) > self.spec.get("backoffLimit", 6):
                    self.failed, self.message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            elif action == "FailIndex" or self.counted[index] > limit:
                failed_indexes = 1 + sum(1 for i, n in self.counted.items() if i != index and n > limit)
                if failed_indexes > self.spec.get("maxFailedIndexes", self.spec["completions"]):
                    self.failed = "MaxFailedIndexesExceeded"
                    self.message = "Job has exceeded the specified maximal number of failed indexes"
        return action


RESTART_JOB_ACTIONS = ("RestartJob", "RestartJobAndIgnoreMaxRestarts")


class WebhookRefused(ValueError):
    """JobSet's admission webhook would refuse the JobSet."""


@dataclass
class JobSetRun:
    """A JobSet (the chart's jobset mode): child Job failures drive its failure policy.

    Child Jobs are keyed by ``(replicatedJob, jobIndex)``; a replicatedJob with ``replicas: n`` has n of
    them. `restart_job_gate` says whether the JobSet controller runs with ``--feature-gates=RestartJob=true``.
    """

    jobset: Mapping[str, Any]
    restart_job_gate: bool = True
    restarts: int = 0
    """status.restarts: how many times every child Job was recreated."""
    restarts_counted: int = 0
    """status.restartsCountTowardsMax."""
    job_restarts: dict[tuple[str, int], int] = field(default_factory=dict)
    """status.replicatedJobsStatus[].jobRestarts: how many times one child Job was recreated alone."""
    job_restarts_counted: dict[tuple[str, int], int] = field(default_factory=dict)
    failed: bool = False
    completed: bool = False
    reason: str = ""
    """The reason of the JobSet's last Failed or Restarting condition."""
    children: dict[tuple[str, int], IndexedJobRun] = field(default_factory=dict)
    attempts: dict[tuple[str, int], int] = field(default_factory=dict)
    """How many times each child Job has been created (1 = never restarted)."""
    _failed_order: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rules = (self.jobset["spec"].get("failurePolicy") or {}).get("rules", [])
        if not self.restart_job_gate and any(rule["action"] in RESTART_JOB_ACTIONS for rule in rules):
            raise WebhookRefused("RestartJob and RestartJobAndIgnoreMaxRestarts failure policy actions are not "
                                 "allowed when RestartJob feature gate is disabled")
        for key in self.child_keys():
            self._create(key)

    def child_keys(self) -> list[tuple[str, int]]:
        return [(rj["name"], j) for rj in self.jobset["spec"]["replicatedJobs"] for j in range(rj.get("replicas", 1))]

    def _spec(self, replicated_job: str) -> Mapping[str, Any]:
        (rj,) = [rj for rj in self.jobset["spec"]["replicatedJobs"] if rj["name"] == replicated_job]
        return rj["template"]["spec"]

    def _create(self, key: tuple[str, int]) -> None:
        self.children[key] = IndexedJobRun(self._spec(key[0]))
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if key in self._failed_order:
            self._failed_order.remove(key)

    @property
    def total_restarts_counted(self) -> int:
        """totalRestartsCountTowardsMax: global restarts that count + every child Job's own that count."""
        return self.restarts_counted + sum(self.job_restarts_counted.values())

    @property
    def state(self) -> str:
        return "failed" if self.failed else "completed" if self.completed else "running"

    # -- events -------------------------------------------------------------------------------------------
    def pod_succeeded(self, replicated_job: str, index: int, job: int = 0) -> str:
        """A pod exited 0. Returns "completed" once every child Job has completed, else "running"."""
        if self.state == "running":
            self.children[(replicated_job, job)].pod_succeeded(index)
            if all(child.complete for child in self.children.values()):
                self.completed = True
        return self.state

    def pod_failed(self, replicated_job: str, index: int, failure: PodFailure, job: int = 0,
                   reconcile: bool = True) -> str:
        """Returns what the JobSet does: "running" (the Job absorbed it), "restart" (every child Job
        recreated), "restart-job" (only this child Job recreated) or "failed". With ``reconcile=False`` the
        failure is only recorded, as when several Jobs fail before the controller's next reconcile."""
        if self.state != "running":
            return self.state
        key = (replicated_job, job)
        child = self.children[key]
        child.pod_failed(index, failure)
        if child.failed is not None and key not in self._failed_order:
            self._failed_order.append(key)
        return self.reconcile() if reconcile else "running"

    def reconcile(self) -> str:
        """executeFailurePolicy over the child Jobs that have failed (in the order they failed)."""
        if self.state != "running" or not self._failed_order:
            return self.state
        policy = self.jobset["spec"].get("failurePolicy")
        if policy is None:  # no failure policy: the JobSet fails with its first failed Job
            self.failed, self.reason = True, "FailedJobs"
            return "failed"
        failed_jobs = [FailedJob(key, self.children[key].failed or "", self.children[key].message, order)
                       for order, key in enumerate(self._failed_order)]
        index, job = find_first_failed_policy_rule_and_job(policy.get("rules", []), failed_jobs)
        rule = None if index is None else policy["rules"][index]
        action = "RestartJobSet" if rule is None else str(rule["action"])
        key = failed_jobs[0].key if job is None else job.key
        outcome = self.apply(action, key, rule_name=None if rule is None else rule.get("name"))
        if outcome == "restart-job" and self._failed_order:
            return self.reconcile()
        return outcome

    def apply(self, action: str, key: tuple[str, int], rule_name: str | None = None) -> str:
        """applyFailurePolicyRuleAction: the status change of one action on the failed child Job `key`.
        Sets `reason` (the Failed or Restarting condition's reason) and returns "failed", "restart" or
        "restart-job"."""
        max_restarts = (self.jobset["spec"].get("failurePolicy") or {}).get("maxRestarts", 0)
        over_budget = self.total_restarts_counted >= max_restarts
        if action == "FailJobSet":
            self.failed, self.reason = True, "FailJobSetFailurePolicyAction"
            return "failed"
        if action in ("RestartJobSet", "RestartJob") and over_budget:
            self.failed, self.reason = True, "ReachedMaxRestarts"
            return "failed"
        self.reason = f"FailurePolicy_{rule_name}" if rule_name else "DefaultFailurePolicy"
        if action in ("RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"):
            self.restarts += 1
            self.restarts_counted += action == "RestartJobSet"
            for child in self.child_keys():
                self._create(child)
            self._failed_order.clear()
            return "restart"
        if action in RESTART_JOB_ACTIONS:
            if not self.restart_job_gate:  # the controller errors and retries; the webhook refuses it first
                raise WebhookRefused(f"{action} cannot be used when the feature gate RestartJob is disabled")
            self.job_restarts[key] = self.job_restarts.get(key, 0) + 1
            if action == "RestartJob":
                self.job_restarts_counted[key] = self.job_restarts_counted.get(key, 0) + 1
            if key in self.children:
                self._create(key)
            return "restart-job"
        raise NotImplementedError(action)

    def job_failure_action(self, replicated_job: str, reason: str, message: str = "") -> str:
        """The action the JobSet takes when only the child Job of `replicated_job` has failed this way."""
        policy = self.jobset["spec"].get("failurePolicy")
        if policy is None:
            return "FailJobSet"  # no failure policy: the JobSet fails with its first failed Job
        index, _ = find_first_failed_policy_rule_and_job(
            policy.get("rules", []), [FailedJob((replicated_job, 0), reason, message, 0)])
        return "RestartJobSet" if index is None else str(policy["rules"][index]["action"])


@dataclass(frozen=True)
class FailedJob:
    """A failed child Job as the failure policy sees it: (replicatedJob, jobIndex), its Failed condition's
    reason and message, and when it failed (a number: earlier is smaller)."""

    key: tuple[str, int]
    reason: str
    message: str
    failed_at: float


def rule_is_applicable(rule: Mapping[str, Any], replicated_job: str | None, reason: str, message: str) -> bool:
    """ruleIsApplicable: the reason, a message pattern and the parent replicatedJob all match (an empty list
    matches anything; a Job without a parent replicatedJob matches no rule)."""
    reasons = rule.get("onJobFailureReasons") or []
    patterns = rule.get("onJobFailureMessagePatterns") or []
    targets = rule.get("targetReplicatedJobs") or []
    if reasons and reason not in reasons:
        return False
    if patterns and not any(re.search(pattern, message) for pattern in patterns):
        return False
    return replicated_job is not None and (not targets or replicated_job in targets)


def find_first_failed_policy_rule_and_job(
    rules: Sequence[Mapping[str, Any]], failed_jobs: Sequence[FailedJob]
) -> tuple[int | None, FailedJob | None]:
    """findFirstFailedPolicyRuleAndJob: the first rule (by index) that applies to a failed Job, and the
    earliest failed Job it applies to; (None, None) when no rule applies."""
    for index, rule in enumerate(rules):
        matched = [job for job in failed_jobs if rule_is_applicable(rule, job.key[0], job.reason, job.message)]
        if matched:
            return index, min(matched, key=lambda job: job.failed_at)
    return None, None
