"""A run's children and how they are held: the claim, ConfigMap, Service and Job (or validation Job) to create, their
owner reference to the SFTJob, and the Job's suspend and Kueue priority kept in line with the spec. Pure: it says
which writes to make (`Action`s), sftop.act makes them.
"""

from __future__ import annotations

from typing import Any

from sftop import api, names, render
from sftop.conditions import conditions_of, holds
from sftop.kueue import PRIORITY_LABEL, QUEUE_LABEL
from sftop.records import Action, Decision, Observed

SPEC_LABELS = (QUEUE_LABEL, PRIORITY_LABEL)  # Kueue's, on a Job only from the spec


def adopt(child: dict[str, Any], owner: dict[str, Any], template: bool = False) -> None:
    """Make `owner` the controller of a rendered `child`, so that deleting the SFTJob deletes it; the owner's labels
    go onto the child (and, for a Job, its pod template) where the child has none of that key, except Kueue's queue
    and priority: a `kueue.x-k8s.io/queue-name` on the SFTJob's metadata would queue a Job the operator treats as
    unqueued (they come from `spec.queueName` and `spec.workloadPriorityClassName` only). What kopf.adopt does for a
    child already named and in its owner's namespace, without kopf. `blockOwnerDeletion` keeps a foreground
    deletion of the SFTJob (Argo CD's default) waiting until its Jobs are gone; sftop.rbac grants what the
    OwnerReferencesPermissionEnforcement admission plugin asks for it."""
    meta = owner.get("metadata", {})
    reference = {"controller": True, "blockOwnerDeletion": True, "apiVersion": owner.get("apiVersion"),
                 "kind": owner.get("kind"), "name": meta.get("name"), "uid": meta.get("uid")}
    child["metadata"].setdefault("ownerReferences", []).append({k: v for k, v in reference.items() if v is not None})
    for obj in [child, child["spec"]["template"]] if template else [child]:
        labels = obj["metadata"].setdefault("labels", {})
        for key, value in (meta.get("labels") or {}).items():
            if key not in SPEC_LABELS:
                labels.setdefault(key, value)


def children(seen: Observed, spec: api.SFTJobSpec, rid: str, out: Decision, validation: bool = False,
             warm_start: names.ClaimPath | None = None, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The actions that create a run's claim, ConfigMap and Job (or its validation Job); returns the Job as rendered
    (sized by the run's `plan` where there is one)."""
    claim = render.output_claim(seen.namespace, spec)
    if claim is not None:  # not adopted: output outlives the SFTJob
        out.actions.append(Action("ensure_claim", seen.namespace, claim["metadata"]["name"], claim))
    config_map = render.config_map(seen.name, seen.namespace, spec, rid, seen.settings, warm_start)
    adopt(config_map, seen.body)
    out.actions.append(Action("ensure_config_map", seen.namespace, config_map["metadata"]["name"], config_map))
    if spec.distribution.nodes > 1 and not validation:
        service = render.service(seen.name, seen.namespace, rid)
        adopt(service, seen.body)
        out.actions.append(Action("ensure_service", seen.namespace, service["metadata"]["name"], service))
    job = render.job(seen.name, seen.namespace, spec, rid, seen.settings, validation=validation, warm_start=warm_start,
                     plan=plan)
    adopt(job, seen.body, template=True)
    out.actions.append(Action("ensure_job", seen.namespace, job["metadata"]["name"], job))
    return job


def apply_suspend(job: dict[str, Any], spec: api.SFTJobSpec, workload: dict[str, Any] | None,
                  out: Decision) -> dict[str, Any]:
    """spec.suspend drives the Job's suspend. With a queue it drives the Workload's `spec.active` instead, and the Job
    is Kueue's alone: Kueue starts an admitted Workload's suspended Job again (its jobframework reconciler), so a
    suspend of ours would be undone at once, while a deactivated Workload is evicted, its Job suspended by Kueue and
    kept so until it is active again. Before Kueue made the Workload, the Job waits suspended anyway; the next look
    deactivates it."""
    suspended = bool((job.get("spec") or {}).get("suspend"))
    conditions = conditions_of(job)
    if holds(conditions, "Complete") or holds(conditions, "Failed"):
        return job
    if spec.queue_name:
        if workload is not None and (workload.get("spec") or {}).get("active", True) == spec.suspend:
            meta = workload["metadata"]
            out.actions.append(Action("set_workload_active", meta["namespace"], meta["name"], value=not spec.suspend))
        return job
    want = spec.suspend
    if want != suspended:
        meta = job["metadata"]
        out.actions.append(Action("suspend_job", meta["namespace"], meta["name"], value=want))
        job = {**job, "spec": {**(job.get("spec") or {}), "suspend": want}}
    return job


def apply_priority(job: dict[str, Any], spec: api.SFTJobSpec, out: Decision) -> None:
    """spec.workloadPriorityClassName on the Job, where Kueue allows the change: a new value always, a first value
    only while the Job is suspended, never a removal."""
    meta = job["metadata"]
    want, have = spec.workload_priority_class_name, (meta.get("labels") or {}).get(PRIORITY_LABEL)
    conditions = conditions_of(job)
    if not spec.queue_name or not want or want == have or holds(conditions, "Complete") \
            or holds(conditions, "Failed"):
        return
    if have or (job.get("spec") or {}).get("suspend"):
        out.actions.append(Action("label_job", meta["namespace"], meta["name"], value=(PRIORITY_LABEL, want)))
