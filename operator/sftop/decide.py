"""What the operator does about one SFTJob: a pure function of what it observed.

`decide(Observed) -> Decision`. `Observed` holds the SFTJob (spec, status, generation), the run's Jobs and pods,
and what the references say (missing Secrets or claims, the warm-start source, Kueue's view of a queued Job, the
latest read of the trainer's progress endpoint); `Decision` holds the writes to make (create the run's
children, stop a superseded Job, suspend or label a Job), the new status, the events to post, and when to look
again. Nothing here reads the cluster or the clock: `sftop.controller` observes, calls this, and acts; the tests
(tests/unit/test_decide.py) drive it as a table, the way tests/unit/test_lifecycle.py drives `lifecycle`.
"""

from __future__ import annotations

import copy
import datetime
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sftop import api, kueue, lifecycle, render

MAX_PREVIOUS_RUNS = 10
MAX_CHECKPOINTS = 21
MAX_POD_RECORDS = 32  # status.run.podSeconds keeps the newest attempts; older ones fold into one entry
REFERENCE_RETRY = 20.0  # seconds between checks of a missing Secret, ConfigMap or claim
WAIT_RETRY = 30.0  # seconds between looks at a Pending, Validating or Queued run
ADAPTER_MOUNT = "/adapters"  # where the serving handoff assumes the output claim is mounted in the vLLM pod
PROGRESS_KEYS = ("step", "totalSteps", "percent", "epoch", "loss", "learningRate", "tokensPerSecond", "eta",
                 "evalLoss", "exactMatch")
# Status fields that change while a run trains and only say how far it got: written at most at the write budget.
# Everything else (phase, reasons, results) is written as soon as it changes. The running attempt's seconds change
# on every look: they never cause a write by themselves and go with the next one.
LIVE_FIELDS = frozenset({"progress", "checkpoints"})
LIVE_RUN_FIELDS = frozenset({"podSeconds", "gpuSeconds"})
UNREACHABLE_AFTER = 2  # failed reads in a row before status says progress is unavailable


@dataclass
class QueueView:
    """What Kueue says about a Job it holds suspended, as the controller read it."""

    absent: bool = False  # the cluster serves no Kueue API
    unreadable: bool = False  # Kueue's objects could not be read this time
    workload: dict[str, Any] | None = None
    cluster_queue: str | None = None
    position: str | None = None  # from Kueue's visibility API, in words
    preemptor: str | None = None  # `SFTJob ns/name` whose run preempted this one


@dataclass
class Reading:
    """The latest read of a trainer pod's progress endpoint (sftop.progress)."""

    ip: str
    data: dict[str, Any] | None = None  # the last answer, kept across failed reads
    stamp: str | None = None  # when that answer came (RFC 3339)
    failures: int = 0  # failed reads in a row
    error: str | None = None  # why the last read failed
    retry_in: float | None = None  # seconds until the next read, after failures


@dataclass
class Observed:
    namespace: str
    name: str
    generation: int | None
    body: dict[str, Any]  # the SFTJob as cached: owner of the children
    spec: api.SFTJobSpec | None
    problems: list[str]  # why the spec is invalid, when it is
    status: dict[str, Any]
    now: str  # RFC 3339
    job: dict[str, Any] | None = None  # the run's training Job
    pods: list[dict[str, Any]] = field(default_factory=list)  # its trainer pods
    validation_job: dict[str, Any] | None = None
    validation_pods: list[dict[str, Any]] = field(default_factory=list)
    missing: tuple[str, str] | None = None  # (reason, message) of the first missing reference
    warm_source: dict[str, Any] | None = None  # the SFTJob whose run spec.warmStart.sftJob names, if it exists
    queue: QueueView | None = None  # Kueue's view of the training Job, when it holds it
    validation_queue: QueueView | None = None
    progress: Reading | None = None
    settings: Any = None  # sftop.settings.Settings: the defaults children are rendered with


