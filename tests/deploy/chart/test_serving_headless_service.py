"""templates/serving-headless-service.yaml: every Ready replica's address, for clients that balance
themselves (gRPC round_robin over dns:///)."""

from __future__ import annotations

from tests.deploy.rendering import containers, render

TEMPLATE = "serving-headless-service.yaml"


def test_should_resolve_to_every_ready_replica_when_the_headless_service_is_enabled() -> None:
    rendered = render("monitoring")
    headless, service = rendered.one(TEMPLATE), rendered.one("serving-service.yaml")
    deployment = rendered.one("serving-deployment.yaml")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False  # a replica still loading is not resolved
    assert headless["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert headless["metadata"]["name"] == f"{service['metadata']['name']}-headless"
    # No port mapping on a headless Service: clients dial the container ports directly.
    container_ports = {p["name"]: p["containerPort"] for p in containers(deployment)[0]["ports"]}
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == container_ports


def test_should_render_no_headless_service_by_default() -> None:
    assert render("defaults").by_template(TEMPLATE) == []
