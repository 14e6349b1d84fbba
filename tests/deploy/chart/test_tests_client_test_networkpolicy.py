"""templates/tests/client-test-networkpolicy.yaml: the helm test pod's own NetworkPolicy (a test hook),
as behaviour: it reaches TF Serving's gRPC and REST ports and DNS, nothing else, and nothing reaches it."""

from __future__ import annotations

from tests.deploy.network_world import DNS, FRONTEND, INTERNET, world
from tests.deploy.rendering import render, render_values

TEMPLATE = "tests/client-test-networkpolicy.yaml"


def test_should_let_the_test_pod_reach_only_grpc_rest_and_dns_when_network_policy_is_enabled() -> None:
    rendered = render("defaults")
    assert rendered.one(TEMPLATE)["metadata"]["annotations"]["helm.sh/hook"] == "test"
    w = world(rendered)
    assert w.cluster.allows(w.test_client, w.serving, 8500)
    assert w.cluster.allows(w.test_client, w.serving, 8501)  # it predicts over REST too
    assert not w.cluster.allows(w.test_client, w.trainers[0], 9100)
    status_only = world(render_values({"client": {"test": {"predict": False}}}))
    assert not status_only.cluster.allows(status_only.test_client, status_only.serving, 8501)
    assert w.cluster.allows(w.test_client, DNS, 53, "UDP")
    assert not w.cluster.allows(w.test_client, INTERNET, 443)
    assert not w.cluster.allows(FRONTEND, w.test_client, 8080)


def test_should_render_no_test_policy_when_network_policy_is_disabled() -> None:
    assert render_values({"networkPolicy": {"enabled": False}}).by_template(TEMPLATE) == []
