"""templates/tests/client-test-networkpolicy.yaml: the helm test pod's own NetworkPolicy (a test hook)."""

from __future__ import annotations

from tests.deploy.rendering import render, render_values

TEMPLATE = "tests/client-test-networkpolicy.yaml"


def test_should_let_the_test_pod_reach_only_grpc_and_dns_when_network_policy_is_enabled() -> None:
    rendered = render("defaults")
    policy = rendered.one(TEMPLATE)
    assert policy["metadata"]["annotations"]["helm.sh/hook"] == "test"
    pod_labels = rendered.one("tests/client-test-pod.yaml")["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    to_serving = policy["spec"]["egress"][0]
    assert to_serving["ports"] == [{"port": 8500, "protocol": "TCP"}]
    serving_labels = rendered.one("serving-deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert to_serving["to"][0]["podSelector"]["matchLabels"].items() <= serving_labels.items()
    assert "ingress" not in policy["spec"]


def test_should_render_no_test_policy_when_network_policy_is_disabled() -> None:
    assert render_values({"networkPolicy": {"enabled": False}}).by_template(TEMPLATE) == []
