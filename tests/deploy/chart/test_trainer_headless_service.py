"""templates/trainer-headless-service.yaml."""

from __future__ import annotations

from tests.deploy.rendering import render

TEMPLATE = "trainer-headless-service.yaml"


def test_should_be_headless_and_publish_unready_pods_when_mode_is_indexed_job() -> None:
    service = render("defaults").one(TEMPLATE)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("cluster", 2222), ("metrics", 9100)}
    assert set(service["spec"]["selector"]) == {
        "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
