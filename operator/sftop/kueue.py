"""Everything the operator knows about Kueue, as pure functions of Kueue's objects: the labels that put a run's Job
in a queue and give it a priority, whether Kueue holds a Job, and what Kueue's view of it (`QueueView`, which
sftop.observe reads through sftop.kube) says in the SFTJob's words.

A run with spec.queueName is a suspended Job that Kueue admits by unsuspending it. Kueue keeps its view of the run
in a Workload (kueue.x-k8s.io), owned by the Job and labelled with the Job's uid:

- `QuotaReserved` False: not admitted. Its reason says whether the run waits for quota (`Pending`,
  `WaitingForQuota`, ...) or cannot be admitted as things are (`Inadmissible`, `Misconfigured`, ...), its message
  which flavor lacks how much ("couldn't assign flavors to pod set main: insufficient unused quota for
  nvidia.com/gpu in flavor a100, 1 more needed").
- `Evicted` True: Kueue took the admission back and suspends the Job; reason `Preempted` (with a `Preempted`
  condition naming the preempting Workload's UID and its Job's UID), `PodsReadyTimeout`, `ClusterQueueStopped`,
  ... Both turn False ("Previously: ...") when Kueue admits the Workload again.
- `status.admission.clusterQueue`: the ClusterQueue that admitted it.

Kueue's visibility API (visibility.kueue.x-k8s.io) lists a LocalQueue's pending Workloads with their positions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from sftop import conditions

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # on a Job: the LocalQueue Kueue admits it from
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # on a Job: its Kueue WorkloadPriorityClass
# QuotaReserved=False reasons that mean "waiting its turn"; the rest mean Kueue cannot admit the run as things are.
WAITING = frozenset({"Pending", "WaitingForQuota", "WaitingForPreemptedWorkloads", "PendingEvaluation",
                     "QuotaReserved"})
PREEMPTOR = re.compile(r"\(UID: (?P<uid>[^,]+), JobUID: (?P<job_uid>[^)]+)\)")


@dataclass
class QueueState:
    reason: str
    message: str
    warning: bool = False
    preempted_at: str | None = None  # when the current eviction by preemption happened


@dataclass
class QueueView:
    """What Kueue says about a Job it holds suspended, as the controller read it."""

    absent: bool = False  # the cluster serves no Kueue API
    unreadable: bool = False  # Kueue's objects could not be read this time
    workload: dict[str, Any] | None = None
    cluster_queue: str | None = None
    position: str | None = None  # from Kueue's visibility API, in words
    preemptor: str | None = None  # `SFTJob ns/name` whose run preempted this one


class Explained(Protocol):
    """What `queue_view` rewrites of a `lifecycle.Observation` (lifecycle reads QUEUE_LABEL here: no import back)."""

    phase: str
    reason: str
    message: str
    warning: bool


def condition(workload: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return conditions.conditions_of(workload).get(kind)


def holds(workload: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return conditions.holds(conditions.conditions_of(workload), kind)


def held(job: dict[str, Any], queue: str | None, suspend: bool) -> bool:
    """Whether Kueue holds the Job suspended: it has a queue, spec.suspend is not what suspends it, and it has not
    finished. Only then is Kueue's view of it worth reading."""
    conds = conditions.conditions_of(job)
    return bool(queue) and not suspend and bool((job.get("spec") or {}).get("suspend")) and \
        not any(conditions.holds(conds, c) for c in ("Complete", "SuccessCriteriaMet", "Failed"))


def worth_reading(job: dict[str, Any], queue: str | None, suspend: bool) -> bool:
    """Whether the run's Workload is worth reading: Kueue holds its Job (why it waits), or spec.suspend asks for a
    queued run that has not finished to stop (its Workload is deactivated: children.apply_suspend)."""
    conds = conditions.conditions_of(job)
    return held(job, queue, suspend) or (bool(queue) and suspend and not any(
        conditions.holds(conds, c) for c in ("Complete", "SuccessCriteriaMet", "Failed")))


def in_line(workload: dict[str, Any]) -> bool:
    """Whether the Workload waits its turn, so that Kueue's visibility API knows its position."""
    return not holds(workload, "Evicted") and not holds(workload, "QuotaReserved")