@dataclass
class Action:
    verb: str  # ensure_claim, ensure_config_map, ensure_service, ensure_job, stop_job, suspend_job, label_job
    namespace: str
    name: str
    body: dict[str, Any] | None = None
    value: Any = None

    def __str__(self) -> str:
        return f"{self.verb} {self.namespace}/{self.name}"


@dataclass
class Decision:
    status: dict[str, Any] | None = None  # the whole new status; None leaves it as it is
    actions: list[Action] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message), after the write
    reason: str | None = None  # the phase's reason, for kstatus' conditions
    requeue: float | None = None  # seconds until the next look; None: only on a change (and the resync)
    track: str | None = None  # the running trainer pod's IP, whose progress endpoint is to be read


# ------------------------------------------------------------------------------------------- decide


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
    elif current.get("id") == rid and status.get("phase") in lifecycle.TERMINAL:
        # A finished run stays finished: only the generation the status speaks for moves.
        out.status = {**status, "observedGeneration": generation}
        return out

    job = seen.job
    warm_start = None
    if job is None:
        if seen.missing is not None:
            reason, message = seen.missing
            new = base_status(status, spec, rid, seen, None)
            new.update(phase="Pending", message=message)
            new["conditions"] = lifecycle.set_condition(new.get("conditions", []), "Accepted", "False", reason,
                                                        message, generation, seen.now)
            out.status, out.reason, out.requeue = new, reason, REFERENCE_RETRY
            if (status.get("phase"), lifecycle.phase_reason(status), status.get("message")) != \
                    ("Pending", reason, message):
                out.events.append(("Warning", reason, message))
            return out
        warm_start, problem = resolve_warm_start(seen, status, rid)
        if problem is not None:
            return warm_start_problem(seen, status, rid, out, *problem)
        if spec.validation.enabled and not (current.get("id") == rid and current.get("validated")):
            status, passed = validation(seen, status, rid, warm_start, out)
            if not passed:
                out.status = status
                out.requeue = None if status.get("phase") in lifecycle.TERMINAL else WAIT_RETRY
                return out
        job = children(seen, spec, rid, out, warm_start=warm_start)
    job = apply_suspend(job, spec, out)
    apply_priority(job, spec, out)

    observation = lifecycle.observe(spec.suspend, bool(spec.queue_name), job, seen.pods, spec.distribution.nodes)
    stamp = seen.now
    new = base_status(status, spec, rid, seen, warm_start)
    run = new["run"]
    if observation.phase == "Queued":
        queue_view(seen.queue, spec.queue_name, observation, run, (status.get("progress") or {}).get("step"))
    elif observation.phase == "Running" and run.get("preemptions"):
        observation.message += f" (resumed from its checkpoint after {run['preemptions']} preemption(s) by Kueue)"
    new.update(phase=observation.phase, message=observation.message)
    for name, value in (("startTime", observation.start_time), ("completionTime", observation.completion_time)):
        if value:
            run[name] = value
    # A preempted pod is deleted while its Job is suspended and the Job does not count it: count it here.
    started = 0 if observation.phase == "Queued" else observation.attempts
    run["attempts"] = max(started + run.get("preemptions", 0), run.get("attempts", 0))
    usage(run, seen.pods, spec, seen.now)
    pods_status(run, seen.pods)
    conditions = lifecycle.set_condition(new.get("conditions", []), "Accepted", "True", "Accepted",
                                         "the spec is valid and its references exist", generation, stamp)
    conditions = lifecycle.phase_conditions(conditions, observation.phase, observation.reason, observation.message,
                                            generation, stamp)
    if observation.phase == "Running" and observation.pod_ip:
        out.track = observation.pod_ip
        conditions = live_progress(new, seen.progress, observation.pod_ip, conditions, generation, stamp, out)
    else:
        conditions = [c for c in conditions if c.get("type") != "ProgressReported"]
    new["conditions"] = conditions
    if observation.phase in lifecycle.TERMINAL and observation.result:
        if observation.result.get("checkpoints") is not None:
            new["checkpoints"] = checkpoint_status(observation.result["checkpoints"], run.get("outputPath"))
        if observation.phase == "Failed" and observation.result.get("steps") is not None:
            new["result"] = result(observation.result, run, seen.name)
    if observation.phase == "Succeeded":
        new["result"] = result(observation.result, run, seen.name)
        progress = dict(new.get("progress") or {})
        progress.update(percent=100, eta="0s", updateTime=stamp)
        if progress.get("totalSteps") is not None or new["result"].get("steps") is not None:
            progress["step"] = progress["totalSteps"] = new["result"].get("steps") or progress.get("totalSteps")
        if new["result"].get("trainLoss") is not None and "loss" not in progress:
            progress["loss"] = new["result"]["trainLoss"]
        new["progress"] = progress
    elif observation.phase == "Failed" and run.get("gpuSeconds") is not None:
        new.setdefault("result", {})["gpuSeconds"] = run["gpuSeconds"]
    if (observation.phase, observation.reason) != (status.get("phase"), lifecycle.phase_reason(status)):
        out.events.append(("Warning" if observation.warning else "Normal", observation.reason, observation.message))
    out.status, out.reason = new, observation.reason
    if observation.phase in ("Pending", "Queued"):
        out.requeue = WAIT_RETRY
    return out


