"""templates/serving-pdb.yaml."""

from __future__ import annotations

from tests.deploy.rendering import render, render_values

TEMPLATE = "serving-pdb.yaml"


def test_should_allow_one_unavailable_replica_when_defaults_are_used() -> None:
    rendered = render("defaults")
    spec = rendered.one(TEMPLATE)["spec"]
    assert spec["maxUnavailable"] == 1 and "minAvailable" not in spec
    assert spec["selector"]["matchLabels"] == rendered.one("serving-deployment.yaml")["spec"]["selector"]["matchLabels"]


def test_should_use_min_available_when_pdb_min_available_is_set() -> None:
    spec = render("monitoring").one(TEMPLATE)["spec"]
    assert spec["minAvailable"] == 1 and "maxUnavailable" not in spec


def test_should_render_no_pdb_when_pdb_create_is_false() -> None:
    assert render_values({"serving": {"pdb": {"create": False}}}).by_template(TEMPLATE) == []


def test_should_let_drains_evict_unready_replicas_when_no_model_is_available() -> None:
    """Replicas wait (not Ready) until the first version exists: with the default policy
    (IfHealthyBudget) such pods count against the budget and `kubectl drain` blocks; AlwaysAllow lets
    them go (Kubernetes docs, "Specifying a Disruption Budget", "Unhealthy Pod Eviction Policy")."""
    for name in ("defaults", "monitoring"):
        assert render(name).one(TEMPLATE)["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
