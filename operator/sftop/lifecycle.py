"""Job and Pod state -> the SFTJob's phase, reason and conditions. Pure functions of their inputs.

Phases (docs/operator.md, Status, draws the transitions):

    Pending    accepted; waiting for references, for the Job, or for its pod to be scheduled and started
    Validating a CPU-only Job checks the data, template and model and computes the plan (no GPU asked for yet)
    Queued     the Job waits for admission by Kueue (suspended, with a queue)
    Running    the trainer container runs
    Succeeded  the trainer finished and wrote the adapter            (final for the run)
    Failed     the spec is invalid, or the run failed beyond retries  (final for the run)
    Suspended  spec.suspend is true; the pod stopped after a checkpoint

A run's final phase never changes again: a late or re-delivered event about a finished run is ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sftop.conditions import conditions_of, holds
from sftop.kueue import QUEUE_LABEL
from sftop_trainer.errors import EXIT_CLASSES, ExitCode

TERMINAL = frozenset({"Succeeded", "Failed"})
CONDITION_TYPES = ("Ready", "Reconciling", "Stalled", "Accepted", "Validated", "DataQuality", "Queued", "Running",
                   "ProgressReported", "Suspended", "Succeeded", "Failed")
IN_PROGRESS = frozenset({"Pending", "Validating", "Queued", "Running"})
# Container waiting reasons that mean the pod cannot start without someone acting.
# kubelet's errors for a container's secretKeyRef (pkg/kubelet/kubelet_pods.go makeEnvironmentVariables; the
# secret manager's NotFound for resource "secret"): its CreateContainerConfigError message.
SECRET_MISSING = re.compile(r'\bsecrets? "(?P<name>[^"]+)" not found')
SECRET_KEY_MISSING = re.compile(r"couldn't find key (?P<key>\S+) in Secret (?P<namespace>[^/\s]+)/(?P<name>\S+)")
# kubelet's eviction manager (pkg/kubelet/eviction/eviction_manager.go) fails an evicted pod with status.reason
# "Evicted" and its message: "Usage of EmptyDir volume "cache" exceeds the limit "12Gi"." for an emptyDir over its
# sizeLimit (no DisruptionTarget condition; the trainer, SIGTERMed mid-download, exits as interrupted, which the
# podFailurePolicy ignores: sftop fails the run at once, `volume_limit_eviction`), "The node was low on resource:
# ephemeral-storage. ..." for node pressure (with a DisruptionTarget condition, reason TerminationByKubelet, which the
# podFailurePolicy ignores like any disruption: sftop bounds those itself, `kubelet_evictions`). Kubelet also marks
# graceful node shutdowns (spot reclaims; status.reason Terminated) TerminationByKubelet: those are not evictions.
EVICTED = "Evicted"
DISK_WORDS = ("ephemeral-storage", "EmptyDir", "ephemeral local storage")
STUCK_WAITING = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError", "CrashLoopBackOff", "RunContainerError"}


@dataclass
class Observation:
    phase: str
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None
    attempts: int = 0
    result: dict[str, Any] | None = None  # the trainer's termination message: a result, or a failure's
    pod_ip: str | None = None  # of the running trainer pod, for progress
    warning: bool = False  # whether users should look (an Event of type Warning)
    extra: dict[str, Any] = field(default_factory=dict)


def termination_message(pod: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the trainer container's terminated state, its termination message parsed as JSON when it is JSON)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        terminated = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if terminated:
            try:
                message = json.loads(terminated.get("message") or "")
            except ValueError:
                message = None
            return terminated, message if isinstance(message, dict) else None
    return None, None


def failure_of(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of a pod whose trainer failed, in the trainer's own terms where it left them."""
    eviction = evicted(pod)
    if eviction is not None:
        return eviction
    terminated, message = termination_message(pod)
    if terminated is None:
        if (pod.get("status") or {}).get("phase") == "Failed":
            status = pod["status"]
            return status.get("reason") or "PodFailed", status.get("message") or "the pod failed"
        return None
    code = terminated.get("exitCode")
    if code == 0:
        return None
    if terminated.get("reason") == "OOMKilled":
        return "OOMKilled", ("the trainer ran out of memory (container memory limit); raise spec.resources.memory "
                             "or lower the batch size")
    cls = EXIT_CLASSES.get(code)
    if cls is not None:
        text = (message or {}).get("message") or cls.meaning
        return cls.reason, text
    if code in (137, 143):
        return "Killed", f"the trainer was killed (exit code {code})"
    text = (message or {}).get("message") or (terminated.get("message") or "").strip()[-1000:]
    return "TrainerError", f"exit code {code}" + (f": {text}" if text else "")


