"""SFTJob -> what a run needs: its id, its trainer config, and (for the cluster) its child manifests.

Pure functions of their inputs: no I/O, no clients. The operator and `sftop run --local` render the same
trainer config; only the layout (where volumes appear) differs.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from sftop import api
from sftop.lifecycle import COMPLETION_INDEX
from sftop_trainer.threads import THREAD_VARIABLES
from sftop_trainer.config import (DataSource, Hardware, ModelSource, OutputTarget, ProgressEndpoint, RunInfo,
                                  TrackingTarget, TrainerConfig, WarmStartSource)

# Spec fields that do not change what a run trains: changing them never starts a new run.
NOT_TRAINING_INPUTS = ("suspend", "run_policy", "queue_name", "workload_priority_class_name", "validation", "tracking")
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


def run_folder(spec: api.SFTJobSpec, namespace: str, name: str, rid: str) -> str:
    """Where on the output claim a run writes: <output.path>/<namespace>/<sftjob>/<run id>."""
    return posixpath.join(*(p for p in (spec.output.path, namespace, name, rid) if p))


@dataclass(frozen=True)
class Layout:
    """Where a run's volumes appear to the trainer. The default is the trainer pod's layout."""

    pvc_root: str = "/mnt/pvc"  # each claim the run reads, read-only, at <pvc_root>/<claimName>
    configmap_root: str = "/mnt/configmap"  # ConfigMap data at <configmap_root>/<name>/<key>
    output_dir: str = "/output"  # the run folder on the output claim (a subPath mount)
    output_claim_mount: str | None = "/output"  # where the whole output claim is; None: at claim(name) like the rest
    progress_port: int = 8080

    def claim(self, name: str) -> str:
        return posixpath.join(self.pvc_root, name)


POD_LAYOUT = Layout()


@dataclass(frozen=True)
class ClaimPath:
    """A folder on a claim: `<claim>:<folder>` in status."""

    claim: str
    folder: str

    def __str__(self) -> str:
        return f"{self.claim}:{self.folder}"

    @classmethod
    def parse(cls, text: str) -> ClaimPath:
        claim, _, folder = text.partition(":")
        return cls(claim, folder)


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
                            trust_remote_code=spec.model.trust_remote_code, dtype=spec.model.dtype)
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
    dataset = DataSource(**source, format=ds.format, max_samples=ds.max_samples)
    return TrainerConfig(
        run=RunInfo(id=rid, sftjob=name, namespace=namespace),
        model=model,
        dataset=dataset,
        chat_template=spec.chat_template,
        method=spec.method,
        lora=spec.lora,
        quantization=spec.quantization,
        training=spec.training,
        evaluation=spec.evaluation,
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


def tracking_env(spec: api.SFTJobSpec) -> list[dict[str, Any]]:
    """The tracking credentials, from their Secrets, as environment variables of the trainer."""
    t = spec.tracking
    refs: list[tuple[str, Any]] = []
    if t is not None and t.mlflow is not None:
        refs += [("MLFLOW_TRACKING_TOKEN", t.mlflow.token_secret), ("MLFLOW_TRACKING_USERNAME",
                                                                    t.mlflow.username_secret),
                 ("MLFLOW_TRACKING_PASSWORD", t.mlflow.password_secret)]
    if t is not None and t.wandb is not None:
        refs.append(("WANDB_API_KEY", t.wandb.api_key_secret))
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            for env, ref in refs if ref is not None]


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
                        gpu_memory_source=f"spec.resources.gpuMemory {res.gpu_memory}")
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


# ------------------------------------------------------------------------------ child manifests

SFTJOB_LABEL = "sftop.dev/sftjob"
RUN_LABEL = "sftop.dev/run"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # a Kueue WorkloadPriorityClass
OUTPUT_ANNOTATION = "sftop.dev/output"
CONTAINER = "trainer"
CONFIG_FILE = "config.json"
CONFIG_DIR = "/etc/sftop"
TRAINER_UID = 1000


def job_name(name: str, rid: str) -> str:
    return f"{name}-{rid}"


def service_name(name: str, rid: str) -> str:
    """A multi-node run's headless Service: the Job's name (a Service name must start with a letter)."""
    base = job_name(name, rid)
    return base if base[0].isalpha() else f"s{base}"


RENDEZVOUS_PORT = 29400


def pod_address(name: str, namespace: str, rid: str, index: int | str) -> str:
    """A multi-node run's pod by its stable DNS name: <job>-<index>.<service>.<namespace>.svc."""
    return f"{job_name(name, rid)}-{index}.{service_name(name, rid)}.{namespace}.svc"


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


