"""`sftop run MANIFEST --local`: the run an SFTJob would start in the cluster, on this machine.

The trainer config is rendered exactly as the operator renders it; only the volumes move. A claim named in
the manifest is the folder `<volumes>/<claimName>`, the output lands in the run folder the pod would write
(`<volumes>/<output claim>/<path>/<namespace>/<name>/<run id>`), and a ConfigMap data source is read from a
ConfigMap in the same manifest file. Hub models and datasets download as usual (HF_TOKEN for gated ones).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftop import api, manifest, render, validate


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


def prepare(path: Path, volumes: Path, name: str | None = None, gpus: int | None = None, plan_only: bool = False) \
        -> tuple[api.SFTJob, str, Path, Path]:
    """Parse the manifest and write the trainer config. Returns (job, run id, run folder, config path). `gpus`:
    the GPUs this machine has, when the run is to train here. `plan_only`: a warm start that is not on this
    machine is left out of the plan (with a note) instead of stopping it."""
    docs = manifest.read(path)
    raw = _pick(docs, name)
    # What the API server and the operator would reject, in the words `sftop validate` uses.
    problems = validate.validate_document(raw)
    if problems:
        raise LocalRunError("invalid SFTJob:\n  " + "\n  ".join(map(str, problems)))
    job = api.SFTJob.model_validate(raw)
    namespace = job.metadata.namespace or "default"
    spec = job.spec
    rid = render.run_id(spec)
    output = volumes / spec.output.pvc.claim_name / render.run_folder(spec, namespace, job.metadata.name, rid)
    configmaps = volumes / ".configmaps"
    if spec.dataset.config_map is not None:
        ref = spec.dataset.config_map
        keys = [("dataset.configMap", ref.key)]
        if spec.dataset.eval_split is not None and spec.dataset.eval_split.file is not None:
            keys.append(("dataset.evalSplit.file", spec.dataset.eval_split.file))
        found = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ConfigMap"
                 and d.get("metadata", {}).get("name") == ref.name]
        for field, key in keys:
            if not found or key not in (found[0].get("data") or {}):
                raise LocalRunError(f"{field}: ConfigMap {ref.name} with key {key} is not in {path}")
            target = configmaps / ref.name / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(found[0]["data"][key])
    layout = render.Layout(pvc_root=str(volumes), configmap_root=str(configmaps), output_dir=str(output),
                           output_claim_mount=None, progress_port=0)
    try:
        warm_start = local_warm_start(spec, volumes, namespace, job.metadata.name, rid)
    except LocalRunError as e:
        if not plan_only:
            raise
        print(f"note: {e}; the plan leaves the warm start out (the cluster's Validating phase checks the adapter)",
              file=sys.stderr)
        warm_start = None
    cfg = render.trainer_config(job.metadata.name, namespace, spec, rid, layout, warm_start)
    if gpus is not None:
        cfg.hardware.gpus = min(spec.resources.gpus, gpus)
    output.mkdir(parents=True, exist_ok=True)
    config_path = output / "trainer-config.json"
    config_path.write_text(json.dumps(cfg.dump(), indent=2) + "\n")
    return job, rid, output, config_path


def local_warm_start(spec: api.SFTJobSpec, volumes: Path, namespace: str, name: str,
                     rid: str) -> render.ClaimPath | None:
    """spec.warmStart on this machine: a claim is a folder under `volumes`, and an SFTJob's runs are the run folders
    `sftop run --local` left on the output claim (the newest one that succeeded, unless runId names one)."""
    ws = spec.warm_start
    if ws is None:
        return None
    if ws.pvc is not None:
        return render.ClaimPath(ws.pvc.claim_name, ws.pvc.path.rstrip("/"))
    assert ws.sft_job is not None
    claim = spec.output.pvc.claim_name
    parent = render.run_folder(spec, namespace, ws.sft_job, "x").rsplit("/", 1)[0]
    folder = volumes / claim / parent
    runs = [p for p in folder.iterdir() if p.is_dir() and p.name != rid] if folder.is_dir() else []
    if ws.run_id is not None:
        runs = [p for p in runs if p.name == ws.run_id]
    else:
        runs = sorted((p for p in runs if _succeeded(p)), key=lambda p: (p / "result.json").stat().st_mtime)[-1:]
    if not runs:
        which = f"run {ws.run_id}" if ws.run_id else "run that succeeded"
        raise LocalRunError(f"spec.warmStart: no {which} of SFTJob {ws.sft_job} in {folder}")
    chosen = f"{parent}/{runs[-1].name}"
    if ws.checkpoint is not None:
        return render.ClaimPath(claim, f"{chosen}/checkpoints/checkpoint-{ws.checkpoint}")
    if not _succeeded(runs[-1]):
        raise LocalRunError(f"spec.warmStart: run {runs[-1].name} of SFTJob {ws.sft_job} did not succeed; name one "
                            f"of its checkpoints with warmStart.checkpoint")
    return render.ClaimPath(claim, f"{chosen}/adapter")


def _succeeded(run_folder: Path) -> bool:
    try:
        return json.loads((run_folder / "result.json").read_text()).get("status") == "Succeeded"
    except (OSError, ValueError):
        return False


def gpu_note(spec: api.SFTJobSpec, visible: int) -> str | None:
    """What to tell a user whose SFTJob asks for GPUs this machine lacks (or has fewer of)."""
    wanted = spec.resources.gpus
    if wanted and visible == 0:
        return (f"the SFTJob asks for {wanted} GPU(s) (resources.gpus) and this machine has none: training on the "
                f"CPU, which is much slower")
    if wanted > visible > 0:
        return (f"the SFTJob asks for {wanted} GPU(s) (resources.gpus) and this machine has {visible}: training on "
                f"{visible}")
    return None


def _trainer(config_path: Path, message_file: Path, *flags: str) -> tuple[int, dict[str, Any]]:
    """The trainer's command in this process: (exit code, its termination message)."""
    from sftop_trainer.__main__ import main as train_main

    message_file.unlink(missing_ok=True)
    previous = os.environ.get("SFTOP_TERMINATION_LOG")
    os.environ["SFTOP_TERMINATION_LOG"] = str(message_file)
    try:
        code = train_main(["--config", str(config_path), *flags])
    finally:
        if previous is None:
            os.environ.pop("SFTOP_TERMINATION_LOG", None)
        else:
            os.environ["SFTOP_TERMINATION_LOG"] = previous
    return code, json.loads(message_file.read_text()) if message_file.exists() else {}


