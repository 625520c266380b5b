"""What the operator does about one SFTJob: `decide(Observed) -> Decision`, a pure function of what it observed.

`Observed` holds the SFTJob (spec, status, generation), the run's Jobs and pods, and what the references say
(missing Secrets or claims, the warm-start source, Kueue's view of a queued Job, the latest read of the trainer's
progress endpoint); `Decision` holds the writes to make (create the run's children, stop a superseded Job, suspend
or label a Job), the new status, the events to post, and when to look again (both in sftop.records). Nothing here
reads the cluster or the clock: sftop.observe observes, sftop.act acts. This module is the one entry point and the
order of the steps, with what no other step owns (an invalid spec, a new run replacing the current one); the steps
themselves are in sftop.refs (references, warm start), sftop.validating (the Validating phase), sftop.children
(the writes), sftop.kueue (a queued run) and sftop.report (the status). The tests (tests/unit/test_decide.py)
drive it as a table, the way tests/unit/test_lifecycle.py drives `lifecycle`.
"""

from __future__ import annotations

import copy
from typing import Any

from sftop import kueue, lifecycle, names, policy, refs, render, report
from sftop.children import apply_priority, apply_suspend, children
from sftop.promotion import metrics_of, promotion_step
from sftop.records import Action, Decision, Observed
from sftop.validating import validation

MAX_PREVIOUS_RUNS = 10
WAIT_RETRY = 30.0  # seconds between looks at a Pending, Validating or Queued run


def decide(seen: Observed) -> Decision:
    """The writes and the status that make the cluster and the SFTJob's status agree with what was observed."""
    if seen.spec is None:
        return invalid(seen)
    spec, status, generation = seen.spec, copy.deepcopy(seen.status), seen.generation
    rid = render.run_id(spec)
    out = Decision()
    current = status.get("run") or {}
    if current.get("id") and current["id"] != rid:
        status = supersede(seen, status, rid, out)
    elif current.get("id") == rid and policy.judged_again(status, generation):
        # a new attempt of the same run: nothing of the refusal stays (its Failed condition, its completion time)
        status = {k: v for k, v in status.items() if k not in ("phase", "message", "plan", "result", "progress",
                                                                 "checkpoints")}
        status["conditions"] = [c for c in status.get("conditions", []) if c.get("type") not in (
            "Failed", "Validated", "DataQuality", "ProgressReported")]
        status["run"] = {"id": rid}
    elif current.get("id") == rid and status.get("phase") in lifecycle.TERMINAL:
        # A finished run stays finished: only the generation the status speaks for moves (and what is promoted).
        out.status = {**status, "observedGeneration": generation}
        promotion_step(seen, out.status, out)
        return out

    job = seen.job
    warm_start = None
    if job is None and seen.policy_missing:
        return refs.cannot_start(seen, status, rid, out, "PolicyMissing", seen.policy_missing, False, WAIT_RETRY)
    if job is None and seen.policy is not None:
        broken = policy.violations(seen.policy, seen.body, seen.namespace)
        if broken:
            message = "refused by the cluster's SFTPolicy " + (seen.policy.get("metadata") or {}).get("name", "") + \
                      ": " + "; ".join(m for _, m in broken) + " (kubectl get sftpolicy -o yaml; docs/security.md)"
            return refs.cannot_start(seen, status, rid, out, "PolicyViolation", message, True)
    if seen.policy is not None:  # before the Job: the profile's placement and the policy's default deadline
        spec = seen.spec = policy.place(spec, seen.policy, seen.namespace)
    elif job is not None and names.job_queue(job, spec) != spec.queue_name:  # a profile's queue, from its Job
        spec = seen.spec = spec.model_copy(update={"queue_name": names.job_queue(job, spec)})
    if job is None:
        if seen.missing is not None:
            return refs.waiting_for_reference(seen, status, rid, out)
        warm_start, problem = refs.resolve_warm_start(seen, status, rid)
        if problem is not None:
            return refs.cannot_start(seen, status, rid, out, *problem)
        if spec.validation.enabled and not (current.get("id") == rid and current.get("validated")):
            status, passed = validation(seen, status, rid, warm_start, out)
            if not passed:
                out.status = status
                out.requeue = None if status.get("phase") in lifecycle.TERMINAL else WAIT_RETRY
                return out
        if seen.policy is not None:
            limit = policy.effective(seen.policy, seen.namespace)["maxGpusPerNamespace"]
            wanted = spec.resources.gpus * spec.distribution.nodes
            if 0 <= limit < seen.gpus_in_flight + wanted:
                message = (f"waiting for GPUs: the namespace's runs hold {seen.gpus_in_flight} of the "
                           f"{limit} GPUs its policy allows at once (maxGpusPerNamespace), and this run needs "
                           f"{wanted}; it starts when others finish")
                return refs.cannot_start(seen, status, rid, out, "WaitingForGpuQuota", message, False, WAIT_RETRY)
        if spec.validation.enabled:  # the cache the run was validated with (its config says so), not today's
            spec.model._cache_claim = ((status.get("plan") or {}).get("cache") or {}).get("claim")
        job = children(seen, spec, rid, out, warm_start=warm_start, plan=status.get("plan"))
    job = apply_suspend(job, spec, seen.queue.workload if seen.queue is not None else None, out)
    apply_priority(job, spec, out)

    observation = lifecycle.observe(spec.suspend, bool(spec.queue_name), job, seen.pods, spec.distribution.nodes,
                                    spec.run_policy.backoff_limit)
    if observation.extra.get("stop"):  # failed beyond its retries while the Job would go on: its pods are stopped
        out.actions.append(Action("stop_job", seen.namespace, job["metadata"]["name"]))
    stamp = seen.now
    new = report.base_status(status, spec, rid, seen, warm_start)
    run = new["run"]
    kueue.queue_view(seen.queue, spec.queue_name, observation, run, (status.get("progress") or {}).get("step"))
    new.update(phase=observation.phase, message=observation.message)
    for name, value in (("startTime", observation.start_time), ("completionTime", observation.completion_time)):
        if value:
            run[name] = value
    # A preempted pod is deleted while its Job is suspended and the Job does not count it: count it here.
    started = 0 if observation.phase == "Queued" else observation.attempts
    run["attempts"] = max(started + run.get("preemptions", 0), run.get("attempts", 0))
    report.usage(run, seen.pods, spec, seen.now)
    report.pods_status(run, seen.pods)
    conditions = lifecycle.set_condition(new.get("conditions", []), "Accepted", "True", "Accepted",
                                         "the spec is valid and its references exist", generation, stamp)
    conditions = lifecycle.phase_conditions(conditions, observation.phase, observation.reason, observation.message,
                                            generation, stamp)
    if observation.phase == "Running" and observation.pod_ip:
        out.track = observation.pod_ip
        conditions = report.live_progress(new, seen.progress, observation.pod_ip, conditions, generation, stamp, out)
    else:
        conditions = [c for c in conditions if c.get("type") != "ProgressReported"]
    new["conditions"] = conditions
    report.final_report(new, observation, run, seen.name, stamp)
    promotion_step(seen, new, out)
    if (observation.phase, observation.reason) != (status.get("phase"), lifecycle.phase_reason(status)):
        out.events.append(("Warning" if observation.warning else "Normal", observation.reason, observation.message))
    out.status, out.reason = new, observation.reason
    if observation.phase in ("Pending", "Queued"):
        out.requeue = WAIT_RETRY
    return out


