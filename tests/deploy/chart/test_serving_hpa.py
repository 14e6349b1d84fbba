"""templates/serving-hpa.yaml."""

from __future__ import annotations

from tests.deploy.rendering import render

TEMPLATE = "serving-hpa.yaml"


def test_should_scale_the_deployment_on_cpu_and_memory_when_autoscaling_is_enabled() -> None:
    rendered = render("monitoring")
    hpa = rendered.one(TEMPLATE)
    target = hpa["spec"]["scaleTargetRef"]
    deployment = rendered.one("serving-deployment.yaml")["metadata"]["name"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    utilisation = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]}
    assert utilisation == {"cpu": 70, "memory": 80}


def test_should_render_no_hpa_when_autoscaling_is_disabled() -> None:
    assert render("defaults").by_template(TEMPLATE) == []
