"""kstatus' status computation for a custom resource, as kubernetes-sigs/cli-utils writes it in
pkg/kstatus/status (status.go `Compute`, generic.go `checkGenericProperties` and `checkGeneration`, status.go
`checkReadyCondition`). Flux's health checks and kpt/cli-utils' apply --wait read resources through it.

For a kind with no type-specific rule (every custom resource), in this order:

1. metadata.deletionTimestamp set                                   -> Terminating
2. status.observedGeneration present and != metadata.generation     -> InProgress (LatestGenerationNotObserved)
3. a condition Reconciling=True                                     -> InProgress (its reason and message)
   a condition Stalled=True                                         -> Failed (its message)
   (conditions are read in order; the first of the two that holds decides)
4. a condition Ready: True -> Current; False or Unknown -> InProgress
5. otherwise                                                        -> Current ("Resource is current")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Result:
    status: str  # InProgress, Failed, Current, Terminating
    message: str
    reason: str = ""


def compute(obj: dict[str, Any]) -> Result:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return Result("Terminating", "Resource scheduled for deletion")
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and "observedGeneration" in status and observed != generation:
        message = f"{obj.get('kind')} generation is {generation}, but latest observed generation is {observed}"
        return Result("InProgress", message, "LatestGenerationNotObserved")
    conditions = status.get("conditions") or []
    for c in conditions:
        if c.get("type") == "Reconciling" and c.get("status") == "True":
            return Result("InProgress", c.get("message", ""), c.get("reason", ""))
        if c.get("type") == "Stalled" and c.get("status") == "True":
            return Result("Failed", c.get("message", ""), c.get("reason", ""))
    for c in conditions:
        if c.get("type") != "Ready":
            continue
        if c.get("status") == "True":
            return Result("Current", "Resource is Ready")
        if c.get("status") in ("False", "Unknown"):
            return Result("InProgress", c.get("message", ""), c.get("reason", ""))
    return Result("Current", "Resource is current")
