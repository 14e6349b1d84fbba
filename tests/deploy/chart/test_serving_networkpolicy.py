"""templates/serving-networkpolicy.yaml, as behaviour (tests/deploy/netpol.py evaluates the rendered
policies): who can call TF Serving's gRPC and REST ports and scrape its metrics, where it can connect."""

from __future__ import annotations

import pytest

from tests.deploy.network_world import DNS, FRONTEND, INTERNET, PROMETHEUS, STRANGER, world
from tests.deploy.rendering import VALUE_SETS, render, render_values

SERVING_SETS = [name for name, values in VALUE_SETS.items() if values.get("serving", {}).get("enabled", True)]


@pytest.mark.parametrize("value_set", SERVING_SETS)
def test_should_admit_serving_ingress_from_peers_and_the_test_pod_when_rendered(value_set: str) -> None:
    rendered = render(value_set)
    w = world(rendered)
    grpc, http = (rendered.values["serving"]["containerPorts"][k] for k in ("grpc", "http"))
    restricted = bool(rendered.values["networkPolicy"]["servingIngressFrom"])
    assert w.serving is not None and w.test_client is not None
    assert w.cluster.allows(w.test_client, w.serving, grpc)  # helm test always works
    assert w.cluster.allows(FRONTEND, w.serving, grpc) and w.cluster.allows(FRONTEND, w.serving, http)
    assert w.cluster.allows(STRANGER, w.serving, grpc) is not restricted
    assert not w.cluster.allows(FRONTEND, w.serving, 9999)  # only the serving ports


@pytest.mark.parametrize("value_set", SERVING_SETS)
def test_should_let_prometheus_scrape_serving_when_a_service_monitor_is_on(value_set: str) -> None:
    """The ServiceMonitor scrapes the REST port (TF Serving serves its metrics there): a restricted
    servingIngressFrom must not lock Prometheus out."""
    rendered = render(value_set)
    w = world(rendered)
    http = rendered.values["serving"]["containerPorts"]["http"]
    if rendered.values["metrics"]["serviceMonitor"]["enabled"]:
        assert w.cluster.allows(PROMETHEUS, w.serving, http)


def test_should_admit_only_listed_scrapers_to_metrics_when_both_lists_are_restricted() -> None:
    rendered = render("monitoring")
    w = world(rendered)
    policy = rendered.values["networkPolicy"]
    assert policy["servingIngressFrom"] and policy["metricsIngressFrom"]
    assert w.cluster.allows(PROMETHEUS, w.serving, 8501)
    assert not w.cluster.allows(PROMETHEUS, w.serving, 8500)  # scraping needs REST, not gRPC
    assert not w.cluster.allows(STRANGER, w.serving, 8501)


def test_should_lock_prometheus_out_when_no_service_monitor_and_ingress_is_restricted() -> None:
    values = {"networkPolicy": {"servingIngressFrom": [{"namespaceSelector": {"matchLabels": {"name": "frontend"}}}],
                                "metricsIngressFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}}
    w = world(render_values(values))
    assert not w.cluster.allows(PROMETHEUS, w.serving, 8501)


@pytest.mark.parametrize("value_set", SERVING_SETS)
def test_should_resolve_names_and_reach_the_internet_only_when_allowed(value_set: str) -> None:
    rendered = render(value_set)
    w = world(rendered)
    assert w.cluster.allows(w.serving, DNS, 53, "UDP")
    assert w.cluster.allows(w.serving, INTERNET, 443) is rendered.values["networkPolicy"]["allowExternalEgress"]


def test_should_render_no_policy_when_network_policy_is_disabled() -> None:
    rendered = render_values({"networkPolicy": {"enabled": False}})
    assert [o["kind"] for _, o in rendered if o["kind"] == "NetworkPolicy"] == []