def invalid(seen: Observed) -> Decision:
    """A spec the API models refuse: the SFTJob fails with reason InvalidSpec, one event per new message."""
    message = "invalid spec: " + "; ".join(seen.problems)
    status = seen.status
    new = copy.deepcopy(status)
    new.update(phase="Failed", message=message, observedGeneration=seen.generation)
    conditions = lifecycle.set_condition(new.get("conditions", []), "Accepted", "False", "InvalidSpec", message,
                                         seen.generation, seen.now)
    new["conditions"] = lifecycle.phase_conditions(conditions, "Failed", "InvalidSpec", message, seen.generation,
                                                   seen.now)
    changed = status.get("message") != message or status.get("phase") != "Failed"
    return Decision(status=new, events=[("Warning", "InvalidSpec", message)] if changed else [],
                    reason="InvalidSpec")


def supersede(seen: Observed, status: dict[str, Any], rid: str, out: Decision) -> dict[str, Any]:
    """The spec's training inputs changed: the current run becomes a previous run (its output stays where it is),
    an unfinished one is stopped, and a new run starts."""
    old = status["run"]
    if status.get("phase") not in lifecycle.TERMINAL:
        out.actions.append(Action("stop_job", seen.namespace, old["jobName"]))
        if old.get("validationJobName") and not old.get("validated"):
            out.actions.append(Action("stop_job", seen.namespace, old["validationJobName"]))
    previous = {"id": old["id"], "jobName": old["jobName"], "phase": status.get("phase") or "Pending"}
    if old.get("outputPath"):
        previous["outputPath"] = old["outputPath"]
    result = status.get("result") or {}
    if status.get("phase") == "Succeeded" and result:  # what a pin (spec.promotion.pin) needs of it later
        previous["result"] = {k: v for k, v in {
            "adapterPath": result.get("adapterPath"), "metrics": metrics_of(result) or None,
            "fingerprint": (result.get("evaluation") or {}).get("fingerprint"),
            "serving": result.get("serving")}.items() if v is not None}
    new = copy.deepcopy(status)
    new["previousRuns"] = [previous] + [r for r in status.get("previousRuns", []) if r.get("id") != rid
                                        and r.get("id") != old["id"]][: MAX_PREVIOUS_RUNS - 1]
    for name in ("progress", "result", "plan", "checkpoints"):
        new.pop(name, None)
    new["conditions"] = [c for c in new.get("conditions", []) if c.get("type") not in ("Validated", "DataQuality",
                                                                                      "ProgressReported")]
    new["run"] = {"id": rid}
    out.events.append(("Normal", "NewRun", f"the spec's training inputs changed: run {rid} replaces run {old['id']}, "
                                           f"whose output stays at {old.get('outputPath')}"))
    return new