# ---------------------------------------------------------------------------------------- the parts


def invalid(seen: Observed) -> Decision:
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
    new = copy.deepcopy(status)
    new["previousRuns"] = [previous] + [r for r in status.get("previousRuns", []) if r.get("id") != rid
                                        and r.get("id") != old["id"]][: MAX_PREVIOUS_RUNS - 1]
    for name in ("progress", "result", "plan", "checkpoints"):
        new.pop(name, None)
    new["conditions"] = [c for c in new.get("conditions", []) if c.get("type") not in ("Validated", "ProgressReported")]
    new["run"] = {"id": rid}
    out.events.append(("Normal", "NewRun", f"the spec's training inputs changed: run {rid} replaces run {old['id']}, "
                                           f"whose output stays at {old.get('outputPath')}"))
    return new


def base_status(status: dict[str, Any], spec: api.SFTJobSpec, rid: str, seen: Observed,
                warm_start: render.ClaimPath | None) -> dict[str, Any]:
    new = copy.deepcopy(status)
    new["observedGeneration"] = seen.generation
    new["model"] = render.model_summary(spec)
    run = dict(new.get("run") or {})
    if run.get("id") != rid:
        run = {}
    run.update(id=rid, jobName=render.job_name(seen.name, rid),
               outputPath=render.output_path(spec, seen.namespace, seen.name, rid))
    if warm_start is not None:
        run["warmStart"] = str(warm_start)
    run.setdefault("attempts", 0)
    new["run"] = run
    return new


SHARED_ACCESS = "ReadWriteMany"  # what the output claim of a multi-node run must allow


def references(spec: api.SFTJobSpec) -> list[tuple[str, str, str | None, str]]:
    """The Secrets, ConfigMaps and claims the spec names: (kind, name, key, field). A missing one makes the run
    wait: in GitOps the Secret may arrive after the SFTJob."""
    checks: list[tuple[str, str, str | None, str]] = []
    if spec.hub_token_secret is not None:
        checks.append(("Secret", spec.hub_token_secret.name, spec.hub_token_secret.key, "spec.hubTokenSecret"))
    if spec.dataset.config_map is not None:
        checks.append(("ConfigMap", spec.dataset.config_map.name, spec.dataset.config_map.key,
                       "spec.dataset.configMap"))
        if spec.dataset.eval_split is not None and spec.dataset.eval_split.file is not None:
            checks.append(("ConfigMap", spec.dataset.config_map.name, spec.dataset.eval_split.file,
                           "spec.dataset.evalSplit.file"))
    if spec.model.pvc is not None:
        checks.append(("PersistentVolumeClaim", spec.model.pvc.claim_name, None, "spec.model.pvc.claimName"))
    if spec.dataset.pvc is not None:
        checks.append(("PersistentVolumeClaim", spec.dataset.pvc.claim_name, None, "spec.dataset.pvc.claimName"))
    if spec.output.pvc.create is None:
        # every pod of a multi-node run mounts the output claim read-write: its key is the access mode it needs
        shared = SHARED_ACCESS if spec.distribution.nodes > 1 else None
        checks.append(("PersistentVolumeClaim", spec.output.pvc.claim_name, shared, "spec.output.pvc.claimName"))
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
        if key not in modes:
            held = ", ".join(modes) or "without access modes"
            return "PVCNotShared", f"{where}: PersistentVolumeClaim {name} is {held}, and the run's pods on several " \
                                   f"nodes (spec.distribution.nodes) all write to it: it must be {key}; the run " \
                                   f"starts when it is"
        return None
    if key is not None and key not in (obj.get("data") or {}) and key not in (obj.get("stringData") or {}):
        return f"{short}KeyNotFound", f"{where}: {kind} {name} has no key {key!r}; the run starts when it does"
    return None


