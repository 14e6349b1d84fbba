"""An evaluator of ``networking.k8s.io/v1`` NetworkPolicy objects: "may pod A open a connection to pod B
on TCP port P?", following the semantics the Kubernetes documentation gives
(https://kubernetes.io/docs/concepts/services-networking/network-policies/ and the API reference of
NetworkPolicySpec), so that chart tests ask about behaviour instead of restating the templates:

- A policy applies to the pods of its own namespace that its ``podSelector`` selects (``{}``: all).
  ``policyTypes`` defaults to ``["Ingress"]``, plus ``"Egress"`` when the policy has egress rules.
- "By default, a pod is non-isolated for egress/ingress": a pod that no policy of that type selects
  allows every connection in that direction. A selected pod allows only what the union of the rules of
  the policies selecting it allows ("policies are additive"; their order does not matter).
- "For a connection from a source pod to a destination pod to be allowed, both the egress policy on the
  source pod and the ingress policy on the destination pod need to allow the connection."
- A rule allows a peer if its ``from``/``to`` is empty or absent (any peer) or one peer matches, and a
  port if its ``ports`` is empty or absent (any port, any protocol) or one entry matches.
- A peer is ``podSelector`` alone (pods of the policy's namespace), ``namespaceSelector`` alone (all pods
  of the selected namespaces), both in one element (the selected pods in the selected namespaces), or
  ``ipBlock`` (``cidr`` minus ``except``; applied here to the address of the other end).
- A port entry: ``protocol`` (default TCP), ``port`` as a number or a name (a named port is resolved
  against the destination pod's container ports), ``endPort`` (a range from ``port``, numeric only).
- Label selectors: ``matchLabels`` and ``matchExpressions`` (In, NotIn, Exists, DoesNotExist), ANDed; an
  empty selector selects everything.

Not modelled: traffic a pod makes to itself, the node's own traffic (kubelet probes are always allowed),
how a CNI treats ipBlock for pod addresses (implementation-defined, as the docs say).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def all_labels(self) -> dict[str, str]:
        # The API server sets this label on every namespace (immutable, Kubernetes 1.22+).
        return {**self.labels, "kubernetes.io/metadata.name": self.name}


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace set) or an address outside the cluster (namespace None)."""

    name: str
    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, tuple[int, str]] = field(default_factory=dict)
    """Named container ports: name -> (number, protocol)."""

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector: matchLabels and matchExpressions, all of them; empty selects all."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in {"In", "NotIn", "Exists", "DoesNotExist"}:
            raise ValueError(f"Expected a label selector operator. Received: {operator!r}")
    return True


class Cluster:
    """Namespaces, endpoints and the NetworkPolicies that are in force."""

    def __init__(self, namespaces: Iterable[Namespace], policies: Iterable[Mapping[str, Any]]) -> None:
        self.namespaces = {ns.name: ns for ns in namespaces}
        self.policies = [p for p in policies if p["kind"] == "NetworkPolicy"]
        for policy in self.policies:
            if policy["apiVersion"] != "networking.k8s.io/v1":
                raise ValueError(f"Expected networking.k8s.io/v1. Received: {policy['apiVersion']}")

    # -- the question -------------------------------------------------------------------------------
    def allows(self, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """May `source` open a connection to `destination` on `port`/`protocol`?"""
        egress_ok = (not source.is_pod) or self._direction_allows("Egress", source, destination, port, protocol)
        ingress_ok = (not destination.is_pod) or self._direction_allows(
            "Ingress", destination, source, port, protocol
        )
        return egress_ok and ingress_ok

    # -- semantics ----------------------------------------------------------------------------------
    @staticmethod
    def policy_types(policy: Mapping[str, Any]) -> list[str]:
        spec = policy["spec"]
        if spec.get("policyTypes"):
            return list(spec["policyTypes"])
        return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]

    def selecting(self, pod: Endpoint, direction: str) -> list[Mapping[str, Any]]:
        """The policies of `direction` that select `pod` (an empty list: the pod is not isolated)."""
        return [
            policy for policy in self.policies
            if policy["metadata"].get("namespace", "default") == pod.namespace
            and direction in self.policy_types(policy)
            and selector_matches(policy["spec"].get("podSelector"), pod.labels)
        ]

    def _direction_allows(self, direction: str, pod: Endpoint, other: Endpoint, port: int, protocol: str) -> bool:
        policies = self.selecting(pod, direction)
        if not policies:
            return True
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        # Named ports are resolved against the pod that receives the connection.
        receiver = pod if direction == "Ingress" else other
        for policy in policies:
            namespace = policy["metadata"].get("namespace", "default")
            for rule in policy["spec"].get(key) or []:
                if self._peers_match(rule.get(peers_key), other, namespace) and _ports_match(
                    rule.get("ports"), port, protocol, receiver
                ):
                    return True
        return False

    def _peers_match(self, peers: Sequence[Mapping[str, Any]] | None, other: Endpoint, namespace: str) -> bool:
        if not peers:
            return True
        return any(self._peer_matches(peer, other, namespace) for peer in peers)

    def _peer_matches(self, peer: Mapping[str, Any], other: Endpoint, namespace: str) -> bool:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            address = ipaddress.ip_address(other.ip)
            if address not in ipaddress.ip_network(block["cidr"]):
                return False
            return not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except") or [])
        if not other.is_pod:
            return False  # pod and namespace selectors select pods only
        if "namespaceSelector" in peer:
            ns = self.namespaces.get(other.namespace or "")
            labels = ns.all_labels() if ns else {"kubernetes.io/metadata.name": other.namespace or ""}
            if not selector_matches(peer["namespaceSelector"], labels):
                return False
        elif other.namespace != namespace:
            return False  # a podSelector alone selects pods of the policy's own namespace
        if "podSelector" in peer:
            return selector_matches(peer["podSelector"], other.labels)
        return True


def _ports_match(ports: Sequence[Mapping[str, Any]] | None, port: int, protocol: str, receiver: Endpoint) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True  # a protocol alone: every port of it
        value = entry["port"]
        if isinstance(value, str):
            named = receiver.ports.get(value) if receiver.is_pod else None
            if named is not None and named == (port, protocol):
                return True
            continue
        end = entry.get("endPort", value)
        if value <= port <= end:
            return True
    return False


def pod_from_template(
    name: str, namespace: str, template: Mapping[str, Any], ip: str, extra_labels: Mapping[str, str] | None = None
) -> Endpoint:
    """An endpoint for a pod created from a rendered pod template (labels and named container ports)."""
    ports = {
        p["name"]: (p["containerPort"], p.get("protocol", "TCP"))
        for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p
    }
    labels = {**template["metadata"].get("labels", {}), **(extra_labels or {})}
    return Endpoint(name=name, ip=ip, namespace=namespace, labels=labels, ports=ports)