def validation_job_name(name: str, rid: str) -> str:
    """`<sftjob>-v<first 7 of the run id>`: as long as the training Job's name, never equal to one (run ids are
    hex)."""
    return f"{name}-v{rid[:7]}"


COMPONENT_LABEL = "app.kubernetes.io/component"


def child_labels(name: str, rid: str, component: str = "trainer") -> dict[str, str]:
    """Labels every child carries: how the operator (and users) find a run's objects."""
    return {
        "app.kubernetes.io/name": "sftop-trainer",
        "app.kubernetes.io/instance": name,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/managed-by": "sftop",
        SFTJOB_LABEL: name,
        RUN_LABEL: rid,
    }


def output_path(spec: api.SFTJobSpec, namespace: str, name: str, rid: str) -> str:
    """A run's output as users see it in status: <claim>:<folder>."""
    return f"{spec.output.pvc.claim_name}:{run_folder(spec, namespace, name, rid)}"


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


def _claims_read(spec: api.SFTJobSpec, warm_start: ClaimPath | None = None) -> list[str]:
    """The claims a run reads, each mounted read-only once; the output claim is mounted read-write on its own."""
    claims = []
    for claim in (spec.model.pvc.claim_name if spec.model.pvc else None,
                  spec.dataset.pvc.claim_name if spec.dataset.pvc else None,
                  warm_start.claim if warm_start else None):
        if claim and claim not in claims and not (warm_start and claim == warm_start.claim
                                                  and claim == spec.output.pvc.claim_name):
            claims.append(claim)
    return claims


def cpus(quantity: str) -> int:
    """Whole CPUs in a Kubernetes CPU quantity, rounded down, at least 1: `7500m` -> 7, `0.5` -> 1."""
    text = str(quantity).strip()
    if text.endswith("m"):
        value = float(text[:-1]) / 1000
    else:
        suffixes = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
        value = float(text[:-1]) * suffixes[text[-1]] if text[-1] in suffixes else float(text)
    return max(1, int(value))