def resolve_warm_start(seen: Observed, status: dict[str, Any],
                       rid: str) -> tuple[render.ClaimPath | None, tuple[str, str, bool] | None]:
    """spec.warmStart resolved to a folder on a claim, once per run (kept in status.run.warmStart): (the folder,
    None), or (None, (reason, message, whether it can never resolve))."""
    assert seen.spec is not None
    ws, namespace = seen.spec.warm_start, seen.namespace
    if ws is None:
        return None, None
    run = status.get("run") or {}
    if run.get("id") == rid and run.get("warmStart"):
        return render.ClaimPath.parse(run["warmStart"]), None
    if ws.pvc is not None:
        return render.ClaimPath(ws.pvc.claim_name, ws.pvc.path.rstrip("/")), None
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
    out = render.ClaimPath.parse(source["outputPath"])
    if ws.checkpoint is not None:
        return render.ClaimPath(out.claim, f"{out.folder}/checkpoints/checkpoint-{ws.checkpoint}"), None
    phase = source.get("phase")
    if phase == "Succeeded":
        return render.ClaimPath(out.claim, f"{out.folder}/adapter"), None
    if phase in lifecycle.TERMINAL or source is not runs[0] or own:
        return None, ("WarmStartNotFound", f"spec.warmStart: run {source['id']} of SFTJob {ws.sft_job} ended {phase} "
                                           f"without an adapter; name one of its checkpoints with "
                                           f"warmStart.checkpoint", True)
    return None, ("WaitingForWarmStart", f"spec.warmStart: waiting for run {source['id']} of SFTJob {ws.sft_job} to "
                                         f"succeed (it is {phase or 'Pending'})", False)


def warm_start_problem(seen: Observed, status: dict[str, Any], rid: str, out: Decision, reason: str, message: str,
                       final: bool) -> Decision:
    """A warm start that cannot resolve: the run fails when it never can, and waits when it may."""
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
    out.status, out.reason, out.requeue = new, reason, None if final else REFERENCE_RETRY
    return out


def children(seen: Observed, spec: api.SFTJobSpec, rid: str, out: Decision, validation: bool = False,
             warm_start: render.ClaimPath | None = None) -> dict[str, Any]:
    """The actions that create a run's claim, ConfigMap and Job (or its validation Job); returns the Job as rendered."""
    import kopf

    claim = render.output_claim(seen.namespace, spec)
    if claim is not None:  # not adopted: output outlives the SFTJob
        out.actions.append(Action("ensure_claim", seen.namespace, claim["metadata"]["name"], claim))
    config_map = render.config_map(seen.name, seen.namespace, spec, rid, seen.settings, warm_start)
    kopf.adopt(config_map, owner=seen.body)
    out.actions.append(Action("ensure_config_map", seen.namespace, config_map["metadata"]["name"], config_map))
    if spec.distribution.nodes > 1 and not validation:
        service = render.service(seen.name, seen.namespace, rid)
        kopf.adopt(service, owner=seen.body)
        out.actions.append(Action("ensure_service", seen.namespace, service["metadata"]["name"], service))
    job = render.job(seen.name, seen.namespace, spec, rid, seen.settings, validation=validation, warm_start=warm_start)
    kopf.adopt(job, owner=seen.body, nested=("spec.template",))
    out.actions.append(Action("ensure_job", seen.namespace, job["metadata"]["name"], job))
    return job


