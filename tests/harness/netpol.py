"""What a NetworkPolicy-enforcing network plugin (Calico, Cilium, ...) lets through, for checking rendered policies.

The rules follow the NetworkPolicy API (networking.k8s.io/v1; kubernetes/api networking/v1/types.go, and the
reference "Network Policies" page of kubernetes.io):
- a pod is isolated for egress (ingress) when at least one policy in its namespace selects it (podSelector) and
  lists Egress (Ingress) in policyTypes; policyTypes defaults to [Ingress], plus Egress when the policy has egress
  rules. A pod no policy isolates allows everything in that direction;
- a connection is allowed when the source allows it for egress AND the destination allows it for ingress; for an
  isolated direction, some rule of some selecting policy must match both the peer and the port;
- a peer is a podSelector (pods in the policy's namespace), a namespaceSelector (all pods of the selected
  namespaces), both together (those pods in those namespaces), or an ipBlock (cidr minus except; per the API, meant
  for cluster-external addresses: plugins may not apply it to pod IPs, so this model matches ipBlock against
  addresses outside the cluster only). A rule without `to`/`from` matches every peer; one without ports, every port;
  a port matches by number (or endPort range) and protocol (default TCP). A named port is not modelled.
- selectors: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist); an empty selector selects all.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # every namespace carries its name as a label (kubernetes.io/metadata.name, since Kubernetes 1.21)
        self.namespace_labels.setdefault("kubernetes.io/metadata.name", self.namespace)


@dataclass(frozen=True)
class External:
    """An address outside the cluster's pods: the API server's endpoint, a registry, the Hub."""

    ip: str


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    if spec.get("policyTypes"):
        return spec["policyTypes"]
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


def _peer_matches(peer: dict[str, Any], policy_ns: str, other: Pod | External) -> bool:
    if "ipBlock" in peer:
        if not isinstance(other, External):
            return False
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except") or [])
    if isinstance(other, External):
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        if isinstance(p["port"], str):
            continue  # named ports are not modelled
        if p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def _direction_allows(policies: list[dict[str, Any]], pod: Pod, other: Pod | External, port: int, protocol: str,
                      direction: str) -> bool:
    kind, rules_key, peers_key = direction, direction.lower(), "to" if direction == "Egress" else "from"
    isolating = [p for p in policies if p["metadata"].get("namespace") == pod.namespace
                 and selects(p["spec"].get("podSelector"), pod.labels) and kind in _types(p)]
    if not isolating:
        return True
    for policy in isolating:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(peer, pod.namespace, other) for peer in peers)) and \
                    _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(policies: list[dict[str, Any]], source: Pod, destination: Pod | External, port: int,
            protocol: str = "TCP") -> bool:
    """Whether a connection from `source` to `destination`:`port` gets through every policy in `policies`."""
    if not _direction_allows(policies, source, destination, port, protocol, "Egress"):
        return False
    if isinstance(destination, External):
        return True
    return _direction_allows(policies, destination, source, port, protocol, "Ingress")