def evicted(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of a pod kubelet evicted: `EvictedForDisk` when it ran out of local storage (its cache
    emptyDir over its sizeLimit, or the node's disk), `Evicted` otherwise (node memory pressure)."""
    status = pod.get("status") or {}
    if status.get("reason") != EVICTED:
        return None
    said = (status.get("message") or "").strip()
    if any(word in said for word in DISK_WORDS):
        return "EvictedForDisk", (f"kubelet evicted the trainer pod for local storage: {said} The pod's cache holds "
                                  "the model's weights downloaded from the Hub (sized from the plan, "
                                  "status.plan.downloadBytes); a node with more free disk, or the model on a "
                                  "claim, avoids it")
    return EVICTED, f"kubelet evicted the trainer pod: {said or 'node pressure'}"


def kubelet_evictions(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods kubelet evicted under node pressure (a DisruptionTarget condition with reason TerminationByKubelet,
    k8s.io/api/core/v1 PodReasonTerminationByKubelet). The run's podFailurePolicy ignores every DisruptionTarget
    pod, as it must for preemptions and drains (the condition's reason cannot be matched there), so the Job would
    retry these without end; the operator counts them against runPolicy.backoffLimit instead."""
    return [p for p in pods if (p.get("status") or {}).get("reason") == EVICTED
            and (conditions_of(p).get("DisruptionTarget") or {}).get("reason") == "TerminationByKubelet"
            and (conditions_of(p).get("DisruptionTarget") or {}).get("status") == "True"]


def volume_limit_eviction(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A pod kubelet evicted because one of its emptyDirs outgrew its sizeLimit ("Usage of EmptyDir volume ...
    exceeds the limit"). Kubelet's SIGTERM reaches the trainer while it downloads, which exits as interrupted (a
    code the pod failure policy ignores), and every retry would download into the same limit again: one is final."""
    return next((p for p in pods if (p.get("status") or {}).get("reason") == EVICTED
                 and (p.get("status") or {}).get("message", "").startswith("Usage of EmptyDir volume")), None)


def _by_start(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pods, key=lambda p: (p.get("metadata", {}).get("creationTimestamp") or "",
                                       p.get("metadata", {}).get("name") or ""))


COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def pod_index(pod: dict[str, Any]) -> int:
    """The completion index of an Indexed Job's pod (0 for a plain Job's)."""
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (meta.get("labels") or {}).get(COMPLETION_INDEX)
    try:
        return int(value or 0)
    except ValueError:
        return 0


def current_pods(pods: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The newest pod of each completion index."""
    out: dict[int, dict[str, Any]] = {}
    for pod in _by_start(pods):
        out[pod_index(pod)] = pod
    return dict(sorted(out.items()))


def _running(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and not (pod.get("metadata") or {}).get(
        "deletionTimestamp")


def _is_peer_loss(failure: tuple[str, str] | None) -> bool:
    return failure is not None and failure[0] == EXIT_CLASSES[ExitCode.PEER_LOST].reason


def _first_cause(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The newest failure among the pods, a pod's own failure before one that only lost its peer."""
    failures = [f for f in map(failure_of, reversed(pods)) if f]
    return next((f for f in failures if not _is_peer_loss(f)), failures[0] if failures else None)


def _group(pods: list[dict[str, Any]], nodes: int, retry_note: str, base: dict[str, Any]) -> Observation:
    """A multi-node run that neither finished nor is suspended: Running once every index has a running pod."""
    current = current_pods(pods)
    if any((p.get("status") or {}).get("phase") == "Succeeded" for p in current.values()):
        # The trainers finish together; the Job completes once every index has.
        return Observation("Running", "Completing", "the trainer finished; the Job is recording its completion",
                           **base)
    running = [i for i in range(nodes) if i in current and _running(current[i])]
    if len(running) == nodes:
        return Observation("Running", "Training", f"the trainer is running on {nodes} pods" + retry_note,
                           pod_ip=(current[0].get("status") or {}).get("podIP"), **base)
    waiting = [i for i in range(nodes) if i not in running]
    first = current.get(waiting[0])
    if first is not None and (first.get("status") or {}).get("phase") == "Pending":
        reason, message, stuck = _pending_reason(first)
        return Observation("Pending", reason, f"pod {waiting[0]} of {nodes}: {message}" + retry_note,
                           warning=stuck, **base)
    return Observation("Pending", "StartingGroup", f"{len(running)} of {nodes} pods running; the group trains once "
                                                   f"all have joined" + retry_note, **base)


def secret_problem(message: str, namespace: str | None) -> tuple[str, str] | None:
    """The hub token Secret a pod's CreateContainerConfigError says is missing, or lacks its key, in the words of
    the SFTJob: (reason, message). The operator never reads Secrets itself (docs/security.md): kubelet, which has to,
    says so, and retries until the Secret is there."""
    found = SECRET_MISSING.search(message)
    if found:
        return "SecretNotFound", f"spec.hubTokenSecret: Secret {found['name']} does not exist in namespace " \
                                 f"{namespace}; the run starts when it does"
    found = SECRET_KEY_MISSING.search(message)
    if found:
        return "SecretKeyNotFound", f"spec.hubTokenSecret: Secret {found['name']} has no key {found['key']!r}; the " \
                                    f"run starts when it does"
    return None


def _pending_reason(pod: dict[str, Any]) -> tuple[str, str, bool]:
    """Why a pod that is not running yet is waiting: (reason, message, whether a user must act)."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
            if reason == "CreateContainerConfigError":
                problem = secret_problem(waiting.get("message") or "", pod["metadata"].get("namespace"))
                if problem is not None:
                    return problem[0], problem[1], True
            return reason, waiting.get("message") or reason, reason in STUCK_WAITING
    scheduled = conditions_of(pod).get("PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        return scheduled.get("reason") or "Unschedulable", scheduled.get("message") or "the pod cannot be scheduled", \
            scheduled.get("reason") == "Unschedulable"
    return "PodStarting", "the trainer pod is starting", False


def observe(suspend: bool, queued: bool, job: dict[str, Any] | None, pods: list[dict[str, Any]],
            nodes: int = 1, backoff_limit: int | None = None) -> Observation:
    """What a run's Job and pods say about it. `nodes`: pods per attempt (an Indexed Job's completions); the
    result and progress come from pod 0, which holds the run's rank 0. More kubelet evictions than `backoff_limit`
    fail the run (Observation.extra["stop"]: the Job must be stopped, the Job controller would go on)."""
    if job is None:
        return Observation("Pending", "CreatingJob", "creating the run's Job")
    status = job.get("status") or {}
    conds = conditions_of(job)
    pods = _by_start(pods)
    attempts = max(len(pods), int(status.get("failed") or 0) + int(status.get("succeeded") or 0)
                   + int(status.get("active") or 0))
    base = dict(start_time=status.get("startTime"), attempts=attempts)

    complete = holds(conds, "Complete") or holds(conds, "SuccessCriteriaMet")
    if complete:
        result = None
        for pod in sorted(reversed(pods), key=pod_index):  # pod 0's first, newest first
            terminated, message = termination_message(pod)
            if terminated is not None and terminated.get("exitCode") == 0:
                result = message
                break
        done = status.get("completionTime") or complete.get("lastTransitionTime")
        return Observation("Succeeded", "Succeeded", "the trainer finished and wrote its output", completion_time=done,
                           result=result, **base)

    failed = holds(conds, "Failed") or holds(conds, "FailureTarget")
    if failed:
        cause = _first_cause(pods)
        # What the failed run reached (steps, losses, checkpoints), from the last pod that wrote it.
        reached = next((m for m in (termination_message(p)[1] for p in reversed(pods))
                        if m and m.get("status") == "Failed"), None)
        job_reason = failed.get("reason") or "JobFailed"
        if job_reason in ("DeadlineExceeded",):
            reason, message = job_reason, f"the run exceeded runPolicy.activeDeadlineSeconds ({failed.get('message')})"
        elif cause is not None:
            reason, message = cause
            if job_reason == "BackoffLimitExceeded":
                message = f"{message} (failed {status.get('failed') or attempts} time(s); backoffLimit reached)"
        else:
            reason, message = job_reason, failed.get("message") or "the Job failed"
        return Observation("Failed", reason, message, completion_time=failed.get("lastTransitionTime"),
                           warning=True, result=reached, **base)

    outgrown = volume_limit_eviction(pods)
    if outgrown is not None:
        reason, message = failure_of(outgrown) or (EVICTED, "kubelet evicted the trainer pod")
        return Observation("Failed", reason, f"{message}; not retried: a retry would outgrow the same limit",
                           warning=True, extra={"stop": True}, **base)
    evictions = kubelet_evictions(pods)
    if backoff_limit is not None and len(evictions) > backoff_limit:
        reason, message = failure_of(evictions[-1]) or (EVICTED, "kubelet evicted the trainer pod")
        return Observation("Failed", reason, f"{message} (evicted {len(evictions)} time(s); runPolicy.backoffLimit "
                                             f"{backoff_limit} reached)", warning=True, extra={"stop": True}, **base)

    if job.get("spec", {}).get("suspend"):
        active = [p for p in pods if (p.get("status") or {}).get("phase") in ("Pending", "Running")]
        if suspend:
            note = " (stopping its pod after a checkpoint)" if active else ""
            return Observation("Suspended", "Suspended", f"spec.suspend is true{note}", **base)
        if queued:
            queue = (job["metadata"].get("labels") or {}).get(QUEUE_LABEL)
            return Observation("Queued", "WaitingForAdmission", f"waiting for Kueue to admit the run (queue {queue})",
                               **base)
        return Observation("Pending", "Resuming", "resuming the Job", **base)

    last_failure = _first_cause(pods)
    retry_note = f"; attempt {attempts}, after: {last_failure[0]}: {last_failure[1]}" if last_failure and attempts > 1 \
        else ""
    if nodes > 1:
        return _group(pods, nodes, retry_note, base)
    for pod in reversed(pods):
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Succeeded" and pod is pods[-1]:
            # The kubelet saw the trainer exit 0 before the Job controller marked the Job complete.
            return Observation("Running", "Completing", "the trainer finished; the Job is recording its completion",
                               **base)
        if phase == "Running" and not (pod.get("metadata") or {}).get("deletionTimestamp"):
            return Observation("Running", "Training", "the trainer is running" + retry_note,
                               pod_ip=(pod.get("status") or {}).get("podIP"), **base)
        if phase == "Pending":
            reason, message, stuck = _pending_reason(pod)
            return Observation("Pending", reason, message + retry_note, warning=stuck, **base)
    if last_failure is not None:
        return Observation("Pending", "Retrying", f"retrying after: {last_failure[0]}: {last_failure[1]}", **base)
    return Observation("Pending", "WaitingForPod", "waiting for the Job to start the trainer pod", **base)


def set_condition(conditions: list[dict[str, Any]], kind: str, status: str, reason: str, message: str,
                  generation: int | None, now: str) -> list[dict[str, Any]]:
    """Conditions with `kind` set; lastTransitionTime moves only when the status changes."""
    out, found = [], False
    for c in conditions:
        if c.get("type") == kind:
            found = True
            same = c.get("status") == status
            c = {"type": kind, "status": status, "reason": reason, "message": message,
                 "lastTransitionTime": c.get("lastTransitionTime") if same and c.get("lastTransitionTime") else now}
            if generation is not None:
                c["observedGeneration"] = generation
        out.append(c)
    if not found:
        c = {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": now}
        if generation is not None:
            c["observedGeneration"] = generation
        out.append(c)
    return sorted(out, key=lambda c: CONDITION_TYPES.index(c["type"]) if c["type"] in CONDITION_TYPES else 99)


def phase_conditions(conditions: list[dict[str, Any]], phase: str, reason: str, message: str,
                     generation: int | None, now: str) -> list[dict[str, Any]]:
    """The condition named like the phase is True; the other phase conditions that exist turn False (with the
    current phase's reason), and those that never held are not added."""
    for kind in ("Queued", "Running", "Suspended", "Succeeded", "Failed"):
        if kind == phase:
            conditions = set_condition(conditions, kind, "True", reason, message, generation, now)
        elif any(c.get("type") == kind for c in conditions):
            conditions = set_condition(conditions, kind, "False", reason, f"now {phase}", generation, now)
    return conditions


def phase_reason(status: dict[str, Any]) -> str:
    """The reason behind the status's phase, in the words its conditions use."""
    phase = status.get("phase") or "Pending"
    conds = conditions_of({"status": status})
    held = holds(conds, phase)
    if held is not None:
        return held.get("reason") or phase
    if phase == "Validating" and conds.get("Validated"):
        return conds["Validated"].get("reason") or phase
    accepted = conds.get("Accepted")
    if accepted is not None and accepted.get("status") == "False":
        return accepted.get("reason") or phase
    reconciling = conds.get("Reconciling")  # kstatus' condition carries the reason of a phase without its own
    if phase in IN_PROGRESS and reconciling is not None and reconciling.get("status") == "True":
        return reconciling.get("reason") or phase
    return phase


def standard_conditions(status: dict[str, Any], generation: int | None, now: str,
                        reason: str | None = None) -> list[dict[str, Any]]:
    """The status's conditions with kstatus' Ready, Reconciling and Stalled (kubernetes-sigs/cli-utils,
    pkg/kstatus) derived from its phase, so that Flux, Argo CD and `kubectl wait` read SFTJobs without custom code:

    Ready        True once the run Succeeded; otherwise False, with the phase as its reason
    Reconciling  True while the run is Pending, Validating, Queued or Running: work is under way
    Stalled      True when the run Failed: nothing more happens without a change to the spec

    A Suspended run is neither: kstatus reads Ready=False as in progress. Each carries the generation it speaks for,
    and status.observedGeneration lags a new spec until the operator has acted on it, which kstatus reads as in
    progress too."""
    phase = status.get("phase") or "Pending"
    reason, message = reason or phase_reason(status), status.get("message") or ""
    conditions = list(status.get("conditions") or [])
    gate = conditions_of({"status": status}).get("Promoted")
    if phase == "Succeeded" and gate is not None and gate.get("status") != "True":
        # spec.promotion: a run that trained is Ready once it is promoted; switching is work under way, a run its
        # gate refused (or a pin that names no run) is stalled until the spec changes (sftop.promotion)
        why, said = gate.get("reason") or "Promoting", gate.get("message") or message
        stalled = gate.get("status") == "False"
        conditions = set_condition(conditions, "Ready", "False", why, said, generation, now)
        conditions = set_condition(conditions, "Reconciling", str(not stalled), why if not stalled else phase,
                                   said if not stalled else "the promotion gate decided", generation, now)
        return set_condition(conditions, "Stalled", str(stalled), why if stalled else phase,
                             said if stalled else f"the run is {phase}", generation, now)
    if phase == "Succeeded":
        conditions = set_condition(conditions, "Ready", "True", "Succeeded", message, generation, now)
    else:
        conditions = set_condition(conditions, "Ready", "False", phase, message, generation, now)
    if phase in IN_PROGRESS:
        conditions = set_condition(conditions, "Reconciling", "True", reason, message, generation, now)
    else:
        conditions = set_condition(conditions, "Reconciling", "False", phase, f"the run is {phase}", generation, now)
    if phase == "Failed":
        conditions = set_condition(conditions, "Stalled", "True", reason, message, generation, now)
    else:
        conditions = set_condition(conditions, "Stalled", "False", phase, f"the run is {phase}", generation, now)
    return conditions