def apply_suspend(job: dict[str, Any], spec: api.SFTJobSpec, out: Decision) -> dict[str, Any]:
    """spec.suspend drives the Job's suspend; with a queue, only Kueue lets a Job start."""
    suspended = bool((job.get("spec") or {}).get("suspend"))
    conditions = lifecycle.conditions_of(job)
    if lifecycle.holds(conditions, "Complete") or lifecycle.holds(conditions, "Failed"):
        return job
    want = spec.suspend if not spec.queue_name else (spec.suspend or suspended)
    if want != suspended:
        meta = job["metadata"]
        out.actions.append(Action("suspend_job", meta["namespace"], meta["name"], value=want))
        job = {**job, "spec": {**(job.get("spec") or {}), "suspend": want}}
    return job


def apply_priority(job: dict[str, Any], spec: api.SFTJobSpec, out: Decision) -> None:
    """spec.workloadPriorityClassName on the Job, where Kueue allows the change: a new value always, a first value
    only while the Job is suspended, never a removal."""
    meta = job["metadata"]
    want, have = spec.workload_priority_class_name, (meta.get("labels") or {}).get(render.PRIORITY_LABEL)
    conditions = lifecycle.conditions_of(job)
    if not spec.queue_name or not want or want == have or lifecycle.holds(conditions, "Complete") \
            or lifecycle.holds(conditions, "Failed"):
        return
    if have or (job.get("spec") or {}).get("suspend"):
        out.actions.append(Action("label_job", meta["namespace"], meta["name"], value=(render.PRIORITY_LABEL, want)))


def queue_view(view: QueueView | None, queue: str | None, seen: lifecycle.Observation, run: dict[str, Any],
               step: int | None) -> None:
    """A run Kueue holds suspended: why, from its Workload; counts a preemption the first time it is seen."""
    queue = queue or ""
    if view is None or view.unreadable:  # Kueue's view is an explanation: without it the run still reads Queued
        return
    if view.absent:
        seen.reason, seen.warning = "KueueNotInstalled", True
        seen.message = (f"the run waits for Kueue to admit it (LocalQueue {queue}), but this cluster serves no Kueue "
                        f"API: install Kueue, or remove spec.queueName to run without a queue")
        return
    if view.workload is not None:
        run["workloadName"] = view.workload["metadata"]["name"]
    state = kueue.queue_state(view.workload, queue, view.cluster_queue, view.position, view.preemptor, step)
    seen.reason, seen.message, seen.warning = state.reason, state.message, state.warning
    if state.preempted_at and state.preempted_at != run.get("lastPreemptionTime"):
        run["preemptions"] = run.get("preemptions", 0) + 1
        run["lastPreemptionTime"] = state.preempted_at


