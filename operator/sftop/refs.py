"""What the spec refers to: the ConfigMaps and claims it names (a missing one keeps the run Pending), and
spec.warmStart resolved to a folder on a claim (a run that may still come makes it wait, one that never can fails
it). Pure: sftop.observe reads the objects, these say what they mean.
"""

from __future__ import annotations

from typing import Any

from sftop import api, lifecycle, names, render
from sftop.records import Decision, Observed
from sftop.report import base_status

REFERENCE_RETRY = 20.0  # seconds between checks of a missing ConfigMap or claim
SHARED_ACCESS = "ReadWriteMany"  # what the output claim of a multi-node run must allow
SHARED_READ = "ReadOnlyMany,ReadWriteMany"  # what an input claim of a multi-node run must allow (one of them)


def references(spec: api.SFTJobSpec) -> list[tuple[str, str, str | None, str]]:
    """The ConfigMaps and claims the spec names: (kind, name, key, field). A missing one makes the run wait: in
    GitOps it may arrive after the SFTJob. Not the hub token Secret: the operator may not read Secrets, and the
    pod's kubelet reports a missing one (lifecycle.secret_problem) and waits for it just the same."""
    checks: list[tuple[str, str, str | None, str]] = []
    if spec.dataset.config_map is not None:
        checks.append(("ConfigMap", spec.dataset.config_map.name, spec.dataset.config_map.key,
                       "spec.dataset.configMap"))
        if spec.dataset.eval_split is not None and spec.dataset.eval_split.file is not None:
            checks.append(("ConfigMap", spec.dataset.config_map.name, spec.dataset.eval_split.file,
                           "spec.dataset.evalSplit.file"))
    # Every pod of a multi-node run mounts the claims, on its own node: a claim's key is the access modes that allow
    # it (any one of them), the output's read-write, the inputs' read-only (they are mounted readOnly).
    several = spec.distribution.nodes > 1
    if spec.model.pvc is not None:
        checks.append(("PersistentVolumeClaim", spec.model.pvc.claim_name, SHARED_READ if several else None,
                       "spec.model.pvc.claimName"))
    if spec.dataset.pvc is not None:
        checks.append(("PersistentVolumeClaim", spec.dataset.pvc.claim_name, SHARED_READ if several else None,
                       "spec.dataset.pvc.claimName"))
    if spec.output.pvc.create is None:
        checks.append(("PersistentVolumeClaim", spec.output.pvc.claim_name, SHARED_ACCESS if several else None,
                       "spec.output.pvc.claimName"))
    return checks


def missing_reference(namespace: str, check: tuple[str, str, str | None, str],
                      obj: dict[str, Any] | None) -> tuple[str, str] | None:
    """(reason, message) when the referenced object does not exist or lacks its key."""
    kind, name, key, where = check
    short = {"PersistentVolumeClaim": "PVC"}.get(kind, kind)
    if obj is None:
        return f"{short}NotFound", f"{where}: {kind} {name} does not exist in namespace {namespace}; the run starts " \
                                   f"when it does"
    if kind == "PersistentVolumeClaim" and key is not None:
        modes = (obj.get("spec") or {}).get("accessModes") or []
        allowed = key.split(",")
        if not set(allowed) & set(modes):
            held = ", ".join(modes) or "without access modes"
            use = "write to" if allowed == [SHARED_ACCESS] else "read"
            return "PVCNotShared", f"{where}: PersistentVolumeClaim {name} is {held}, and the run's pods on several " \
                                   f"nodes (spec.distribution.nodes) all {use} it: it must be {' or '.join(allowed)}; " \
                                   f"the run starts when it is"
        return None
    if key is not None and key not in (obj.get("data") or {}) and key not in (obj.get("stringData") or {}):
        return f"{short}KeyNotFound", f"{where}: {kind} {name} has no key {key!r}; the run starts when it does"
    return None


def cache_claim_problem(namespace: str, claim: str, obj: dict[str, Any] | None) -> tuple[str, str] | None:
    """(reason, message) when the shared model cache claim the cluster's policy names cannot serve: missing, or not
    ReadWriteMany (validation pods write it while training pods on other nodes read it)."""
    where = "the SFTPolicy's cacheClaim"
    if obj is None:
        return missing_reference(namespace, ("PersistentVolumeClaim", claim, None, where), None)
    modes = (obj.get("spec") or {}).get("accessModes") or []
    if "ReadWriteMany" not in modes:
        return "PVCNotShared", f"{where}: PersistentVolumeClaim {claim} is {', '.join(modes) or 'without access modes'}" \
                               f"; validation pods fill it while training pods on other nodes read it, so it must be " \
                               f"ReadWriteMany; the run starts when it is"
    return None


