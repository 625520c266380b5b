"""The trainer pod of a run's Job (or validation Job): its container (image, arguments, environment, resources,
mounts, restricted security context) and pod spec. Pure; sftop.render wraps it in the Job.
"""

from __future__ import annotations

import posixpath
from typing import Any

from sftop import api
from sftop.lifecycle import COMPLETION_INDEX
from sftop.names import POD_LAYOUT, RENDEZVOUS_PORT, ClaimPath, job_name, pod_address, service_name
from sftop_trainer.threads import THREAD_VARIABLES

CONTAINER = "trainer"
CONFIG_FILE = "config.json"
CONFIG_DIR = "/etc/sftop"
TRAINER_UID = 1000
MODEL_CACHE = "/model-cache"  # the shared model cache claim's mount (HF_HUB_CACHE)


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


def claims_read(spec: api.SFTJobSpec, warm_start: ClaimPath | None = None) -> list[str]:
    """The claims a run reads, each mounted read-only once; the output claim is mounted read-write on its own."""
    claims = []
    for claim in (spec.model.pvc.claim_name if spec.model.pvc else None,
                  spec.dataset.pvc.claim_name if spec.dataset.pvc else None,
                  warm_start.claim if warm_start else None):
        if claim and claim not in claims and not (warm_start and claim == warm_start.claim
                                                  and claim == spec.output.pvc.claim_name):
            claims.append(claim)
    return claims


GIB = 1 << 30
CACHE_HEADROOM = 2 * GIB  # tokenizer and config files, the Hub client's metadata, a partial file being replaced


def cache_size(plan: dict[str, Any] | None) -> str | None:
    """The training pod's cache volume (HF_HOME), sized from the plan: the weights it downloads plus a tenth and a
    headroom, in whole GiB. None without a plan (validation off): the volume is then unbounded."""
    if not plan or plan.get("downloadBytes") is None:  # no plan, or one from a trainer that does not count it
        return None
    need = int(plan["downloadBytes"]) * 1.1 + CACHE_HEADROOM
    return f"{-(-int(need) // GIB)}Gi"


def trainer_pod(name: str, namespace: str, spec: api.SFTJobSpec, rid: str, settings, validation: bool = False,
                warm_start: ClaimPath | None = None, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pod that runs the trainer (or, with `validation`, checks the run on CPUs only), hardened to the restricted
    Pod Security Standard, with no Kubernetes API credentials. With the run's `plan`, its cache volume gets a size
    limit (a cache that outgrows it is evicted with a reason, sftop.lifecycle.evicted, rather than filling the
    node's disk) and, where settings.storage_requests says so, the pod an ephemeral-storage request of that size,
    so that the scheduler picks a node with the disk for the model's weights."""
    res = spec.resources
    if validation:
        v = spec.validation
        quantities = {"cpu": str(v.cpu or settings.validation_cpu),
                      "memory": str(v.memory or settings.validation_memory)}
    else:
        quantities = {"cpu": str(res.cpu or settings.default_cpu),
                      "memory": str(res.memory or settings.default_memory)}
        if res.gpus:
            quantities[res.gpu_resource_name] = str(res.gpus)
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "SFTOP_TERMINATION_LOG", "value": "/dev/termination-log"},
        *thread_env(quantities["cpu"], 0 if validation else res.gpus),
    ]
    if settings.hf_endpoint:  # a mirror: Xet transfers would still go to the Hub's own storage hosts
        env += [{"name": "HF_ENDPOINT", "value": settings.hf_endpoint}, {"name": "HF_HUB_DISABLE_XET", "value": "1"}]
    cache_claim = spec.model._cache_claim
    if cache_claim:  # the shared model cache: filled by validation, read offline by training (sftop_trainer.fetch)
        env.append({"name": "HF_HUB_CACHE", "value": MODEL_CACHE})
        if not validation and spec.validation.enabled:
            env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
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
    cache = None if validation else cache_size(plan)
    if cache is not None:
        volumes[3]["emptyDir"]["sizeLimit"] = cache
    if cache_claim:
        read_only = not validation and spec.validation.enabled  # without validation, training fills it itself
        mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE, "readOnly": read_only})
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": cache_claim,
                                                                          "readOnly": read_only}})
    for i, claim in enumerate(claims_read(spec, warm_start)):
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
                            "fsGroup": TRAINER_UID, "seccompProfile": {"type": "RuntimeDefault"},
                            # kubelet otherwise chowns every file of every volume at each pod start: on an output
                            # claim full of checkpoints (and a data claim) that takes minutes, at every retry
                            "fsGroupChangePolicy": "OnRootMismatch"},
        "containers": [container],
        "volumes": volumes,
    }
    if validation:
        del container["ports"]
    # Only where the platform says so (settings.storage_requests): Kueue admits no Workload that requests a
    # resource its ClusterQueue does not cover, and the cluster-autoscaler does not scale a node group up from zero
    # for a pod that requests ephemeral-storage unless the group's template declares it.
    if cache is not None and settings.storage_requests:
        container["resources"]["requests"]["ephemeral-storage"] = cache
    # The validation pod goes where the training pod will (not its GPUs or priority): it is the first consumer of
    # a WaitForFirstConsumer claim the run creates, which binds in the zone of the node it lands on, and a claim
    # bound in a zone without the run's GPUs would keep the training pod from ever being scheduled.
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if nodes > 1:
        container["ports"].append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"})
        pod_spec["subdomain"] = service_name(name, rid)
    if res.tolerations:
        pod_spec["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True)
                                   for t in res.tolerations]
    if res.affinity:
        pod_spec["affinity"] = res.affinity
    if res.priority_class_name and not validation:
        pod_spec["priorityClassName"] = res.priority_class_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return pod_spec


def promotion_pod(name: str, namespace: str, spec: api.SFTJobSpec, rid: str, settings, folder: str, target: str,
                  kind: str) -> dict[str, Any]:
    """The promotion Job's pod: the operator's own trainer image (spec.image may be an older one without --promote)
    switching `<folder>/promoted` to `<target>/<kind>` on the output claim (sftop_trainer.promote). Hardened as the
    trainer pod is, with no GPU, no GPU placement (a GPU node's taints would keep it off every other node; the
    claim's own node affinity decides where it can mount) and only the output claim mounted."""
    pod = trainer_pod(name, namespace, spec, rid, settings, validation=True)
    for placement in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        pod.pop(placement, None)
    container = pod["containers"][0]
    container["image"] = settings.trainer_image
    container["args"] = ["--promote", posixpath.join("/output", folder), "--run", target, "--kind", kind]
    container["env"] = [{"name": "SFTOP_TERMINATION_LOG", "value": "/dev/termination-log"}]
    small = {"cpu": "100m", "memory": "256Mi"}
    container["resources"] = {"requests": dict(small), "limits": dict(small)}
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] in ("output", "tmp")]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] in ("output", "tmp")]
    pod["terminationGracePeriodSeconds"] = 30
    return pod