def validation(seen: Observed, status: dict[str, Any], rid: str, warm_start: render.ClaimPath | None,
               out: Decision) -> tuple[dict[str, Any], bool]:
    """The Validating phase of a run: create its CPU-only Job, follow it, and say what it found. Returns (the status
    now, whether the run passed and its training Job may be created)."""
    assert seen.spec is not None
    spec, generation, stamp = seen.spec, seen.generation, seen.now
    vname = render.validation_job_name(seen.name, rid)
    job = seen.validation_job
    if job is None:
        job = children(seen, spec, rid, out, validation=True, warm_start=warm_start)
    observation = lifecycle.observe(False, bool(spec.validation.queue_name), job, seen.validation_pods)
    if observation.phase == "Queued":
        queue_view(seen.validation_queue, spec.validation.queue_name, observation, {}, None)
    new = base_status(status, spec, rid, seen, warm_start)
    new["run"]["validationJobName"] = vname
    conditions = lifecycle.set_condition(new.get("conditions", []), "Accepted", "True", "Accepted",
                                         "the spec is valid and its references exist", generation, stamp)
    passed = False
    if observation.phase == "Succeeded":
        plan = (observation.result or {}).get("plan")
        problem = validation_problem(plan)
        if problem is None:
            assert plan is not None
            new["plan"] = plan
            reason, message = "Validated", (f"data, template and model checked: {plan['samples']} samples, "
                                            f"{plan['totalSteps']} steps, ~{plan['memory']['perGpu']} GiB per GPU")
            conditions = lifecycle.set_condition(conditions, "Validated", "True", reason, message, generation, stamp)
            new["run"]["validated"] = passed = True
            new.update(phase="Pending", message="creating the training Job")
            event = ("Normal", reason, message)
        else:
            if plan is not None:
                new["plan"] = plan
            reason, message = problem
            conditions = lifecycle.set_condition(conditions, "Validated", "False", reason, message, generation, stamp)
            conditions = lifecycle.phase_conditions(conditions, "Failed", reason, message, generation, stamp)
            new.update(phase="Failed", message=message)
            new["run"]["completionTime"] = observation.completion_time or stamp
            event = ("Warning", reason, message)
    elif observation.phase == "Failed":
        reason, message = observation.reason, observation.message
        conditions = lifecycle.set_condition(conditions, "Validated", "False", reason, message, generation, stamp)
        conditions = lifecycle.phase_conditions(conditions, "Failed", reason, message, generation, stamp)
        new.update(phase="Failed", message=message)
        new["run"]["completionTime"] = observation.completion_time or stamp
        event = ("Warning", reason, message)
    else:
        quiet = not observation.warning and observation.phase != "Queued"
        reason = "Validating" if quiet else observation.reason
        message = "checking the data, chat template and model on a CPU before asking for a GPU" if quiet else \
            observation.message
        conditions = lifecycle.set_condition(conditions, "Validated", "Unknown", reason, message, generation, stamp)
        new.update(phase="Validating", message=message)
        event = ("Warning" if observation.warning else "Normal", reason, message)
    new["conditions"] = conditions
    if (new.get("phase"), reason) != (status.get("phase"), validated_reason(status)):
        out.events.append(event)
    out.reason = reason
    return new, passed


def live_progress(new: dict[str, Any], reading: Reading | None, ip: str, conditions: list[dict[str, Any]],
                  generation: int | None, stamp: str, out: Decision) -> list[dict[str, Any]]:
    """A running trainer's progress from the latest read of its endpoint, and whether it answers."""
    if reading is None or reading.ip != ip:
        return conditions
    data = reading.data
    if data and data.get("step") is not None:
        new["progress"] = progress_status(data, reading.stamp or stamp)
    if data and isinstance(data.get("checkpoints"), list):
        new["checkpoints"] = checkpoint_status(data["checkpoints"], new["run"].get("outputPath"))
    if reading.failures >= UNREACHABLE_AFTER:
        since = f"since {reading.stamp}, the progress shown" if data and reading.stamp else "yet"
        message = (f"the trainer's progress endpoint ({ip}) has not answered {since} ({reading.error}); training "
                   f"goes on and the operator reads it less often. A NetworkPolicy that drops the operator's "
                   f"traffic to the pod's progress port looks like this")
        before = next((c for c in conditions if c.get("type") == "ProgressReported"), None)
        if before is None or before.get("status") != "False":
            out.events.append(("Warning", "ProgressUnavailable", message))
        return lifecycle.set_condition(conditions, "ProgressReported", "False", "ProgressUnavailable", message,
                                       generation, stamp)
    if data is not None and reading.failures == 0:
        return lifecycle.set_condition(conditions, "ProgressReported", "True", "ProgressReported",
                                       "the trainer's progress endpoint answers", generation, stamp)
    return conditions


