"""templates/trainer-podmonitor.yaml: the trainer pods' metrics port, scraped by the Prometheus Operator."""

from __future__ import annotations

from tests.deploy.network_world import world
from tests.deploy.rendering import containers, render, render_values, trainer_workloads

TEMPLATE = "trainer-podmonitor.yaml"


def test_should_select_the_trainer_pods_and_their_metrics_port_when_enabled() -> None:
    rendered = render("monitoring")
    monitor = rendered.one(TEMPLATE)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    for workload in trainer_workloads(rendered):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        ports = {p["name"]: p["containerPort"] for p in containers(workload)[0]["ports"]}
        assert endpoint["port"] in ports
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [rendered.one(TEMPLATE)["metadata"]["namespace"]]}
    w = world(rendered)  # the serving pods do not carry the trainer's labels
    assert w.serving is not None and not selector.items() <= w.serving.labels.items()


def test_should_render_no_pod_monitor_by_default() -> None:
    assert render_values({}).by_template(TEMPLATE) == []
