"""SFTJob -> what a run needs: its id, its trainer config, and (for the cluster) its child manifests: the
ConfigMap, the output claim, the multi-node Service and the Job (its pod in sftop.pod, names and labels in
sftop.names).

Pure functions of their inputs: no I/O, no clients. The operator and `sftop run --local` render the same
trainer config; only the layout (where volumes appear) differs.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

from sftop import api
from sftop.kueue import PRIORITY_LABEL, QUEUE_LABEL
from sftop.names import (COMPONENT_LABEL, GPUS_ANNOTATION, OUTPUT_ANNOTATION, POD_LAYOUT, RENDEZVOUS_PORT, RUN_LABEL, SFTJOB_LABEL,
                         ClaimPath, Layout, child_labels, job_name, output_path, run_folder, service_name,
                         validation_job_name)
from sftop.pod import CONFIG_FILE, CONTAINER, promotion_pod, trainer_pod
from sftop_trainer.config import (DataSource, Hardware, ModelSource, OutputTarget, ProgressEndpoint, RunInfo,
                                  TrackingTarget, TrainerConfig, WarmStartSource)

# Spec fields that do not change what a run trains: changing them never starts a new run.
NOT_TRAINING_INPUTS = ("suspend", "run_policy", "queue_name", "workload_priority_class_name", "validation", "tracking",
                       "promotion")
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # GPU Feature Discovery: each GPU's memory in MiB


def run_id(spec: api.SFTJobSpec) -> str:
    """A short hash of the spec fields that affect training. Fields at their defaults are left out, so stating a
    default explicitly, or a new optional field in a later version, does not start a new run."""
    exclude: dict[str, Any] = {f: True for f in NOT_TRAINING_INPUTS}
    exclude["resources"] = {"gpu_memory"}  # only the plan's fit check reads it
    canonical = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude_none=True,
                                exclude=exclude)
    if not canonical.get("resources", True):
        canonical.pop("resources")  # only excluded fields differed from their defaults
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return digest[: api.RUN_ID_LENGTH]


def warm_start_path(spec: api.SFTJobSpec, warm_start: ClaimPath | None, layout: Layout) -> str | None:
    """Where the warm-start adapter appears to the trainer: under the output claim's mount when it is on the output
    claim (mounted read-write once), else under its own read-only mount."""
    if warm_start is None:
        return None
    if warm_start.claim == spec.output.pvc.claim_name and layout.output_claim_mount:
        return posixpath.join(layout.output_claim_mount, warm_start.folder)
    return posixpath.join(layout.claim(warm_start.claim), warm_start.folder)


def trainer_config(name: str, namespace: str, spec: api.SFTJobSpec, rid: str, layout: Layout = POD_LAYOUT,
                   warm_start: ClaimPath | None = None) -> TrainerConfig:
    """The trainer's config for one run of an SFTJob. `warm_start`: spec.warmStart, resolved to a folder."""
    if spec.model.hub is not None:
        model = ModelSource(name=spec.model.hub.id, revision=spec.model.hub.revision,
                            trust_remote_code=spec.model.trust_remote_code, dtype=spec.model.dtype,
                            cache=bool(spec.model._cache_claim))
    else:
        assert spec.model.pvc is not None
        pvc = spec.model.pvc
        model = ModelSource(name=posixpath.join(layout.claim(pvc.claim_name), pvc.path), hub_id=pvc.hub_id,
                            origin=f"pvc://{pvc.claim_name}/{pvc.path}",
                            trust_remote_code=spec.model.trust_remote_code, dtype=spec.model.dtype)
    ds = spec.dataset
    source: dict[str, Any]
    beside = None  # the folder an evalSplit.file is in: the training file's claim, or its ConfigMap
    if ds.hub is not None:
        source = {"hub": ds.hub}
    elif ds.pvc is not None:
        beside = layout.claim(ds.pvc.claim_name)
        source = {"path": posixpath.join(beside, ds.pvc.path)}
    elif ds.config_map is not None:
        beside = posixpath.join(layout.configmap_root, ds.config_map.name)
        source = {"path": posixpath.join(beside, ds.config_map.key)}
    else:
        source = {"rows": ds.inline}
    if ds.eval_split is not None and ds.eval_split.file is not None:
        assert beside is not None  # the API allows a file only beside a file
        source["eval_path"] = posixpath.join(beside, ds.eval_split.file)
    else:
        source["eval_split"] = ds.eval_split
    dataset = DataSource(**source, format=ds.format, max_samples=ds.max_samples, quality=ds.quality)
    return TrainerConfig(
        run=RunInfo(id=rid, sftjob=name, namespace=namespace),
        model=model,
        dataset=dataset,
        chat_template=spec.chat_template,
        method=spec.method,
        lora=spec.lora,
        quantization=spec.quantization,
        training=spec.training,
        evaluation=spec.evaluation.model_copy(update={"parity": True}) if spec.promotion else spec.evaluation,
        warm_start=WarmStartSource(path=warm_start_path(spec, warm_start, layout), origin=str(warm_start))
        if warm_start is not None else None,
        output=OutputTarget(dir=layout.output_dir, merge_adapter=spec.output.merge_adapter),
        progress=ProgressEndpoint(port=layout.progress_port),
        hardware=hardware(spec),
        distribution=spec.distribution,
        tracking=tracking(name, spec, rid),
    )