def progress_status(data: dict[str, Any], stamp: str) -> dict[str, Any]:
    out = {k: data[k] for k in PROGRESS_KEYS if data.get(k) is not None}
    out["updateTime"] = stamp
    return out


def _seconds(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


def usage(run: dict[str, Any], pods: list[dict[str, Any]], spec: api.SFTJobSpec, now: str) -> None:
    """GPU-seconds of the run: each attempt's running time (its trainer container's start to its end, or to now)
    times the GPUs it holds, summed over attempts. Kept per pod in status.run.podSeconds, since a preempted or
    retried pod is deleted and its time would be lost."""
    seconds = dict(run.get("podSeconds") or {})
    for pod in pods:
        state = next((s.get("state") or {} for s in (pod.get("status") or {}).get("containerStatuses") or []
                      if s.get("name") == "trainer"), {})
        start, end = None, None
        if state.get("running"):
            start, end = _seconds(state["running"].get("startedAt")), _seconds(now)
        elif state.get("terminated"):
            start, end = _seconds(state["terminated"].get("startedAt")), _seconds(state["terminated"].get("finishedAt"))
        if start is None or end is None:
            continue
        name = pod["metadata"]["name"]
        seconds[name] = round(max(0.0, end - start), 1)  # a finished attempt's own times replace the estimate
    if not seconds:
        return
    if len(seconds) > MAX_POD_RECORDS:
        names = list(seconds)
        folded = sum(seconds.pop(n) for n in names[: len(names) - MAX_POD_RECORDS + 1])
        seconds["earlier"] = round(folded, 1)
    run["podSeconds"] = seconds
    run["gpuSeconds"] = round(sum(seconds.values()) * spec.resources.gpus, 1)


def pods_status(run: dict[str, Any], pods: list[dict[str, Any]]) -> None:
    """status.run.pods: the newest pod of each index (one per node), where it runs and its phase."""
    current = lifecycle.current_pods(pods)
    if not current:
        return
    run["pods"] = [{k: v for k, v in (("index", index), ("name", pod["metadata"]["name"]),
                                      ("node", (pod.get("spec") or {}).get("nodeName")),
                                      ("phase", (pod.get("status") or {}).get("phase"))) if v is not None}
                   for index, pod in current.items()]


def result(message: dict[str, Any] | None, run: dict[str, Any], name: str) -> dict[str, Any]:
    message = message or {}
    output_path = run.get("outputPath")
    out: dict[str, Any] = {}
    if output_path and message.get("adapterPath"):
        out["adapterPath"] = f"{output_path}/{message['adapterPath']}"
    if output_path and message.get("mergedPath"):
        out["mergedPath"] = f"{output_path}/{message['mergedPath']}"
    for key in ("trainLoss", "evalLoss", "steps", "runtimeSeconds", "trainableParameters", "totalParameters",
                "trainedTokens", "evaluation", "resultStep", "stopReason", "warmStart"):
        if message.get(key) is not None:
            out[key] = message[key]
    if run.get("gpuSeconds") is not None:
        out["gpuSeconds"] = run["gpuSeconds"]
    serve = message.get("serving")
    if output_path and message.get("adapterPath") and isinstance(serve, dict) and serve.get("loraRank"):
        out["serving"] = serving_status(name, render.ClaimPath.parse(f"{output_path}/{message['adapterPath']}"), serve)
    return out


def checkpoint_status(checkpoints: list[Any], output_path: str | None) -> list[dict[str, Any]]:
    """The trainer's checkpoint inventory as status shows it: paths as <claim>:<folder>, within the status' bound."""
    out = []
    for c in checkpoints:
        if not isinstance(c, dict) or not isinstance(c.get("step"), int) or not c.get("path"):
            continue
        entry = {k: c[k] for k in ("step", "epoch", "trainLoss", "evalLoss", "complete", "best") if c.get(k) is not None}
        entry.setdefault("complete", False)
        entry["path"] = f"{output_path}/{c['path']}" if output_path else c["path"]
        out.append(entry)
    if len(out) > MAX_CHECKPOINTS:
        best = [c for c in out if c.get("best")]
        out = (best + [c for c in out[-MAX_CHECKPOINTS:] if not c.get("best")])[-MAX_CHECKPOINTS:]
        out.sort(key=lambda c: c["step"])
    return out


def serving_status(name: str, adapter: render.ClaimPath, serve: dict[str, Any]) -> dict[str, Any]:
    """status.result.serving: what vLLM and KServe need to load the adapter from its claim."""
    path = f"{ADAPTER_MOUNT}/{adapter.folder}"
    lora_module = {"name": name, "path": path, "base_model_name": serve.get("baseModel")}
    out = {"claimName": adapter.claim, "path": adapter.folder, "baseModel": serve.get("baseModel"),
           "loraRank": serve["loraRank"],
           "targetModules": serve["targetModules"] if isinstance(serve.get("targetModules"), list) else [],
           "vllmLoraModules": json.dumps({k: v for k, v in lora_module.items() if v}, separators=(",", ":")),
           "storageUri": f"pvc://{adapter.claim}/{adapter.folder}"}
    for key in ("baseModelRevision", "vllmMaxLoraRank"):
        if serve.get(key) is not None:
            out[key] = serve[key]
    return out


def validation_problem(plan: dict[str, Any] | None) -> tuple[str, str] | None:
    """(reason, message) when a validation that finished does not let the run start."""
    if not plan:
        return "ValidationFailed", "the validation Job finished without writing a plan"
    try:
        checked = api.Plan.model_validate(plan)
    except ValidationError as e:
        return "ValidationFailed", "the validation Job wrote a plan this operator cannot read: " + "; ".join(
            api.error_lines(e, "plan."))
    mem = checked.memory
    if mem.fits is False:
        return "InsufficientGPUMemory", (
            f"the run needs about {mem.per_gpu} GiB per GPU ({checked.method}) but the GPU has {mem.gpu_memory} GiB "
            f"({mem.gpu_memory_source}); would fit: " + "; or ".join(mem.would_fit or ["nothing found"]))
    return None


def validated_reason(status: dict[str, Any]) -> str | None:
    for c in status.get("conditions") or []:
        if c.get("type") == "Validated":
            return c.get("reason")
    return None


# --------------------------------------------------------------------------------------- the writes


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`; None when they are equal."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            sub = merge_patch(old[key], value)
            patch[key] = value if not isinstance(value, dict) else sub
    return patch or None


def without_empty(value: Any) -> Any:
    """`value` without empty lists, maps and nulls at any depth: the API server fills in the CRD's defaults ([] and
    {}) on every read, so an empty value and an absent one say the same."""
    if isinstance(value, dict):
        out = {k: without_empty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        return [without_empty(v) for v in value]
    return value


def _without_stamps(status: dict[str, Any]) -> dict[str, Any]:
    out = dict(status)
    if isinstance(out.get("progress"), dict):
        out["progress"] = {k: v for k, v in out["progress"].items() if k != "updateTime"}
    return out


def worth_writing(old: dict[str, Any], new: dict[str, Any]) -> tuple[bool, bool]:
    """(whether `new` differs from `old` in anything a user reads, whether the difference is live progress only:
    progress, checkpoints, the running attempt's seconds). A moved timestamp alone is not worth a write."""
    patch = merge_patch(_without_stamps(without_empty(old)), _without_stamps(without_empty(new)))
    if patch is None or (set(patch) == {"run"} and set(patch["run"]) <= LIVE_RUN_FIELDS):
        return False, False  # the running attempt's seconds alone: written with the next write that is due
    live = set(patch) <= LIVE_FIELDS | {"run"} and set((patch.get("run") or {})) <= LIVE_RUN_FIELDS \
        and bool(old.get("progress")) == bool(new.get("progress"))  # a run's first progress is news: at once
    return True, live
