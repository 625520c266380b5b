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
from sftop_trainer.config import DataSource, ModelSource, OutputTarget, ProgressEndpoint, RunInfo, TrainerConfig

# Spec fields that do not change what a run trains: changing them never starts a new run.
NOT_TRAINING_INPUTS = ("suspend", "run_policy", "queue_name")


def run_id(spec: api.SFTJobSpec) -> str:
    """A short hash of the spec fields that affect training. Fields at their defaults are left out, so stating a
    default explicitly, or a new optional field in a later version, does not start a new run."""
    canonical = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude_none=True,
                                exclude=set(NOT_TRAINING_INPUTS))
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
    progress_port: int = 8080

    def claim(self, name: str) -> str:
        return posixpath.join(self.pvc_root, name)


POD_LAYOUT = Layout()


def trainer_config(name: str, namespace: str, spec: api.SFTJobSpec, rid: str, layout: Layout = POD_LAYOUT) \
        -> TrainerConfig:
    """The trainer's config for one run of an SFTJob."""
    if spec.model.hub is not None:
        model = ModelSource(name=spec.model.hub.id, revision=spec.model.hub.revision,
                            trust_remote_code=spec.model.trust_remote_code, dtype=spec.model.dtype)
    else:
        assert spec.model.pvc is not None
        model = ModelSource(name=posixpath.join(layout.claim(spec.model.pvc.claim_name), spec.model.pvc.path),
                            trust_remote_code=spec.model.trust_remote_code, dtype=spec.model.dtype)
    ds = spec.dataset
    source: dict[str, Any]
    if ds.hub is not None:
        source = {"hub": ds.hub}
    elif ds.pvc is not None:
        source = {"path": posixpath.join(layout.claim(ds.pvc.claim_name), ds.pvc.path)}
    elif ds.config_map is not None:
        source = {"path": posixpath.join(layout.configmap_root, ds.config_map.name, ds.config_map.key)}
    else:
        source = {"rows": ds.inline}
    dataset = DataSource(**source, format=ds.format, eval_split=ds.eval_split, max_samples=ds.max_samples)
    return TrainerConfig(
        run=RunInfo(id=rid, sftjob=name, namespace=namespace),
        model=model,
        dataset=dataset,
        chat_template=spec.chat_template,
        method=spec.method,
        lora=spec.lora,
        quantization=spec.quantization,
        training=spec.training,
        output=OutputTarget(dir=layout.output_dir, merge_adapter=spec.output.merge_adapter),
        progress=ProgressEndpoint(port=layout.progress_port),
    )


def model_summary(spec: api.SFTJobSpec) -> str:
    """The base model in a few words, for `kubectl get sftjobs`."""
    if spec.model.hub is not None:
        return spec.model.hub.id
    assert spec.model.pvc is not None
    return f"pvc:{spec.model.pvc.claim_name}/{spec.model.pvc.path}"