def waiting_for_reference(seen: Observed, status: dict[str, Any], rid: str, out: Decision) -> Decision:
    """A reference that does not exist or lacks its key (seen.missing): the run waits in Pending, and is looked at
    again every REFERENCE_RETRY seconds."""
    assert seen.spec is not None and seen.missing is not None
    reason, message = seen.missing
    new = base_status(status, seen.spec, rid, seen, None)
    new.update(phase="Pending", message=message)
    new["conditions"] = lifecycle.set_condition(new.get("conditions", []), "Accepted", "False", reason, message,
                                                seen.generation, seen.now)
    out.status, out.reason, out.requeue = new, reason, REFERENCE_RETRY
    if (status.get("phase"), lifecycle.phase_reason(status), status.get("message")) != ("Pending", reason, message):
        out.events.append(("Warning", reason, message))
    return out


def resolve_warm_start(seen: Observed, status: dict[str, Any],
                       rid: str) -> tuple[names.ClaimPath | None, tuple[str, str, bool] | None]:
    """spec.warmStart resolved to a folder on a claim, once per run (kept in status.run.warmStart): (the folder,
    None), or (None, (reason, message, whether it can never resolve))."""
    assert seen.spec is not None
    ws, namespace = seen.spec.warm_start, seen.namespace
    if ws is None:
        return None, None
    run = status.get("run") or {}
    if run.get("id") == rid and run.get("warmStart"):
        return names.ClaimPath.parse(run["warmStart"]), None
    if ws.pvc is not None:
        return names.ClaimPath(ws.pvc.claim_name, ws.pvc.path.rstrip("/")), None
    assert ws.sft_job is not None
    own = ws.sft_job == seen.name
    if not own and seen.warm_source is None:
        return None, ("WarmStartNotFound", f"spec.warmStart.sftJob: SFTJob {ws.sft_job} does not exist in "
                                           f"namespace {namespace}; the run starts when it does", False)
    other = (status if own else (seen.warm_source or {}).get("status")) or {}
    current = other.get("run") or {}
    runs = ([] if own else [{**current, "phase": other.get("phase")}]) + list(other.get("previousRuns") or [])
    runs = [r for r in runs if r.get("id")]
    if ws.run_id is not None:
        found = [r for r in runs if r["id"] == ws.run_id]
    elif own:
        found = [r for r in runs if r.get("phase") == "Succeeded"][:1]
    else:
        found = runs[:1]
    if not found:
        known = ", ".join(f"{r['id']} ({r.get('phase')})" for r in runs) or "none"
        which = f"run {ws.run_id}" if ws.run_id else "run that succeeded"
        return None, ("WarmStartNotFound", f"spec.warmStart: SFTJob {ws.sft_job} has no {which}; its runs: {known}",
                      own or ws.run_id is not None)
    source = found[0]
    if not own and source is runs[0] and other.get("model") and other["model"] != render.model_summary(seen.spec):
        return None, ("WarmStartMismatch", f"spec.warmStart: SFTJob {ws.sft_job} trains another base model "
                                           f"({other['model']}, this SFTJob {render.model_summary(seen.spec)}); an "
                                           f"adapter continues only on its own base", True)
    if not source.get("outputPath"):
        return None, ("WarmStartNotFound", f"spec.warmStart: run {source['id']} of SFTJob {ws.sft_job} has no output "
                                           f"yet", False)
    out = names.ClaimPath.parse(source["outputPath"])
    if ws.checkpoint is not None:
        return names.ClaimPath(out.claim, f"{out.folder}/checkpoints/checkpoint-{ws.checkpoint}"), None
    phase = source.get("phase")
    if phase == "Succeeded":
        return names.ClaimPath(out.claim, f"{out.folder}/adapter"), None
    if phase in lifecycle.TERMINAL or source is not runs[0] or own:
        return None, ("WarmStartNotFound", f"spec.warmStart: run {source['id']} of SFTJob {ws.sft_job} ended {phase} "
                                           f"without an adapter; name one of its checkpoints with "
                                           f"warmStart.checkpoint", True)
    return None, ("WaitingForWarmStart", f"spec.warmStart: waiting for run {source['id']} of SFTJob {ws.sft_job} to "
                                         f"succeed (it is {phase or 'Pending'})", False)


def cannot_start(seen: Observed, status: dict[str, Any], rid: str, out: Decision, reason: str, message: str,
                 final: bool, retry: float = 0.0) -> Decision:
    """A run that cannot start (a warm start that cannot resolve, the cluster's policy): it fails when it never can,
    without creating anything, and waits when it may (looked at again in `retry` seconds, REFERENCE_RETRY by
    default)."""
    assert seen.spec is not None
    new = base_status(status, seen.spec, rid, seen, None)
    phase = "Failed" if final else "Pending"
    new.update(phase=phase, message=message)
    conditions = lifecycle.set_condition(new.get("conditions", []), "Accepted", "False" if final else "True",
                                         reason, message, seen.generation, seen.now)
    new["conditions"] = lifecycle.phase_conditions(conditions, phase, reason, message, seen.generation, seen.now)
    if final:
        new["run"]["completionTime"] = seen.now
    if (status.get("phase"), status.get("message")) != (phase, message):
        out.events.append(("Warning", reason, message))
    out.status, out.reason, out.requeue = new, reason, None if final else retry or REFERENCE_RETRY
    return out
