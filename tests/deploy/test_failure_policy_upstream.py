"""The JobSet failure model (tests/deploy/failure_policy.py) replayed on JobSet's own test table.

The cases are kubernetes-sigs/jobset pkg/controllers/failure_policy_test.go at commit
08dfbdfd682714a9ab929633eca8dc95315187e7 (v0.13.0-devel-43; the rule matching and actions are those of
failure_policy.go since v0.10, which added onJobFailureMessagePatterns), translated case by case into data:
TestFailurePolicyRuleIsApplicable, TestFindFirstFailedPolicyRuleAndJob and TestApplyFailurePolicyRuleAction
(the Go test names are the ids). The Go file cannot be read at test time offline; once it is vendored into
../shared/upstream this table can be parsed from it instead. Upstream's constants: BackoffLimitExceeded,
DeadlineExceeded, FailedIndexes (batchv1.JobReason*), FailJobSetFailurePolicyAction, ReachedMaxRestarts,
DefaultFailurePolicy, "FailurePolicy_%s" (pkg/constants/constants.go).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.failure_policy import (
    FailedJob,
    JobSetRun,
    find_first_failed_policy_rule_and_job,
    rule_is_applicable,
)

BACKOFF, DEADLINE, FAILED_INDEXES = "BackoffLimitExceeded", "DeadlineExceeded", "FailedIndexes"
RJ1, RJ2 = "test-replicated-job-1", "test-replicated-job-2"

# TestFailurePolicyRuleIsApplicable: (rule, the failed Job's parent replicatedJob, reason, message, expected).
RULE_IS_APPLICABLE = {
    "all replicated jobs, all reasons": ({}, RJ1, BACKOFF, "", True),
    "all replicated jobs, matching reason": ({"onJobFailureReasons": [BACKOFF]}, RJ1, BACKOFF, "", True),
    "all replicated jobs, other reason": ({"onJobFailureReasons": [BACKOFF]}, RJ1, DEADLINE, "", False),
    "matching replicated job, all reasons": ({"targetReplicatedJobs": [RJ1]}, RJ1, BACKOFF, "", True),
    "matching replicated job and reason": (
        {"onJobFailureReasons": [BACKOFF], "targetReplicatedJobs": [RJ1]}, RJ1, BACKOFF, "", True),
    "matching replicated job, other reason": (
        {"onJobFailureReasons": [BACKOFF], "targetReplicatedJobs": [RJ1]}, RJ1, DEADLINE, "", False),
    "other replicated job, all reasons": ({"targetReplicatedJobs": [RJ1]}, RJ2, BACKOFF, "", False),
    "other replicated job, matching reason": (
        {"onJobFailureReasons": [BACKOFF], "targetReplicatedJobs": [RJ1]}, RJ2, BACKOFF, "", False),
    "other replicated job and reason": (
        {"onJobFailureReasons": [BACKOFF], "targetReplicatedJobs": [RJ1]}, RJ2, DEADLINE, "", False),
    "matching message pattern": (
        {"onJobFailureMessagePatterns": ["^job failed because.*"]}, RJ1, "", "job failed because of a bug", True),
    "other message": ({"onJobFailureMessagePatterns": ["^job failed because.*"]}, RJ1, "", "another error message",
                      False),
    "matching reason and message pattern": (
        {"onJobFailureReasons": [BACKOFF], "onJobFailureMessagePatterns": [".*bug.*"]}, RJ1, BACKOFF,
        "job failed because of a bug", True),
    "matching reason, other message": (
        {"onJobFailureReasons": [BACKOFF], "onJobFailureMessagePatterns": [".*bug.*"]}, RJ1, BACKOFF,
        "job failed due to something else", False),
}


@pytest.mark.parametrize(("rule", "replicated_job", "reason", "message", "expected"), RULE_IS_APPLICABLE.values(),
                         ids=RULE_IS_APPLICABLE.keys())
def test_should_match_rules_as_jobset_does_when_replaying_rule_is_applicable(
    rule: dict[str, Any], replicated_job: str, reason: str, message: str, expected: bool
) -> None:
    assert rule_is_applicable(rule, replicated_job, reason, message) is expected


# TestFindFirstFailedPolicyRuleAndJob: jobs failed 6 h, 12 h (job1DupEarlierFailure), 3 h and 1 h ago.
RJ = "test-replicatedJob"
JOB1 = FailedJob((RJ, 1), BACKOFF, "", -6)
JOB1_EARLIER = FailedJob((RJ, 4), BACKOFF, "", -12)
JOB2 = FailedJob((RJ, 2), DEADLINE, "", -3)
JOB3 = FailedJob((RJ, 3), FAILED_INDEXES, "", -1)
RULE1 = {"action": "RestartJobSet", "onJobFailureReasons": [BACKOFF]}
RULE2 = {"action": "RestartJobSet", "onJobFailureReasons": [DEADLINE]}
RULE3 = {"action": "RestartJobSet", "onJobFailureReasons": [FAILED_INDEXES]}
UNMATCHED = {"action": "RestartJobSet", "targetReplicatedJobs": ["fakeReplicatedJobName"]}

# (rules, failed jobs, index of the expected rule or None, expected job or None)
FIND_FIRST = {
    "0 failed jobs, 0 rules": ([], [], None, None),
    "1 failed job, 0 rules": ([], [JOB1], None, None),
    "1 failed job, 1 rule that does not match": ([RULE2], [JOB1], None, None),
    "1 failed job matching the first of 3 rules": ([RULE1, RULE2, RULE3], [JOB1], 0, JOB1),
    "1 failed job matching the second of 3 rules": ([RULE1, RULE2, RULE3], [JOB2], 1, JOB2),
    "1 failed job matching the third of 3 rules": ([RULE1, RULE2, RULE3], [JOB3], 2, JOB3),
    "2 failed jobs, 0 rules": ([], [JOB1, JOB2], None, None),
    "2 failed jobs, the second earlier, 1 rule matching neither": ([RULE2], [JOB1, JOB1_EARLIER], None, None),
    "2 failed jobs, the second earlier, 1 rule matching both": ([RULE1], [JOB1, JOB1_EARLIER], 0, JOB1_EARLIER),
    "2 failed jobs, the second earlier, the second of 2 rules matching both": (
        [UNMATCHED, RULE1], [JOB1, JOB1_EARLIER], 1, JOB1_EARLIER),
}


@pytest.mark.parametrize(("rules", "failed", "rule_index", "job"), FIND_FIRST.values(), ids=FIND_FIRST.keys())
def test_should_pick_the_rule_and_the_job_jobset_picks_when_replaying_find_first_failed(
    rules: list[dict[str, Any]], failed: list[FailedJob], rule_index: int | None, job: FailedJob | None
) -> None:
    assert find_first_failed_policy_rule_and_job(rules, failed) == (rule_index, job)


# TestApplyFailurePolicyRuleAction: (maxRestarts, action, rule name, status before, status after, reason). A
# status is (restarts, restartsCountTowardsMax, jobRestarts of "rjob" 0, jobRestartsCountTowardsMax of it);
# the reason is the Failed (terminal) or Restarting condition's. The RestartJob gate is on in every case.
APPLY = {
    "FailJobSet action": (0, "FailJobSet", None, (0, 0, 0, 0), (0, 0, 0, 0), "failed",
                          "FailJobSetFailurePolicyAction"),
    "RestartJobSet when restarts < maxRestarts increments restarts count and counts towards max": (
        5, "RestartJobSet", None, (1, 1, 0, 0), (2, 2, 0, 0), "restart", "DefaultFailurePolicy"),
    "RestartJobSet when restarts < maxRestarts with matching rule sets FailurePolicy_{RuleName} reason": (
        5, "RestartJobSet", "Rule1", (1, 1, 0, 0), (2, 2, 0, 0), "restart", "FailurePolicy_Rule1"),
    "RestartJobSet action when restarts >= maxRestarts fails the jobset": (
        2, "RestartJobSet", None, (2, 2, 0, 0), (2, 2, 0, 0), "failed", "ReachedMaxRestarts"),
    "RestartJobSetAndIgnoreMaxRestarts action does not count toward max restarts": (
        1, "RestartJobSetAndIgnoreMaxRestarts", None, (1, 1, 0, 0), (2, 1, 0, 0), "restart", "DefaultFailurePolicy"),
    "RestartJob action when combined restarts < maxRestarts increments jobRestart count and counts towards max": (
        5, "RestartJob", None, (0, 0, 0, 0), (0, 0, 1, 1), "restart-job", "DefaultFailurePolicy"),
    "RestartJob action when combined restarts >= maxRestarts fails the jobset": (
        2, "RestartJob", None, (1, 1, 1, 1), (1, 1, 1, 1), "failed", "ReachedMaxRestarts"),
    "RestartJobSet action when combined restarts >= maxRestarts and a previous individual restart fails the jobset": (
        2, "RestartJobSet", None, (1, 1, 1, 1), (1, 1, 1, 1), "failed", "ReachedMaxRestarts"),
    "RestartJobAndIgnoreMaxRestarts action does not count toward max restarts": (
        1, "RestartJobAndIgnoreMaxRestarts", None, (0, 0, 1, 0), (0, 0, 2, 0), "restart-job", "DefaultFailurePolicy"),
}


def _jobset(max_restarts: int) -> dict[str, Any]:
    """testutils.MakeJobSet("test-js").ReplicatedJob(MakeReplicatedJob("rjob").Replicas(1)).FailurePolicy(...)."""
    job_spec = {"completions": 1, "backoffLimit": 0, "template": {"spec": {}}}
    return {"spec": {"failurePolicy": {"maxRestarts": max_restarts},
                     "replicatedJobs": [{"name": "rjob", "replicas": 1, "template": {"spec": job_spec}}]}}


@pytest.mark.parametrize(("max_restarts", "action", "rule_name", "before", "after", "outcome", "reason"),
                         APPLY.values(), ids=APPLY.keys())
def test_should_change_the_status_as_jobset_does_when_replaying_apply_failure_policy_rule_action(
    max_restarts: int, action: str, rule_name: str | None, before: tuple[int, int, int, int],
    after: tuple[int, int, int, int], outcome: str, reason: str
) -> None:
    run = JobSetRun(_jobset(max_restarts), restart_job_gate=True)
    key = ("rjob", 0)
    run.restarts, run.restarts_counted = before[0], before[1]
    run.job_restarts[key], run.job_restarts_counted[key] = before[2], before[3]
    assert run.apply(action, key, rule_name=rule_name) == outcome
    status = (run.restarts, run.restarts_counted, run.job_restarts[key], run.job_restarts_counted[key])
    assert status == after
    assert (run.state == "failed", run.reason) == (outcome == "failed", reason)
