"""tests/deploy/netpol.py against the examples of the Kubernetes documentation
(https://kubernetes.io/docs/concepts/services-networking/network-policies/), each with the behaviour the
page states for it: the evaluator the chart's policy tests rely on answers as Kubernetes says."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.netpol import Cluster, Endpoint, Namespace, selector_matches

NAMESPACES = [Namespace("default"), Namespace("myproject", {"project": "myproject"}), Namespace("other"),
              Namespace("alice", {"user": "alice"})]
DB = Endpoint("db", "10.1.0.10", "default", {"role": "db"}, {"redis": (6379, "TCP")})
FRONTEND = Endpoint("frontend", "10.1.0.11", "default", {"role": "frontend"})
BACKEND = Endpoint("backend", "10.1.0.12", "default", {"role": "backend"})
IN_MYPROJECT = Endpoint("any", "10.1.0.13", "myproject", {"app": "x"})
FRONTEND_ELSEWHERE = Endpoint("frontend-other", "10.1.0.14", "other", {"role": "frontend"})


def _policy(spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": namespace}, "spec": spec}


# The page's first example, "test-network-policy".
EXAMPLE = _policy({
    "podSelector": {"matchLabels": {"role": "db"}},
    "policyTypes": ["Ingress", "Egress"],
    "ingress": [{
        "from": [
            {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
            {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
            {"podSelector": {"matchLabels": {"role": "frontend"}}},
        ],
        "ports": [{"protocol": "TCP", "port": 6379}],
    }],
    "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"protocol": "TCP", "port": 5978}]}],
})


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        (FRONTEND, True),  # "any pod in the default namespace with the label role=frontend"
        (IN_MYPROJECT, True),  # "any pod in a namespace with the label project=myproject"
        (Endpoint("ext", "172.17.0.7"), True),  # "172.17.0.0-172.17.0.255 and 172.17.2.0-172.17.255.255"
        (Endpoint("ext", "172.17.2.1"), True),
        (Endpoint("ext", "172.17.1.9"), False),  # the except block
        (BACKEND, False),
        (FRONTEND_ELSEWHERE, False),  # a podSelector alone selects pods of the policy's namespace
    ],
    ids=["frontend", "myproject-ns", "ip-low", "ip-high", "ip-except", "backend", "frontend-other-ns"],
)
def test_should_admit_the_documented_sources_when_the_example_policy_isolates_db(source, allowed) -> None:
    cluster = Cluster(NAMESPACES, [EXAMPLE])
    assert cluster.allows(source, DB, 6379) is allowed
    assert cluster.allows(source, DB, 6380) is False  # "on TCP port 6379" only


def test_should_limit_egress_to_the_cidr_and_port_when_the_example_policy_isolates_db() -> None:
    cluster = Cluster(NAMESPACES, [EXAMPLE])
    assert cluster.allows(DB, Endpoint("svc", "10.0.0.5"), 5978)
    assert not cluster.allows(DB, Endpoint("svc", "10.0.0.5"), 5979)
    assert not cluster.allows(DB, Endpoint("svc", "10.0.1.5"), 5978)
    assert not cluster.allows(DB, FRONTEND, 80)  # egress isolated: pods are not in 10.0.0.0/24
    # pods the policy does not select are not isolated
    assert cluster.allows(FRONTEND, BACKEND, 1234)


def test_should_require_both_namespace_and_pod_when_one_peer_has_both_selectors() -> None:
    """The page's "and" versus "or" example."""
    both = _policy({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"user": "alice"}}, "podSelector": {"matchLabels": {"role": "client"}}},
    ]}]})
    either = _policy({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"user": "alice"}}}, {"podSelector": {"matchLabels": {"role": "client"}}},
    ]}]})
    alice_client = Endpoint("c", "10.1.1.1", "alice", {"role": "client"})
    alice_other = Endpoint("o", "10.1.1.2", "alice", {"role": "other"})
    local_client = Endpoint("l", "10.1.1.3", "default", {"role": "client"})
    assert [Cluster(NAMESPACES, [both]).allows(p, DB, 80) for p in (alice_client, alice_other, local_client)] == [
        True, False, False]
    assert [Cluster(NAMESPACES, [either]).allows(p, DB, 80) for p in (alice_client, alice_other, local_client)] == [
        True, True, True]


def test_should_deny_or_allow_all_when_the_default_policies_are_used() -> None:
    deny = _policy({"podSelector": {}, "policyTypes": ["Ingress"]})
    allow = _policy({"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]})
    assert not Cluster(NAMESPACES, [deny]).allows(FRONTEND, DB, 80)
    assert Cluster(NAMESPACES, [deny]).allows(DB, IN_MYPROJECT, 80)  # egress is not isolated by it
    assert Cluster(NAMESPACES, [deny, allow]).allows(FRONTEND, DB, 80)  # policies are additive
    deny_egress = _policy({"podSelector": {}, "policyTypes": ["Egress"]})
    assert not Cluster(NAMESPACES, [deny_egress]).allows(DB, IN_MYPROJECT, 80)


def test_should_target_a_port_range_when_end_port_is_set() -> None:
    """The page's endPort example: TCP 32000-32768 to 10.0.0.0/24."""
    policy = _policy({"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Egress"], "egress": [{
        "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
        "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}]}]})
    cluster = Cluster(NAMESPACES, [policy])
    target = Endpoint("t", "10.0.0.9")
    assert [cluster.allows(DB, target, p) for p in (31999, 32000, 32768, 32769)] == [False, True, True, False]
    assert not cluster.allows(DB, target, 32000, "UDP")


def test_should_resolve_named_ports_against_the_destination_when_a_port_is_a_name() -> None:
    policy = _policy({"podSelector": {"matchLabels": {"role": "db"}}, "ingress": [{"ports": [{"port": "redis"}]}]})
    cluster = Cluster(NAMESPACES, [policy])
    assert cluster.allows(FRONTEND, DB, 6379)
    assert not cluster.allows(FRONTEND, DB, 6380)


def test_should_default_policy_types_from_the_rules_when_policy_types_is_absent() -> None:
    assert Cluster.policy_types(_policy({"podSelector": {}})) == ["Ingress"]
    assert Cluster.policy_types(_policy({"podSelector": {}, "egress": [{}]})) == ["Ingress", "Egress"]


@pytest.mark.parametrize(
    ("expression", "labels", "matches"),
    [
        ({"key": "tier", "operator": "In", "values": ["a", "b"]}, {"tier": "a"}, True),
        ({"key": "tier", "operator": "In", "values": ["a"]}, {}, False),
        ({"key": "tier", "operator": "NotIn", "values": ["a"]}, {}, True),
        ({"key": "tier", "operator": "NotIn", "values": ["a"]}, {"tier": "a"}, False),
        ({"key": "tier", "operator": "Exists"}, {"tier": ""}, True),
        ({"key": "tier", "operator": "DoesNotExist"}, {"tier": "x"}, False),
    ],
    ids=["in", "in-missing", "notin-missing", "notin", "exists", "doesnotexist"],
)
def test_should_match_label_selector_requirements_when_match_expressions_are_used(expression, labels, matches) -> None:
    assert selector_matches({"matchExpressions": [expression]}, labels) is matches
    assert selector_matches({}, labels) is True