def tracking(name: str, spec: api.SFTJobSpec, rid: str) -> TrackingTarget | None:
    """spec.tracking without its Secret references (they become environment variables of the pod)."""
    t = spec.tracking
    if t is None or (t.mlflow is None and t.wandb is None):
        return None
    return TrackingTarget(
        run_name=t.run_name or f"{name}-{rid}",
        mlflow=t.mlflow.model_dump(include={"tracking_uri", "experiment"}) if t.mlflow else None,
        wandb=t.wandb.model_dump(include={"project", "entity", "base_url"}) if t.wandb else None)


def quantity_bytes(quantity: str) -> int:
    """Bytes in a Kubernetes memory quantity: `80Gi`, `24G`, `1.5Ti`, `81920Mi`, `1e9`."""
    text = str(quantity).strip()
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
    decimal = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": 10**-3}
    for suffixes in (binary, decimal):
        for suffix, factor in suffixes.items():
            if text.endswith(suffix):
                return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def hardware(spec: api.SFTJobSpec) -> Hardware:
    """The GPUs a run will get, for its plan: their count, and their memory where the spec tells it."""
    res = spec.resources
    label = res.node_selector.get(GPU_MEMORY_LABEL)
    if res.gpu_memory is not None:
        return Hardware(gpus=res.gpus, gpu_memory=quantity_bytes(res.gpu_memory),
                        gpu_memory_source=res._gpu_memory_from or f"spec.resources.gpuMemory {res.gpu_memory}")
    if label and label.isdigit() and res.gpus:
        return Hardware(gpus=res.gpus, gpu_memory=int(label) * 2**20,
                        gpu_memory_source=f"nodeSelector {GPU_MEMORY_LABEL}={label} MiB")
    return Hardware(gpus=res.gpus)


def model_summary(spec: api.SFTJobSpec) -> str:
    """The base model in a few words, for `kubectl get sftjobs`."""
    if spec.model.hub is not None:
        return spec.model.hub.id
    assert spec.model.pvc is not None
    return f"pvc:{spec.model.pvc.claim_name}/{spec.model.pvc.path}"


def service(name: str, namespace: str, rid: str) -> dict[str, Any]:
    """The headless Service that gives a multi-node run's pods stable DNS names (the Indexed Job's pods use it as
    their subdomain) from the moment they have an IP, ready or not: pod 0 hosts the rendezvous."""
    labels = child_labels(name, rid)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(name, rid), "namespace": namespace, "labels": labels},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {SFTJOB_LABEL: name, RUN_LABEL: rid, COMPONENT_LABEL: "trainer"},
                 "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                            "protocol": "TCP"}]},
    }


def config_map(name: str, namespace: str, spec: api.SFTJobSpec, rid: str, settings,
               warm_start: ClaimPath | None = None) -> dict[str, Any]:
    """The run's trainer config. It never holds a secret: the hub token and tracking credentials reach the pod as
    environment variables."""
    layout = Layout(output_dir=posixpath.join("/output", run_folder(spec, namespace, name, rid)),
                    progress_port=settings.progress_port)
    cfg = trainer_config(name, namespace, spec, rid, layout, warm_start)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": job_name(name, rid), "namespace": namespace, "labels": child_labels(name, rid)},
        "data": {CONFIG_FILE: json.dumps(cfg.dump(), indent=2, sort_keys=True)},
    }


def output_claim(namespace: str, spec: api.SFTJobSpec) -> dict[str, Any] | None:
    """The output PersistentVolumeClaim to create when the SFTJob asks for one. It is never owned by the
    SFTJob: deleting the SFTJob must not delete the adapters."""
    new = spec.output.pvc.create
    if new is None:
        return None
    claim: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": spec.output.pvc.claim_name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "sftop", "app.kubernetes.io/component": "output"}},
        "spec": {"accessModes": list(new.access_modes), "resources": {"requests": {"storage": str(new.size)}}},
    }
    if new.storage_class_name:
        claim["spec"]["storageClassName"] = new.storage_class_name
    return claim


