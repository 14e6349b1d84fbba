"""templates/tensorboard-service.yaml."""

from __future__ import annotations

from tests.deploy.rendering import containers, render

TEMPLATE = "tensorboard-service.yaml"


def test_should_reach_tensorboard_through_its_service_when_enabled() -> None:
    rendered = render("monitoring")
    service, deployment = rendered.one(TEMPLATE), rendered.one("tensorboard-deployment.yaml")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in containers(deployment)[0]["ports"]}
