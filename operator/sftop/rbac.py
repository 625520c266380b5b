"""Exactly what the operator may do in the API: the rules of its ClusterRole (or its Roles when it watches a
list of namespaces). The Helm chart takes them from helm/sftop/files/rbac-rules.yaml, which a test keeps equal
to these, and the operator and end-to-end suites check every request the operator made against them."""

from __future__ import annotations

from typing import Any

import yaml

from sftop import api

RULES: list[dict[str, Any]] = [
    # kopf follows CustomResourceDefinitions to learn when the resources it watches appear or change
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    # watch SFTJobs, write only their status
    {"apiGroups": [api.GROUP], "resources": [api.PLURAL], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "verbs": ["get", "patch"]},
    # children's owner references block their SFTJob's foreground deletion (blockOwnerDeletion), which the
    # OwnerReferencesPermissionEnforcement admission plugin (OpenShift's default) allows only to who may update the
    # owner's finalizers; SFTJobs serve no finalizers subresource, so this grants nothing else (docs/security.md)
    {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/finalizers"], "verbs": ["update"]},
    # the cluster's SFTPolicy (SFTOP_POLICY), read before each new run creates anything
    {"apiGroups": [api.GROUP], "resources": ["sftpolicies"], "verbs": ["get"]},
    # the runs' Jobs: create, suspend/resume, stop a superseded run
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    # the trainer pods: state, termination message, IP for progress
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    # the trainer-config ConfigMaps; a ConfigMap data source is checked to exist
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create"]},
    # a multi-node run's headless Service (its pods' DNS names)
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create"]},
    # output claims (created when asked) and input claims (checked to exist)
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "create"]},
    # Kueue: why a queued run waits (its Workload, its LocalQueue's ClusterQueue, its position in the queue); a
    # queued run's spec.suspend deactivates its Workload (spec.active), Kueue's way to stop an admitted Job
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["list", "patch"]},
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["localqueues"], "verbs": ["get"]},
    {"apiGroups": ["visibility.kueue.x-k8s.io"], "resources": ["localqueues/pendingworkloads"], "verbs": ["get"]},
    # Events on SFTJobs
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def rules_yaml() -> str:
    return ("# Generated from operator/sftop/rbac.py; a test keeps them equal.\n"
            + yaml.safe_dump({"rules": RULES}, sort_keys=False))


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)
