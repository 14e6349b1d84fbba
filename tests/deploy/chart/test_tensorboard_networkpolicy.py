"""templates/tensorboard-networkpolicy.yaml, as behaviour: TensorBoard's port from the peers allowed to call
TF Serving, nothing else in; DNS only out."""

from __future__ import annotations

from tests.deploy.netpol import Cluster, pod_from_template
from tests.deploy.network_world import DNS, FRONTEND, INTERNET, NAMESPACES, STRANGER
from tests.deploy.rendering import NAMESPACE, render, render_values

TEMPLATE = "tensorboard-networkpolicy.yaml"


def _tensorboard(rendered):
    deployment = rendered.one("tensorboard-deployment.yaml")
    pod = pod_from_template("tensorboard-0", NAMESPACE, deployment["spec"]["template"], "10.0.4.1")
    return Cluster(NAMESPACES, [obj for _, obj in rendered if obj["kind"] == "NetworkPolicy"]), pod


def test_should_admit_only_the_allowed_peers_on_its_port_when_policies_are_restricted() -> None:
    cluster, tensorboard = _tensorboard(render("monitoring"))  # servingIngressFrom: the frontend namespace
    assert cluster.allows(FRONTEND, tensorboard, 6006)
    assert not cluster.allows(STRANGER, tensorboard, 6006)
    assert not cluster.allows(FRONTEND, tensorboard, 8080)
    assert cluster.allows(tensorboard, DNS, 53, "UDP") and not cluster.allows(tensorboard, INTERNET, 443)


def test_should_admit_any_peer_on_its_port_when_serving_ingress_is_open() -> None:
    cluster, tensorboard = _tensorboard(render_values({"tensorboard": {"enabled": True}}))
    assert cluster.allows(STRANGER, tensorboard, 6006)
    assert render_values({"tensorboard": {"enabled": True}, "networkPolicy": {"enabled": False}}).by_template(
        TEMPLATE) == []
