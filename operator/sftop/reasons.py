"""Every reason an SFTJob's status can carry: where it shows, whether the run fails, waits or is retried, and what to
do. `sftop reasons` prints it; docs/reasons.md is generated from it (tests/unit/test_reasons.py keeps both, and the
code's own reasons, in step).

The trainer's failure classes come from `sftop_trainer.errors.EXIT_CLASSES`, so a new exit code is listed here
without being written twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftop_trainer.errors import EXIT_CLASSES

# What happens to the run: it ends Failed; it waits and starts by itself once the cause is gone; the Job runs it
# again and it fails once runPolicy.backoffLimit is spent (while it is retried, the reason is in the message of
# Retrying or Training: "attempt 2, after: OOMKilled: ..."); its promotion gate refuses it (the phase stays
# Succeeded); or it is a step of a healthy run.
FINAL, WAITS, RETRIED, REFUSED, PROGRESS = "fails", "waits", "retried", "refused", "progress"


@dataclass(frozen=True)
class Reason:
    name: str
    shown: str  # the phase (or condition) that carries it
    outcome: str  # FINAL, WAITS, RETRIED or PROGRESS
    what: str  # what it means and what to do


def _r(names: str, shown: str, outcome: str, what: str) -> list[Reason]:
    return [Reason(n, shown, outcome, what) for n in names.split()]


_MISSING = ("the spec names a Secret, key, ConfigMap or claim the namespace lacks (checked again every 20 s): create "
            "it; GitOps tools often apply the Secret after the SFTJob")
_POD_STUCK = ("kubelet cannot start the trainer container (an image that cannot be pulled, a Secret or ConfigMap key "
              "it cannot mount, a crash at start): the message is kubelet's; fix the image, imagePullSecrets or the "
              "referenced object")

OPERATOR: list[Reason] = [
    *_r("CreatingJob PodStarting Validated", "Pending", PROGRESS, "the run is on its way to a GPU"),
    *_r("Validating", "Validating", PROGRESS,
        "a CPU-only Job checks the data, template and model and writes the plan (status.plan)"),
    *_r("StartingGroup", "Pending", PROGRESS,
        "some pods of a multi-node run are running; the group trains once every pod is"),
    *_r("Resuming", "Pending", PROGRESS, "a suspended or preempted run's Job starts again, from its checkpoint"),
    *_r("Retrying", "Pending", RETRIED,
        "the last attempt failed (its reason in the message) and the Job runs it again from the latest checkpoint, "
        "up to runPolicy.backoffLimit"),
    *_r("Passed", "DataQuality: True", PROGRESS, "the data-quality checks found nothing to warn about"),
    *_r("Warnings", "DataQuality: False", PROGRESS,
        "the data-quality checks warn (duplicates, near-duplicates, ...): status.plan.data has the rows; "
        "dataset.quality makes a check fail or drop rows instead"),
    *_r("WaitingForPod", "Pending", WAITS,
        "the Job has no pod yet: when it lasts, `kubectl describe job` shows why the Job controller cannot create it "
        "(a ResourceQuota, Pod Security admission, a webhook)"),
    *_r("ContainerCreating PodInitializing", "Pending", WAITS,
        "kubelet is pulling the trainer image (several GB the first time on a node) or attaching the claims: "
        "`kubectl describe pod` if it lasts more than minutes"),
    *_r("Training Completing", "Running", PROGRESS, "the trainer runs; status.progress has the live step and loss"),
    *_r("Suspended", "Suspended", WAITS,
        "spec.suspend is true: the trainer saved a checkpoint and stopped; set it false to resume from there"),
    *_r("Succeeded", "Succeeded", PROGRESS,
        "the adapter is on the claim: status.result.adapterPath, and status.result.serving for vLLM and KServe"),
    *_r("InvalidSpec", "Failed", FINAL,
        "the spec breaks a rule the CRD cannot check (or was stored before the CRD was current); the message names "
        "the fields: fix the manifest (`sftop validate` shows the same offline)"),
    *_r("PolicyViolation", "Failed", FINAL,
        "the cluster's SFTPolicy refuses the spec; the message lists every broken rule: change the manifest or ask "
        "the platform team (judged again when the spec changes)"),
    *_r("PolicyMissing", "Pending", WAITS,
        "the operator enforces an SFTPolicy that does not exist or cannot be read: the platform team creates it "
        "(`helm upgrade` re-creates the chart's)"),
    *_r("WaitingForGpuQuota", "Pending", WAITS,
        "the namespace's runs already hold the GPUs its policy allows at once (maxGpusPerNamespace): the run starts "
        "when others finish"),
    *_r("SecretNotFound SecretKeyNotFound ConfigMapNotFound ConfigMapKeyNotFound PVCNotFound", "Pending", WAITS,
        _MISSING),
    *_r("PVCNotShared", "Pending", WAITS,
        "a claim that pods on several nodes share is not shared: a multi-node run's output and the policy's "
        "cacheClaim must be ReadWriteMany, its inputs ReadOnlyMany or ReadWriteMany (a shared file system)"),
    *_r("WaitingForWarmStart", "Pending", WAITS, "the warm start's run has not succeeded yet: it starts when it does"),
    *_r("WarmStartNotFound", "Pending or Failed", WAITS,
        "the warm start's SFTJob does not exist yet (waits), or has no such run or no adapter (fails): point "
        "spec.warmStart at a run that succeeded, or at one of its checkpoints"),
    *_r("WarmStartMismatch", "Failed", FINAL,
        "the warm start's adapter was trained on another base model: an adapter continues only on its own base"),
    *_r("InsufficientGPUMemory", "Failed", FINAL,
        "the plan's estimate does not fit the GPU; the message says what would: a smaller batch or maxLength, "
        "qlora, FSDP or more GPUs"),
    *_r("ValidationFailed", "Failed", FINAL,
        "the validation Job ended without a plan this operator can read (an image older than the operator?): "
        "check spec.image and the validation pod's log"),
    *_r("WaitingForQuota", "Queued", WAITS,
        "Kueue has no free quota; the message names the ClusterQueue and flavor that lack how much and the run's "
        "place in the queue: wait, or ask for quota (docs/queues.md)"),
    *_r("WaitingForAdmission", "Queued", WAITS, "Kueue has not created or looked at the run's Workload yet"),
    *_r("WaitingForAdmissionChecks", "Queued", WAITS,
        "Kueue reserved quota and waits for its admission checks (provisioning, for example): the message lists them"),
    *_r("Admitted", "Queued", PROGRESS, "Kueue admitted the run; its pods start"),
    *_r("Inadmissible", "Queued", WAITS,
        "Kueue cannot admit the run as asked (no such LocalQueue, more than the ClusterQueue's whole quota): fix "
        "queueName or ask for fewer GPUs"),
    *_r("KueueNotInstalled", "Queued", WAITS, "queueName is set but the cluster serves no Kueue API: install Kueue, "
                                              "or remove queueName"),
    *_r("Preempted", "Queued", WAITS,
        "Kueue preempted the run for a higher-priority one; the trainer saved a checkpoint and the run resumes from "
        "it when readmitted (not counted as a failure)"),
    *_r("Evicted", "Queued or Failed", RETRIED,
        "evicted by Kueue (Queued: it waits for readmission and resumes from its checkpoint) or by kubelet under node "
        "memory pressure (retried from the latest checkpoint; Failed once the evictions pass runPolicy.backoffLimit)"),
    *_r("EvictedForDisk", "Failed", RETRIED,
        "kubelet evicted the pod for local storage: the node's disk (retried, up to runPolicy.backoffLimit) or the "
        "pod's model cache over its size (sized from the plan; fails at once, a retry would outgrow it again): put "
        "the model on a claim or a shared cache, or give GPU nodes more disk"),
    *_r("Unschedulable", "Pending or Validating", WAITS,
        "no node fits the pod (GPUs, CPU, memory, a nodeSelector, a taint, an unbound claim); the message is the "
        "scheduler's: on a small cluster (kind) lower resources.cpu and memory, and spec.validation.cpu and memory "
        "for the Validating pod"),
    *_r("ImagePullBackOff ErrImagePull InvalidImageName CreateContainerConfigError CreateContainerError "
        "CrashLoopBackOff RunContainerError", "Pending", WAITS, _POD_STUCK),
    *_r("OOMKilled", "Failed", RETRIED,
        "the container went over its memory limit (CPU RAM, not the GPU's): raise resources.memory or lower the "
        "batch size"),
    *_r("Killed PodFailed", "Failed", RETRIED,
        "the trainer was killed or its pod failed without a trainer reason: the message says what Kubernetes said; "
        "the pod's log has the rest"),
    *_r("JobFailed", "Failed", FINAL,
        "the Job failed without a reason of its own or of a pod: the message is the Job's condition"),
    *_r("DeadlineExceeded", "Failed", FINAL,
        "the run ran past runPolicy.activeDeadlineSeconds; its checkpoints stay on the claim (warmStart continues "
        "from one)"),
    *_r("BackoffLimitExceeded", "Failed", FINAL,
        "the run failed more times than runPolicy.backoffLimit; the message is the last attempt's reason, the "
        "checkpoints stay on the claim"),
    *_r("ProgressUnavailable", "Running (ProgressReported)", PROGRESS,
        "the operator cannot read the trainer's progress port (a NetworkPolicy that denies ingress?): the run trains "
        "on and its result still arrives; allow the operator to reach port 8080"),
    *_r("NotYet", "Promoted: Unknown", PROGRESS, "spec.promotion is set and no run has finished since"),
    *_r("Promoting", "Promoted: Unknown", PROGRESS, "a small Job switches the stable path to the run's adapter"),
    *_r("Promoted Pinned", "Promoted: True", PROGRESS,
        "the run's adapter is the one at the stable path (Pinned: by spec.promotion.pin)"),
    *_r("BelowThreshold Regressed NotComparable MetricMissing ServingMismatch", "Promoted: False", REFUSED,
        "the promotion gate refused the run (its metric, value and bar in the message, every comparison in "
        "status.promotion.checks); the promoted adapter keeps serving: fix the data or settings, change the bar "
        "(judged again, nothing retrains) or pin a run"),
    *_r("PinNotFound", "Promoted: False", REFUSED,
        "spec.promotion.pin names no successful run of this SFTJob: pin one of status.previousRuns"),
    *_r("PromotionFailed", "Promoted: False", REFUSED,
        "the Job that switches the stable path failed (the claim full or read-only? its log says): the switch runs "
        "again once that Job is gone (`kubectl delete job` it to retry now; it removes itself after an hour)"),
]

# What to do, for the trainer's own classes (their meaning is EXIT_CLASSES').
_TRAINER_DO = {
    "InvalidData": "fix the data (the message names the file and line); `sftop plan` shows the same locally",
    "InvalidConfig": "the message names the key or field and what is valid",
    "ModelLoadFailed": "fix the model id or revision, add hubTokenSecret for a gated model, set chatTemplate, or name "
                       "the model's modules in lora.targetModules",
    "LossNotFinite": "lower training.learningRate, check the data",
    "LossSpike": "resume from the checkpoint before the spike (named in the message) with a lower learning rate",
    "GPUUnavailable": "check the node's driver against the image's CUDA build (docs/trainer.md)",
    "DataQuality": "fix the rows the message lists, or relax dataset.quality",
    "HubAccessDenied": "add spec.hubTokenSecret with a token that has accepted the model's conditions",
    "HubUnavailable": "wait: the Job retries; a hubTokenSecret raises anonymous rate limits",
}


def _trainer() -> list[Reason]:
    out = []
    for cls in EXIT_CLASSES.values():
        outcome = RETRIED if cls.retryable else FINAL
        shown = "Failed"
        do = _TRAINER_DO.get(cls.reason)
        out.append(Reason(cls.reason, shown, outcome, cls.meaning + (f": {do}" if do else "")))
    return out


REASONS: dict[str, Reason] = {r.name: r for r in [*OPERATOR, *_trainer()]}

_OUTCOME_WORDS = {FINAL: "the run fails", WAITS: "waits, starts by itself",
                  RETRIED: "retried, then the run fails", REFUSED: "not promoted; the phase stays Succeeded",
                  PROGRESS: "a healthy run"}


def markdown() -> str:
    lines = ["# Reasons", "",
             "Every reason an SFTJob's status can carry, in its conditions (`kubectl get sftjobs -o wide` shows the",
             "first that holds in the REASON column; `kubectl describe sftjob NAME` all of them, and the Events).",
             "`sftop reasons NAME` prints one. While a failing run is retried, its reason is in the message of",
             "`Retrying` or `Training` (\"attempt 2, after: OOMKilled: ...\"). Generated by `sftop reasons --markdown`.",
             "",
             "| reason | shown in | what happens | what it means, what to do |", "|---|---|---|---|"]
    for r in REASONS.values():
        lines.append(f"| `{r.name}` | {r.shown} | {_OUTCOME_WORDS[r.outcome]} | {r.what} |")
    return "\n".join(lines) + "\n"


def describe(name: str) -> str | None:
    """One reason in words, or None for a reason sftop never writes (matched without regard to case)."""
    found = REASONS.get(name) or next((r for n, r in REASONS.items() if n.lower() == name.lower()), None)
    if found is None:
        return None
    return f"{found.name} ({found.shown}; {_OUTCOME_WORDS[found.outcome]}): {found.what}"
