"""The records a reconcile hands from step to step: `Observed` (what sftop.observe saw of one SFTJob, for
`sftop.decide`) and `Decision` with its `Action`s (what decide wants written, for sftop.act). Plain data, no logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sftop import api
from sftop.kueue import QueueView

UNREACHABLE_AFTER = 2  # failed reads in a row before status says progress is unavailable


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
    promotion_job: dict[str, Any] | None = None  # the switch the promotion gate calls for (sftop.promotion)
    promotion_pods: list[dict[str, Any]] = field(default_factory=list)
    promotion_jobs: list[str] = field(default_factory=list)  # the SFTJob's promotion Jobs still running
    progress: Reading | None = None
    policy: dict[str, Any] | None = None  # the cluster's SFTPolicy (SFTOP_POLICY), read while the run has no Job
    policy_missing: str | None = None  # why the policy named by SFTOP_POLICY could not be had
    gpus_in_flight: int = 0  # GPUs the namespace's other unfinished training Jobs hold (maxGpusPerNamespace)
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
