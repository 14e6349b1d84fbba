"""templates/serving-service.yaml: gRPC 8500 and REST 8501 in front of the serving pods."""

from __future__ import annotations

from tests.deploy.rendering import render, render_values

TEMPLATE = "serving-service.yaml"


def test_should_expose_grpc_and_rest_when_defaults_are_used() -> None:
    rendered = render("defaults")
    service = rendered.one(TEMPLATE)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert (ports["grpc"]["port"], ports["grpc"]["targetPort"]) == (8500, "grpc")
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (8501, "http")
    pod_labels = rendered.one("serving-deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())


def test_should_map_service_ports_to_named_container_ports_when_service_ports_are_set() -> None:
    service = render_values({"serving": {"service": {"ports": {"grpc": 9000, "http": 80}, "type": "LoadBalancer"}}})
    spec = service.one(TEMPLATE)["spec"]
    assert spec["type"] == "LoadBalancer"
    assert sorted((p["port"], p["targetPort"]) for p in spec["ports"]) == [(80, "http"), (9000, "grpc")]


def test_should_render_no_serving_objects_when_serving_is_disabled() -> None:
    rendered = render_values({"serving": {"enabled": False}})
    assert not [path for path, _ in rendered if "/serving-" in path or "/tests/" in path]