def thread_env(cpu: str, gpus: int) -> list[dict[str, str]]:
    """Thread variables for the trainer's processes (one per GPU), from the pod's CPU limit: torch and OpenMP would
    otherwise start a thread per core of the node and spin against the CPU quota."""
    threads = str(max(1, cpus(cpu) // max(1, gpus)))
    return [{"name": n, "value": threads} for n in THREAD_VARIABLES]


def validation_job(name: str, namespace: str, spec: api.SFTJobSpec, rid: str, settings,
                   warm_start: ClaimPath | None = None) -> dict[str, Any]:
    """The run's Validating phase: the trainer image with --validate, on CPUs only (no GPU, no GPU placement),
    outside any Kueue queue unless spec.validation.queueName names one. It reads the data and the model's config
    (not its weights) and leaves the plan and the prepared data in the run folder."""
    return job(name, namespace, spec, rid, settings, validation=True, warm_start=warm_start)


def job(name: str, namespace: str, spec: api.SFTJobSpec, rid: str, settings, validation: bool = False,
        warm_start: ClaimPath | None = None) -> dict[str, Any]:
    """The run's batch/v1 Job: one pod that runs the trainer (an Indexed pod per node with distribution.nodes > 1),
    hardened to the restricted Pod Security Standard, with no Kubernetes API credentials."""
    res = spec.resources
    if validation:
        v = spec.validation
        quantities = {"cpu": str(v.cpu or settings.validation_cpu),
                      "memory": str(v.memory or settings.validation_memory)}
        labels = child_labels(name, rid, "validation")
        queue = v.queue_name
    else:
        quantities = {"cpu": str(res.cpu or settings.default_cpu),
                      "memory": str(res.memory or settings.default_memory)}
        if res.gpus:
            quantities[res.gpu_resource_name] = str(res.gpus)
        labels = child_labels(name, rid)
        queue = spec.queue_name
    job_labels = dict(labels)
    if queue:
        job_labels[QUEUE_LABEL] = queue
        if spec.workload_priority_class_name and not validation:
            job_labels[PRIORITY_LABEL] = spec.workload_priority_class_name
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "SFTOP_TERMINATION_LOG", "value": "/dev/termination-log"},
        *thread_env(quantities["cpu"], 0 if validation else res.gpus),
    ]
    if spec.hub_token_secret is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": spec.hub_token_secret.name, "key": spec.hub_token_secret.key}}})
    if not validation:
        env += tracking_env(spec)
    nodes = 1 if validation else spec.distribution.nodes
    if nodes > 1:
        # Kubernetes expands $(JOB_COMPLETION_INDEX) in later variables; the Job controller defines the same one.
        env += [{"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                    "fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}},
                {"name": "SFTOP_RENDEZVOUS", "value": f"{pod_address(name, namespace, rid, 0)}:{RENDEZVOUS_PORT}"},
                {"name": "SFTOP_NODE_ADDRESS", "value": pod_address(name, namespace, rid, "$(JOB_COMPLETION_INDEX)")}]
    # The whole output claim is mounted and the trainer creates its run folder in it: a subPath mount would
    # make kubelet create that folder as root, which the non-root trainer then cannot write to.
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "output", "mountPath": "/output"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": "/cache"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": job_name(name, rid)}},
        {"name": "output", "persistentVolumeClaim": {"claimName": spec.output.pvc.claim_name}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(res.shared_memory)}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    for i, claim in enumerate(_claims_read(spec, warm_start)):
        mounts.append({"name": f"input-{i}", "mountPath": POD_LAYOUT.claim(claim), "readOnly": True})
        volumes.append({"name": f"input-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    if spec.dataset.config_map is not None:
        ref = spec.dataset.config_map
        mounts.append({"name": "data", "mountPath": posixpath.join(POD_LAYOUT.configmap_root, ref.name),
                       "readOnly": True})
        keys = [ref.key]
        if spec.dataset.eval_split is not None and spec.dataset.eval_split.file is not None:
            keys.append(spec.dataset.eval_split.file)
        volumes.append({"name": "data", "configMap": {"name": ref.name,
                                                      "items": [{"key": k, "path": k} for k in keys]}})
    container = {
        "name": CONTAINER,
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--config", posixpath.join(CONFIG_DIR, CONFIG_FILE)] + (["--validate"] if validation else []),
        "env": env,
        "ports": [{"name": "progress", "containerPort": settings.progress_port, "protocol": "TCP"}],
        "resources": {"requests": dict(quantities), "limits": dict(quantities)},
        "volumeMounts": mounts,
        "terminationMessagePath": "/dev/termination-log",
        # A crash before the trainer wrote its message still leaves the log's tail in the pod status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_UID,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": {"runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_UID,
                            "fsGroup": TRAINER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if validation:
        del container["ports"]
    elif res.node_selector:  # GPU placement: the validation pod needs none of it
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if nodes > 1:
        container["ports"].append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"})
        pod_spec["subdomain"] = service_name(name, rid)
    if res.tolerations and not validation:
        pod_spec["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True)
                                   for t in res.tolerations]
    if res.affinity and not validation:
        pod_spec["affinity"] = res.affinity
    if res.priority_class_name and not validation:
        pod_spec["priorityClassName"] = res.priority_class_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
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
                     "spec": pod_spec},
    }
    if nodes > 1:
        job_spec["completionMode"] = "Indexed"
    if validation:
        job_spec["activeDeadlineSeconds"] = settings.validation_deadline_seconds
    elif policy.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if policy.ttl_seconds_after_finished is not None and not validation:
        job_spec["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": validation_job_name(name, rid) if validation else job_name(name, rid),
                     "namespace": namespace, "labels": job_labels,
                     "annotations": {OUTPUT_ANNOTATION: output_path(spec, namespace, name, rid)}},
        "spec": job_spec,
    }
