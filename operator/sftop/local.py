"""`sftop run MANIFEST --local`: the run an SFTJob would start in the cluster, on this machine.

The trainer config is rendered exactly as the operator renders it; only the volumes move. A claim named in
the manifest is the folder `<volumes>/<claimName>`, the output lands in the run folder the pod would write
(`<volumes>/<output claim>/<path>/<namespace>/<name>/<run id>`), and a ConfigMap data source is read from a
ConfigMap in the same manifest file. Hub models and datasets download as usual (HF_TOKEN for gated ones).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sftop import api, render


class LocalRunError(Exception):
    """The manifest cannot run locally; the message says why."""


@dataclass
class LocalRun:
    name: str
    namespace: str
    run_id: str
    output_dir: Path
    config_path: Path
    exit_code: int
    result: dict[str, Any] | None
    message: dict[str, Any]


def _pick(docs: list[Any], name: str | None) -> dict[str, Any]:
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == api.KIND]
    if name:
        jobs = [d for d in jobs if d.get("metadata", {}).get("name") == name]
    if len(jobs) != 1:
        names = [d.get("metadata", {}).get("name") for d in docs if isinstance(d, dict) and d.get("kind") == api.KIND]
        raise LocalRunError(f"expected one SFTJob{f' named {name}' if name else ''} in the manifest, found "
                            f"{names or 'none'}; choose one with --name")
    return jobs[0]


def prepare(manifest: Path, volumes: Path, name: str | None = None) -> tuple[api.SFTJob, str, Path, Path]:
    """Parse the manifest and write the trainer config. Returns (job, run id, run folder, config path)."""
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d is not None]
    raw = _pick(docs, name)
    try:
        job = api.SFTJob.model_validate(raw)
    except ValidationError as e:
        raise LocalRunError("invalid SFTJob:\n  " + "\n  ".join(api.error_lines(e))) from None
    namespace = job.metadata.namespace or "default"
    spec = job.spec
    rid = render.run_id(spec)
    output = volumes / spec.output.pvc.claim_name / render.run_folder(spec, namespace, job.metadata.name, rid)
    configmaps = volumes / ".configmaps"
    if spec.dataset.config_map is not None:
        ref = spec.dataset.config_map
        found = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ConfigMap"
                 and d.get("metadata", {}).get("name") == ref.name]
        if not found or ref.key not in (found[0].get("data") or {}):
            raise LocalRunError(f"dataset.configMap: ConfigMap {ref.name} with key {ref.key} is not in {manifest}")
        target = configmaps / ref.name / ref.key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(found[0]["data"][ref.key])
    layout = render.Layout(pvc_root=str(volumes), configmap_root=str(configmaps), output_dir=str(output),
                           progress_port=0)
    cfg = render.trainer_config(job.metadata.name, namespace, spec, rid, layout)
    output.mkdir(parents=True, exist_ok=True)
    config_path = output / "trainer-config.json"
    config_path.write_text(json.dumps(cfg.dump(), indent=2) + "\n")
    return job, rid, output, config_path


def run(manifest: Path, volumes: Path, name: str | None = None, progress_bar: bool = True) -> LocalRun:
    from sftop_trainer.__main__ import main as train_main

    job, rid, output, config_path = prepare(manifest, volumes, name)
    message_file = output / "termination-message.json"
    previous = os.environ.get("SFTOP_TERMINATION_LOG")
    os.environ["SFTOP_TERMINATION_LOG"] = str(message_file)
    try:
        code = train_main(["--config", str(config_path), "--progress-bar" if progress_bar else "--no-progress-bar"])
    finally:
        if previous is None:
            os.environ.pop("SFTOP_TERMINATION_LOG", None)
        else:
            os.environ["SFTOP_TERMINATION_LOG"] = previous
    message = json.loads(message_file.read_text()) if message_file.exists() else {}
    result_file = output / "result.json"
    result = json.loads(result_file.read_text()) if code == 0 and result_file.exists() else None
    return LocalRun(job.metadata.name, job.metadata.namespace or "default", rid, output, config_path, code, result,
                    message)