def preemptor_job_uid(workload: dict[str, Any]) -> str | None:
    """The uid of the Job whose Workload preempted this one, as Kueue's Preempted condition names it."""
    preempted = holds(workload, "Preempted") or holds(workload, "Evicted")
    match = PREEMPTOR.search((preempted or {}).get("message") or "")
    return match.group("job_uid") if match and match.group("job_uid") != "UNKNOWN" else None


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def position_of(pending: list[dict[str, Any]] | None, workload: dict[str, Any]) -> str | None:
    """Where the Workload stands in Kueue's visibility API's answer, in words."""
    name = workload["metadata"]["name"]
    for item in pending or []:
        if (item.get("metadata") or {}).get("name") == name:
            local, cluster = item.get("positionInLocalQueue"), item.get("positionInClusterQueue")
            words = []
            if cluster is not None:
                words.append(f"{_ordinal(int(cluster) + 1)} in its ClusterQueue")
            if local is not None:
                words.append(f"{_ordinal(int(local) + 1)} in its LocalQueue")
            return ", ".join(words) or None
    return None


def queue_state(workload: dict[str, Any] | None, queue: str, cluster_queue: str | None,
                position: str | None = None, preemptor: str | None = None, step: int | None = None) -> QueueState:
    """The reason and message of a run whose Job Kueue holds suspended.

    queue: the run's LocalQueue; cluster_queue: the ClusterQueue behind it (None when the LocalQueue is not
    readable); position: from position_of; preemptor: what preempted it, in words (an SFTJob's name); step: the last
    training step the operator saw, where the trainer saved its checkpoint on SIGTERM."""
    where = f"ClusterQueue {cluster_queue} (LocalQueue {queue})" if cluster_queue else f"LocalQueue {queue}"
    if workload is None:
        return QueueState("WaitingForAdmission", f"waiting for Kueue to create the run's Workload ({where})")
    evicted = holds(workload, "Evicted")
    if evicted is not None:
        if evicted.get("reason") == "Preempted":
            preempted = holds(workload, "Preempted") or evicted
            by = f" for {preemptor}" if preemptor else ""
            at = f" at step {step}" if step else ""
            return QueueState("Preempted", f"preempted by Kueue{by}{at}: {preempted.get('message') or ''}; the "
                                           f"trainer saved a checkpoint and the run resumes from it when Kueue "
                                           f"admits it again ({where})",
                              preempted_at=evicted.get("lastTransitionTime"))
        return QueueState("Evicted", f"evicted by Kueue ({evicted.get('reason')}): {evicted.get('message') or ''}; "
                                     f"the run resumes from its checkpoint when Kueue admits it again ({where})")
    reserved = condition(workload, "QuotaReserved")
    if reserved is not None and reserved.get("status") == "True":
        admitted = holds(workload, "Admitted")
        cq = ((workload.get("status") or {}).get("admission") or {}).get("clusterQueue") or cluster_queue
        if admitted is None:
            checks = ", ".join(f"{c.get('name')}: {c.get('state')}"
                               for c in (workload.get("status") or {}).get("admissionChecks") or [])
            return QueueState("WaitingForAdmissionChecks", f"quota reserved in ClusterQueue {cq}; waiting for "
                                                           f"admission checks{': ' + checks if checks else ''}")
        return QueueState("Admitted", f"admitted by Kueue to ClusterQueue {cq}; starting")
    reason = (reserved or {}).get("reason") or "Pending"
    message = (reserved or {}).get("message") or ""
    if reserved is None or reason in WAITING:
        ahead = f"; {position}" if position else ""
        detail = f": {message}" if message else ""
        return QueueState("WaitingForQuota", f"waiting for quota in {where}{detail}{ahead}")
    return QueueState("Inadmissible", f"Kueue cannot admit the run ({reason}): {message} ({where})", warning=True)


def queue_view(view: QueueView | None, queue: str | None, seen: Explained, run: dict[str, Any],
               step: int | None) -> None:
    """What Kueue's view adds to a run's phase: why a queued run waits, from its Workload (counting a preemption the
    first time it is seen), and that a running one resumed after preemptions."""
    if seen.phase == "Running" and run.get("preemptions"):
        seen.message += f" (resumed from its checkpoint after {run['preemptions']} preemption(s) by Kueue)"
    if seen.phase != "Queued":
        return
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
    state = queue_state(view.workload, queue, view.cluster_queue, view.position, view.preemptor, step)
    seen.reason, seen.message, seen.warning = state.reason, state.message, state.warning
    if state.preempted_at and state.preempted_at != run.get("lastPreemptionTime"):
        run["preemptions"] = run.get("preemptions", 0) + 1
        run["lastPreemptionTime"] = state.preempted_at
