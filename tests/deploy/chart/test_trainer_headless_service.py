"""templates/trainer-headless-service.yaml."""

from __future__ import annotations

from tests.deploy.rendering import render

TEMPLATE = "trainer-headless-service.yaml"


def test_should_be_headless_and_publish_unready_pods_when_mode_is_indexed_job() -> None:
    rendered = render("indexed_job")
    service = rendered.one(TEMPLATE)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True  # peers resolve before anyone is ready
    template = rendered.one("trainer-job.yaml")["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    # every service port targets a named container port of the same number
    named = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]}
    assert {p["targetPort"]: p["port"] for p in service["spec"]["ports"]}.items() <= named.items()
    assert service["metadata"]["name"] == template["spec"]["subdomain"]


def test_should_leave_the_headless_service_to_jobset_when_mode_is_jobset() -> None:
    assert render("defaults").by_template(TEMPLATE) == []  # JobSet creates one named after its subdomain
