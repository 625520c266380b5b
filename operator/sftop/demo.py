"""`sftop demo`: the whole path on a laptop CPU in about a minute, with nothing downloaded.

It writes a Task API dataset (natural-language task requests -> Task API JSON calls) and a tiny model built
from scratch into local "volumes", writes the SFTJob manifest a user would apply, runs it with
`sftop run --local` (the same trainer config the operator renders), and shows the loss and a sample answer
before and after fine-tuning.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any

from sftop import local

MANIFEST = """\
apiVersion: sftop.dev/v1alpha1
kind: SFTJob
metadata:
  name: task-api-demo
spec:
  model:
    pvc: {claimName: models, path: tiny-task-model}
  dataset:
    pvc: {claimName: data, path: task-api.jsonl}
    format: messages
    evalSplit: {fraction: 0.05}
  method: lora
  lora: {r: 32, alpha: 64, dropout: 0.0}
  training:
    epochs: 2
    learningRate: 5.0e-3
    perDeviceTrainBatchSize: 16
    lrSchedulerType: cosine
    loggingSteps: 10
    saveSteps: 50
    gradientCheckpointing: false
  resources: {gpus: 0}
  output:
    pvc: {claimName: adapters}
"""


def assistant_loss(model, tokenizer, rows: list[dict[str, Any]]) -> float:
    """Mean loss over the assistant tokens of `rows`: how well the model writes the Task API calls."""
    import torch

    losses = []
    model.eval()
    with torch.no_grad():
        for row in rows:
            enc = tokenizer.apply_chat_template(row["messages"], return_tensors="pt", return_dict=True,
                                                return_assistant_tokens_mask=True)
            labels = enc["input_ids"].clone()
            labels[torch.as_tensor(enc["assistant_masks"]).reshape(labels.shape) == 0] = -100
            losses.append(model(input_ids=enc["input_ids"], labels=labels).loss.item())
    return sum(losses) / len(losses)


def answer(model, tokenizer, request: str) -> str:
    import torch

    enc = tokenizer.apply_chat_template([{"role": "user", "content": request}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=48, do_sample=False)
    return tokenizer.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def main(workdir: Path) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach for a hub
    from sftop_trainer.__main__ import quiet_known_noise

    quiet_known_noise()
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()

    from sftop_trainer.tiny import build_tiny_model, corpus, task_api_rows, write_jsonl

    started = time.time()
    volumes = workdir / "volumes"
    rows = task_api_rows(1200, seed=0)
    held_out = task_api_rows(40, seed=99)
    write_jsonl(rows, volumes / "data" / "task-api.jsonl")
    model_dir = build_tiny_model(volumes / "models" / "tiny-task-model", corpus(rows), hidden=96, layers=2)
    manifest = workdir / "sftjob.yaml"
    manifest.write_text(MANIFEST)
    print(f"wrote {len(rows)} Task API examples, a tiny model ({model_dir}) and the manifest {manifest}")

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    request = held_out[0]["messages"][0]["content"]
    before_loss, before_answer = assistant_loss(base, tokenizer, held_out), answer(base, tokenizer, request)

    print(f"running: sftop run {manifest} --local --volumes {volumes}")
    run = local.run(manifest, volumes)
    if run.exit_code != 0:
        print(f"the run failed ({run.message.get('reason')}): {run.message.get('message')}")
        return run.exit_code
    adapter = run.output_dir / run.result["adapterPath"]
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter)
    after_loss, after_answer = assistant_loss(tuned, tokenizer, held_out), answer(tuned, tokenizer, request)
    expected = held_out[0]["messages"][1]["content"]
    print(textwrap.dedent(f"""
        adapter:          {adapter}
        loss (held out):  {before_loss:.3f} before -> {after_loss:.3f} after ({run.result['steps']} steps, \
{run.result['trainRuntimeSeconds']:.0f} s of training)
        request:          {request}
        expected:         {expected}
        answer before:    {before_answer[:120]}
        answer after:     {after_answer[:120]}
        valid JSON after: {_is_json(after_answer)}
        total time:       {time.time() - started:.0f} s
    """).rstrip())
    return 0


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False
