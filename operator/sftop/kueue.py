"""What Kueue says about a queued run, in the SFTJob's words. Pure functions of Kueue's objects.

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
from typing import Any

from sftop import lifecycle

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


def condition(workload: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return lifecycle.conditions_of(workload).get(kind)


def holds(workload: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return lifecycle.holds(lifecycle.conditions_of(workload), kind)


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
