"""templates/serving-networkpolicy.yaml."""

from __future__ import annotations

from tests.deploy.rendering import render, render_values

TEMPLATE = "serving-networkpolicy.yaml"


def test_should_open_grpc_and_rest_to_all_when_no_ingress_peers_are_set() -> None:
    (rule,) = render("defaults").one(TEMPLATE)["spec"]["ingress"]
    assert "from" not in rule
    assert sorted(p["port"] for p in rule["ports"]) == [8500, 8501]


def test_should_admit_listed_peers_and_the_test_pod_when_serving_ingress_from_is_set() -> None:
    rendered = render("monitoring")
    (rule,) = rendered.one(TEMPLATE)["spec"]["ingress"]
    assert rule["from"][0] == {"namespaceSelector": {"matchLabels": {"name": "frontend"}}}
    test_pod_labels = rendered.one("tests/client-test-pod.yaml")["metadata"]["labels"]
    assert rule["from"][1]["podSelector"]["matchLabels"].items() <= test_pod_labels.items()


def test_should_allow_only_dns_egress_when_external_egress_is_off() -> None:
    egress = render("monitoring").one(TEMPLATE)["spec"]["egress"]
    assert egress == [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]
    assert render("defaults").one(TEMPLATE)["spec"]["egress"] == [{}]


def test_should_render_no_policy_when_network_policy_is_disabled() -> None:
    rendered = render_values({"networkPolicy": {"enabled": False}})
    assert [o["kind"] for _, o in rendered if o["kind"] == "NetworkPolicy"] == []
