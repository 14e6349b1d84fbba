"""templates/trainer-networkpolicy.yaml, as behaviour: the rendered policies are evaluated
(tests/deploy/netpol.py, Kubernetes' NetworkPolicy semantics) to ask who can reach a trainer pod, and
where a trainer pod can connect, on which port."""

from __future__ import annotations

import pytest

from tests.deploy.network_world import DNS, FRONTEND, INTERNET, NCCL_PORTS, PROMETHEUS, STRANGER, world
from tests.deploy.rendering import VALUE_SETS, render, render_values

TRAINER_SETS = [name for name, values in VALUE_SETS.items() if values.get("trainer", {}).get("enabled", True)]


@pytest.mark.parametrize("value_set", TRAINER_SETS)
def test_should_let_workers_reach_each_other_on_any_tcp_port_when_policies_are_on(value_set: str) -> None:
    """NCCL bootstraps and moves data on ephemeral ports, besides the strategy's cluster port."""
    w = world(render(value_set))
    trainer = render(value_set).values["trainer"]
    ports = [trainer["containerPorts"]["cluster"], trainer["containerPorts"]["metrics"], 1, 65535, *NCCL_PORTS]
    assert w.cluster.policies, "the value set renders NetworkPolicies"
    for source in w.trainers:
        for destination in w.trainers:
            if source is not destination:
                blocked = [p for p in ports if not w.cluster.allows(source, destination, p)]
                assert blocked == [], f"{source.name} -> {destination.name}"


@pytest.mark.parametrize("value_set", TRAINER_SETS)
def test_should_resolve_names_and_reach_the_internet_only_when_allowed(value_set: str) -> None:
    rendered = render(value_set)
    w = world(rendered)
    chief = w.trainers[0]
    assert w.cluster.allows(chief, DNS, 53, "UDP") and w.cluster.allows(chief, DNS, 53, "TCP")
    external = rendered.values["networkPolicy"]["allowExternalEgress"]
    assert w.cluster.allows(chief, INTERNET, 443) is external


@pytest.mark.parametrize("value_set", TRAINER_SETS)
def test_should_keep_other_pods_out_of_the_group_when_policies_are_on(value_set: str) -> None:
    rendered = render(value_set)
    w = world(rendered)
    cluster_port = rendered.values["trainer"]["containerPorts"]["cluster"]
    for port in [cluster_port, *NCCL_PORTS]:
        assert not w.cluster.allows(STRANGER, w.trainers[0], port)
        assert not w.cluster.allows(FRONTEND, w.trainers[-1], port)


@pytest.mark.parametrize("value_set", TRAINER_SETS)
def test_should_let_scrapers_reach_the_chief_metrics_when_metrics_ingress_from_allows_them(value_set: str) -> None:
    rendered = render(value_set)
    w = world(rendered)
    metrics = rendered.values["trainer"]["containerPorts"]["metrics"]
    restricted = bool(rendered.values["networkPolicy"]["metricsIngressFrom"])
    assert w.cluster.allows(PROMETHEUS, w.trainers[0], metrics)
    assert w.cluster.allows(FRONTEND, w.trainers[0], metrics) is not restricted


def test_should_allow_everything_when_network_policy_is_disabled() -> None:
    w = world(render_values({"networkPolicy": {"enabled": False}}))
    assert w.cluster.policies == []
    assert w.cluster.allows(STRANGER, w.trainers[0], 2222) and w.cluster.allows(w.trainers[0], INTERNET, 443)


GROUP_SETS = [name for name in TRAINER_SETS if render(name).values["trainer"]["groups"] > 1]


@pytest.mark.parametrize("value_set", GROUP_SETS)
def test_should_let_every_worker_reach_the_oracle_and_keep_others_out_when_groups_are_set(value_set: str) -> None:
    rendered = render(value_set)
    w = world(rendered)
    assert w.oracle is not None and GROUP_SETS == ["groups", "groups_indexed_job"]
    oracle_port = rendered.values["trainer"]["containerPorts"]["oracle"]
    assert w.oracle.ports["oracle"] == (oracle_port, "TCP")
    workers = [t for t in w.trainers if t is not w.oracle]
    assert len(workers) == rendered.values["trainer"]["groups"] * rendered.values["trainer"]["workers"]
    assert all(w.cluster.allows(worker, w.oracle, oracle_port) for worker in workers)
    for outsider in (STRANGER, FRONTEND, PROMETHEUS):
        assert not w.cluster.allows(outsider, w.oracle, oracle_port), outsider.name
    assert w.cluster.allows(w.oracle, DNS, 53, "UDP")
