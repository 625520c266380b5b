"""Where a run's things are and what they are called: the names and labels of its objects, its folder on the output
claim (`<claim>:<folder>` in status), and where its volumes appear to the trainer. Pure; below everything that
renders, reads or finds a run's objects.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from sftop import api

SFTJOB_LABEL = "sftop.dev/sftjob"
RUN_LABEL = "sftop.dev/run"
COMPONENT_LABEL = "app.kubernetes.io/component"
OUTPUT_ANNOTATION = "sftop.dev/output"
GPUS_ANNOTATION = "sftop.dev/gpus"  # on a training Job: the GPUs its pods hold together (maxGpusPerNamespace)
RENDEZVOUS_PORT = 29400


def run_folder(spec: api.SFTJobSpec, namespace: str, name: str, rid: str) -> str:
    """Where on the output claim a run writes: <output.path>/<namespace>/<sftjob>/<run id>."""
    return posixpath.join(*(p for p in (spec.output.path, namespace, name, rid) if p))


def output_path(spec: api.SFTJobSpec, namespace: str, name: str, rid: str) -> str:
    """A run's output as users see it in status: <claim>:<folder>."""
    return f"{spec.output.pvc.claim_name}:{run_folder(spec, namespace, name, rid)}"


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


def job_name(name: str, rid: str) -> str:
    return f"{name}-{rid}"


def validation_job_name(name: str, rid: str) -> str:
    """`<sftjob>-v<first 7 of the run id>`: as long as the training Job's name, never equal to one (run ids are
    hex)."""
    return f"{name}-v{rid[:7]}"


def service_name(name: str, rid: str) -> str:
    """A multi-node run's headless Service: the Job's name (a Service name must start with a letter)."""
    base = job_name(name, rid)
    return base if base[0].isalpha() else f"s{base}"


def pod_address(name: str, namespace: str, rid: str, index: int | str) -> str:
    """A multi-node run's pod by its stable DNS name: <job>-<index>.<service>.<namespace>.svc."""
    return f"{job_name(name, rid)}-{index}.{service_name(name, rid)}.{namespace}.svc"


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


def job_queue(job: dict[str, Any] | None, spec: api.SFTJobSpec) -> str | None:
    """The Kueue LocalQueue of a run: the spec's own `queueName`, else, for a run whose GPU profile gave it one, the
    queue its training Job was created in (the Job's queue-name label): that queue stays the Job's when the
    profile changes or the policy is not read."""
    if spec.queue_name or not spec.resources.profile or job is None:
        return spec.queue_name
    return ((job.get("metadata") or {}).get("labels") or {}).get("kueue.x-k8s.io/queue-name")
