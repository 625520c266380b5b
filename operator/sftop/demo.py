"""`sftop demo`: fine-tune a real chat model to turn requests into Task API JSON, on a laptop CPU.

It fine-tunes SmolLM2-135M-Instruct (installed from PyPI, see `sftop_trainer.packaged`) on generated Task API
data: natural-language task requests -> the JSON call they mean. Training rows and held-out requests never share
a task title, so the score measures what the model learnt, not what it memorised. The demo writes the data and
the model into local "volumes", writes the SFTJob manifest a user would apply, runs it with `sftop run --local`
(the trainer config the operator renders), and shows what the trainer's evaluation measured on the held-out
requests before and after: exact-match and valid-JSON rates, and three sample answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
import time
from pathlib import Path

from sftop import local

TRAIN_ROWS, TEST_ROWS = 1000, 50

MANIFEST = """\
apiVersion: sftop.dev/v1alpha1
kind: SFTJob
metadata:
  name: task-api-demo
spec:
  model:
    pvc: {claimName: models, path: SmolLM2-135M-Instruct}   # or hub: {id: HuggingFaceTB/SmolLM2-135M-Instruct}
  dataset:
    pvc: {claimName: data, path: task-api/train.jsonl}
    evalSplit: {file: task-api/test.jsonl}
  method: lora
  lora: {r: 32, alpha: 64, dropout: 0.0}
  training:
    maxSteps: 100
    learningRate: 2.0e-3
    perDeviceTrainBatchSize: 2
    perDeviceEvalBatchSize: 32
    loggingSteps: 10
    saveSteps: 100
    gradientCheckpointing: false
  evaluation: {prompts: 50, samples: 3, fewShot: 3}
  resources: {gpus: 0}
  output:
    pvc: {claimName: adapters}
"""


def _percent(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}%"


def report(result: dict, started: float) -> str:
    ev = result.get("evaluation") or {}
    before, after = ev.get("before") or {}, ev.get("after") or {}
    few = ev.get("fewShot") or {}
    lines = [f"held-out requests ({ev.get('prompts')}, task titles never seen in training):",
             "                 before" + (f"  {few.get('shots')}-shot" if few else "") + "   after"]
    for key, label in (("exactMatch", "exact match"), ("validJson", "valid JSON")):
        lines.append(f"  {label:<15}{_percent(before.get(key))}" + (f"  {_percent(few.get(key))}" if few else "")
                     + f"  {_percent(after.get(key))}")
    if before.get("evalLoss") is not None and after.get("evalLoss") is not None:
        lines.append(f"  eval loss      {before['evalLoss']:6.3f}  " + ("        " if few else "")
                     + f"{after['evalLoss']:6.3f}")
    for i, sample in enumerate(ev.get("samples") or [], start=1):
        lines += ["", f"sample {i}: {sample['prompt']}",
                  f"  expected: {sample['expected']}",
                  f"  before:   {textwrap.shorten(sample.get('before') or '', 160, placeholder=' …')}",
                  f"  after:    {sample['answer']}"]
    lines += ["", f"{result['steps']} steps, {result.get('trainRuntimeSeconds') or 0:.0f} s of training; "
                  f"{time.time() - started:.0f} s in all"]
    return "\n".join(lines)


def main(workdir: Path) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach for a hub
    from sftop_trainer import packaged, taskapi

    started = time.time()
    try:
        model = packaged.model_folder()
    except packaged.NotInstalled as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    volumes = workdir / "volumes"
    packaged.place(model, volumes / "models" / packaged.FOLDER)
    train, test = taskapi.split(TRAIN_ROWS, TEST_ROWS, seed=0)
    taskapi.write_jsonl(train, volumes / "data" / "task-api" / "train.jsonl")
    taskapi.write_jsonl(test, volumes / "data" / "task-api" / "test.jsonl")
    manifest = workdir / "sftjob.yaml"
    manifest.write_text(MANIFEST)
    print(f"wrote {len(train)} Task API examples and {len(test)} held-out requests (disjoint titles) to "
          f"{volumes / 'data' / 'task-api'}, SmolLM2-135M-Instruct to {volumes / 'models'}, and {manifest}")
    print(f"running: sftop run {manifest} --local --volumes {volumes}", flush=True)
    run = local.run(manifest, volumes)
    if run.exit_code != 0:
        print(f"the run failed ({run.message.get('reason')}): {run.message.get('message')}", file=sys.stderr)
        return run.exit_code
    shown = "\n".join(local.summary(run)) + "\n\n" + report(run.result, started)
    print(shown)
    # What this run showed, and the source it ran: the test suite checks the README's demo run by this record
    # when it ran on the same source, instead of training the same 100 steps again.
    (workdir / "demo.json").write_text(json.dumps({"source": source_digest(), "shown": shown}))
    return 0


def source_digest() -> str:
    """sha256 of the operator's and the trainer's Python source, as installed."""
    import sftop
    import sftop_trainer

    digest = hashlib.sha256()
    for package in (sftop, sftop_trainer):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
