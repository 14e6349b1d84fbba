"""templates/trainer-podgroup.yaml: Volcano gangs every trainer pod of the search, and Kueue's labels sit on
the workload object only (a JobSet is one Kueue workload)."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.deploy.pods import workload_pods
from tests.deploy.rendering import jobset_child_jobs, render, render_values, trainer_workloads

TEMPLATE = "trainer-podgroup.yaml"
GROUP_NAME = "scheduling.k8s.io/group-name"


@pytest.mark.parametrize("values", [{"trainer": {"volcano": {"enabled": True}}},
                                    {"trainer": {"volcano": {"enabled": True}, "groups": 3, "workers": 2}},
                                    {"trainer": {"volcano": {"enabled": True}, "mode": "indexedJob", "groups": 2}}],
                         ids=["jobset", "jobset-groups", "indexed-job-groups"])
def test_should_gang_every_pod_of_the_search_when_volcano_is_enabled(values: dict) -> None:
    rendered = render_values(values)
    group = rendered.one(TEMPLATE)
    pods = [pod for workload in trainer_workloads(rendered) for pod in workload_pods(workload)]
    assert group["spec"]["minMember"] == len(pods)  # counted from the pods JobSet / the Job controller make
    for pod in pods:
        assert pod.metadata["annotations"][GROUP_NAME] == group["metadata"]["name"]
        assert pod.spec["schedulerName"] == "volcano"


def test_should_refuse_volcano_for_a_tfjob() -> None:
    with pytest.raises(helm.HelmRenderError, match="gang-scheduler-name=volcano"):
        render_values({"trainer": {"mode": "tfjob", "volcano": {"enabled": True}}})


def test_should_label_only_the_jobset_for_kueue_so_that_it_is_one_workload() -> None:
    jobset = render("jobset").one("trainer-jobset.yaml")
    labels = jobset["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert labels["kueue.x-k8s.io/priority-class"] == "research"
    for job in jobset_child_jobs(jobset):  # JobSet copies no Kueue label to its Jobs or pods from the chart
        template_labels = job["spec"]["template"]["metadata"]["labels"]
        assert not any(key.startswith("kueue.x-k8s.io/") for key in template_labels)


def test_should_refuse_a_kueue_queue_for_indexed_job_groups() -> None:
    with pytest.raises(helm.HelmRenderError, match="3 Kueue workloads that can be admitted in part"):
        render_values({"trainer": {"mode": "indexedJob", "groups": 2, "queueName": "q"}})
    assert render_values({"trainer": {"mode": "indexedJob", "queueName": "q"}}).one("trainer-job.yaml")


def test_should_render_no_pod_group_by_default() -> None:
    assert render("defaults").by_template(TEMPLATE) == []
