"""templates/trainer-networkpolicy.yaml."""

from __future__ import annotations

from tests.deploy.rendering import render

TEMPLATE = "trainer-networkpolicy.yaml"


def test_should_admit_only_peers_on_the_cluster_port_when_defaults_are_used() -> None:
    rendered = render("defaults")
    policy = rendered.one(TEMPLATE)
    pod_labels = rendered.one("trainer-job.yaml")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    peers, metrics = policy["spec"]["ingress"]
    assert peers["from"][0]["podSelector"] == policy["spec"]["podSelector"]
    assert peers["ports"] == [{"port": 2222, "protocol": "TCP"}]
    assert metrics["ports"] == [{"port": 9100, "protocol": "TCP"}] and "from" not in metrics


def test_should_limit_egress_to_peers_and_dns_when_external_egress_is_off() -> None:
    policy = render("monitoring").one(TEMPLATE)
    to_peers, dns = policy["spec"]["egress"]
    assert to_peers["ports"] == [{"port": 2222, "protocol": "TCP"}]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert policy["spec"]["ingress"][1]["from"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]


def test_should_cover_tfjob_pods_when_mode_is_tfjob() -> None:
    rendered = render("tfjob")
    policy = rendered.one(TEMPLATE)
    labels = rendered.one("trainer-tfjob.yaml")["spec"]["tfReplicaSpecs"]["Worker"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