def _nodes(config_path: Path, output: Path, nodes: int, gpus: int, visible: int) -> tuple[int, dict[str, Any]]:
    """A multi-node run on this machine: one trainer command per node, as the Indexed Job's pods run it, meeting
    through the same c10d rendezvous on 127.0.0.1. GPUs are split among the nodes; without GPUs, each node is one
    CPU process. Returns the run's exit code and the termination message that explains it."""
    import socket
    import subprocess

    from sftop_trainer.launch import worst
    from sftop_trainer.threads import available_cpus

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    per_node = min(gpus, visible // nodes) if visible >= nodes else 0
    processes = max(1, per_node)
    procs, messages = [], []
    for index in range(nodes):
        message = output / f"termination-message-{index}.json"
        message.unlink(missing_ok=True)
        messages.append(message)
        env = {**os.environ, "JOB_COMPLETION_INDEX": str(index), "SFTOP_RENDEZVOUS": f"127.0.0.1:{port}",
               "SFTOP_NODE_ADDRESS": "127.0.0.1", "SFTOP_TERMINATION_LOG": str(message),
               "SFTOP_PROCESSES": str(processes),
               "OMP_NUM_THREADS": str(max(1, available_cpus() // (nodes * processes)))}
        if per_node:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index * per_node + i) for i in range(per_node))
        procs.append(subprocess.Popen([sys.executable, "-m", "sftop_trainer", "--config", str(config_path),
                                       "--no-progress-bar"], env=env))
    print(f"note: {nodes} nodes on this machine, {processes} training process(es) each, meeting at 127.0.0.1:{port}",
          file=sys.stderr)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        codes = [p.wait() for p in procs]
    code = worst(codes)
    texts = [json.loads(m.read_text()) if m.exists() else {} for m in messages]
    failed = [t for c, t in zip(codes, texts) if c == code and code]
    return code, failed[0] if failed else next((t for t in texts if t.get("runId") or t.get("steps")), texts[0])


def plan(path: Path, volumes: Path, name: str | None = None) -> LocalRun:
    """`sftop plan`: the SFTJob's Validating phase on this machine. The plan is printed; it and the prepared data
    stay in the run folder, where `sftop run --local` finds them."""
    job, rid, output, config_path = prepare(path, volumes, name, plan_only=True)
    code, message = _trainer(config_path, output / "termination-message.json", "--validate")
    return LocalRun(job.metadata.name, job.metadata.namespace or "default", rid, output, config_path, code,
                    message.get("plan"), message)


def run(path: Path, volumes: Path, name: str | None = None, progress_bar: bool = True) -> LocalRun:
    """The plan first (printed), then training, as in the cluster: with distribution.nodes > 1, one trainer command
    per node on this machine."""
    import torch

    visible = torch.cuda.device_count()
    job, rid, output, config_path = prepare(path, volumes, name, gpus=visible)
    note = gpu_note(job.spec, visible)
    if note:
        print(f"note: {note}", file=sys.stderr)
    message_file = output / "termination-message.json"
    code, message = _trainer(config_path, message_file, "--validate")
    if code == 0:
        from sftop_trainer.plan import does_not_fit

        problem = does_not_fit(message.get("plan") or {})
        if problem and visible:
            code, message = 67, {"reason": "InsufficientGPUMemory", "message": problem}
    nodes = job.spec.distribution.nodes
    if code == 0 and nodes > 1:
        code, message = _nodes(config_path, output, nodes, job.spec.resources.gpus, visible)
    elif code == 0:
        code, message = _trainer(config_path, message_file,
                                 "--progress-bar" if progress_bar else "--no-progress-bar")
    result_file = output / "result.json"
    result = json.loads(result_file.read_text()) if code == 0 and result_file.exists() else None
    return LocalRun(job.metadata.name, job.metadata.namespace or "default", rid, output, config_path, code, result,
                    message)


def _percent(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.1f}%"


def summary(run: LocalRun) -> list[str]:
    """A finished run in a few lines: steps, losses, evaluation before and after, where the output is."""
    r = run.result or {}
    lines = [f"run {run.run_id} of {run.name} succeeded: {r.get('steps')} steps"
             + (f" in {r['trainRuntimeSeconds']:.0f} s of training" if r.get("trainRuntimeSeconds") else "")]
    first, last = r.get("firstLoss"), r.get("finalLoss")
    if first is not None and last is not None:
        lines.append(f"loss: {first:.4f} -> {last:.4f}" if r.get("steps", 0) > 1 else f"loss: {first:.4f} (1 step)")
    ev = r.get("evaluation") or {}
    before, after = ev.get("before") or {}, ev.get("after") or {}
    if after.get("evalLoss") is not None:
        lines.append("eval loss: " + (f"{before['evalLoss']:.4f} -> " if before.get("evalLoss") is not None else "")
                     + f"{after['evalLoss']:.4f}")
    few = ev.get("fewShot") or {}
    for key, label in (("exactMatch", "exact match"), ("validJson", "valid JSON")):
        if key in after:
            lines.append(f"{label} on {ev.get('prompts')} held-out prompts: "
                         + (f"{_percent(before.get(key))} -> " if key in before else "") + _percent(after[key])
                         + (f" ({few['shots']}-shot prompting, no training: {_percent(few[key])})" if key in few
                            else ""))
    kind = "model" if r.get("method") == "full" else "adapter"
    lines.append(f"{kind}: {run.output_dir / r.get('adapterPath', '')}")
    return lines