def pod_failure_policy() -> dict[str, Any]:
    """From the trainer's exit codes: a user error fails the Job at once (a retry would fail the same way); an
    interruption after a checkpoint, and a disruption (preemption, eviction, node drain), are retried without
    counting against backoffLimit."""
    from sftop_trainer.errors import USER_ERROR_CODES, ExitCode

    return {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                              "values": list(USER_ERROR_CODES)}},
        # A pod that stopped because another pod of its group was lost: the lost pod's failure is the one counted.
        {"action": "Ignore", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                             "values": [int(ExitCode.INTERRUPTED), int(ExitCode.PEER_LOST)]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def validation_job(name: str, namespace: str, spec: api.SFTJobSpec, rid: str, settings,
                   warm_start: ClaimPath | None = None) -> dict[str, Any]:
    """The run's Validating phase: the trainer image with --validate, on CPUs only (no GPU, no GPU placement),
    outside any Kueue queue unless spec.validation.queueName names one. It reads the data and the model's config
    (not its weights) and leaves the plan and the prepared data in the run folder."""
    return job(name, namespace, spec, rid, settings, validation=True, warm_start=warm_start)


def job(name: str, namespace: str, spec: api.SFTJobSpec, rid: str, settings, validation: bool = False,
        warm_start: ClaimPath | None = None, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's batch/v1 Job: one pod that runs the trainer (an Indexed pod per node with distribution.nodes > 1),
    hardened to the restricted Pod Security Standard, with no Kubernetes API credentials."""
    if validation:
        labels = child_labels(name, rid, "validation")
        queue = spec.validation.queue_name
    else:
        labels = child_labels(name, rid)
        queue = spec.queue_name
    job_labels = dict(labels)
    if queue:
        job_labels[QUEUE_LABEL] = queue
        if spec.workload_priority_class_name and not validation:
            job_labels[PRIORITY_LABEL] = spec.workload_priority_class_name
    nodes = 1 if validation else spec.distribution.nodes
    policy = spec.run_policy
    job_spec: dict[str, Any] = {
        "backoffLimit": min(policy.backoff_limit, 2) if validation else policy.backoff_limit,
        # A multi-node run: one Indexed pod per node, all admitted together (Kueue admits a Job's parallelism at
        # once) and each retried under its own index.
        "completions": nodes,
        "parallelism": nodes,
        # Kueue admits a queued Job by unsuspending it; without a queue it starts unless the user suspends it.
        # Validation runs even when the run is suspended: a suspended SFTJob shows its plan.
        "suspend": bool(queue) if validation else spec.suspend or bool(queue),
        "podFailurePolicy": pod_failure_policy(),
        "template": {"metadata": {"labels": labels,
                                  "annotations": {OUTPUT_ANNOTATION: output_path(spec, namespace, name, rid)}},
                     "spec": trainer_pod(name, namespace, spec, rid, settings, validation, warm_start, plan)},
    }
    if nodes > 1:
        job_spec["completionMode"] = "Indexed"
    if validation:
        job_spec["activeDeadlineSeconds"] = settings.validation_deadline_seconds
    elif policy.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if policy.ttl_seconds_after_finished is not None and not validation:
        job_spec["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    annotations = {OUTPUT_ANNOTATION: output_path(spec, namespace, name, rid)}
    if not validation:
        annotations[GPUS_ANNOTATION] = str(spec.resources.gpus * nodes)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": validation_job_name(name, rid) if validation else job_name(name, rid),
                     "namespace": namespace, "labels": job_labels, "annotations": annotations},
        "spec": job_spec,
    }


def promotion_job(name: str, namespace: str, spec: api.SFTJobSpec, target: str, jname: str, folder: str, kind: str,
                  settings) -> dict[str, Any]:
    """A switch of the SFTJob's stable path to run `target` (sftop.promotion): a second of CPU, in the Kueue queue
    of the Validating phase when spec.validation.queueName names one (a cluster where Kueue manages every Job would
    hold it suspended otherwise), retried twice but not for a refusal (exit 64: not a whole adapter, a folder in
    the way), given half an hour (the trainer image may be pulled first), and gone an hour after it finished (its
    outcome is in status by then; a switch made again changes nothing)."""
    labels = child_labels(name, target, "promotion")
    job_labels = {**labels, QUEUE_LABEL: spec.validation.queue_name} if spec.validation.queue_name else dict(labels)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": jname, "namespace": namespace, "labels": job_labels},
        "spec": {"backoffLimit": 2, "activeDeadlineSeconds": 1800, "ttlSecondsAfterFinished": 3600,
                 "completions": 1, "parallelism": 1, "suspend": bool(spec.validation.queue_name),
                 "podFailurePolicy": {"rules": [
                     {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                           "values": [64]}},
                     {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
                 "template": {"metadata": {"labels": dict(labels)},
                              "spec": promotion_pod(name, namespace, spec, target, settings, folder, target, kind)}},
    }
