"""Serving parity: the adapter folder a run wrote, loaded the way a serving stack loads it, answers the held-out
prompts as the trainer's own evaluation did.

`check` runs `python -m sftop_trainer.parity` in a fresh process: nothing of the training process (its model
object, tokenizer, chat template in memory, TRL's wrappers) can leak into the answers. That process knows only the
adapter folder: the base model by the name in adapter_config.json (`base_model_name_or_path`, and its `revision`),
the tokenizer and chat template from the folder itself, the adapter by PeftModel.from_pretrained. It answers
greedily with the same decoding as the trainer's evaluation (sftop_trainer.evaluate.generate: stop tokens, answer
length) in the dtype the run computed in. Different answers mean the folder does not reproduce what was measured
(a template the tokenizer did not save, a base that resolves to other weights, an adapter saved wrongly): a
promotion gate refuses such a run (ServingMismatch).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_SHOWN = 200  # characters of a differing answer in the result


def served_answers(adapter: Path, items, new_tokens: int, dtype: str, base_path: str | None = None,
                   batch_size: int = 32, shown: int = 0, autocast: str | None = None, revision: str | None = None,
                   trust_remote_code: bool = False) -> list[str]:
    """The held-out prompts answered by the adapter folder alone (see the module's docstring), on the device the
    run evaluated on (a GPU when there is one) and under the run's mixed precision (`autocast`), as the trainer's
    evaluation answered. The base by the name in adapter_config.json, from this machine's Hugging Face cache only
    (never a download: HF_HUB_OFFLINE); where that name is not cached (a model on a claim, known by its Hub id),
    the run's own copy at `base_path`, as a server mounts its own copy of the base."""
    import contextlib

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftop_trainer.evaluate import generate

    config = json.loads((adapter / "adapter_config.json").read_text())
    base_name = config["base_model_name_or_path"]
    kw: dict[str, Any] = {"dtype": getattr(torch, dtype), "trust_remote_code": trust_remote_code}
    if revision:
        kw["revision"] = revision
    try:
        base = AutoModelForCausalLM.from_pretrained(base_name, **kw)
    except (OSError, ValueError):  # not a name this machine resolves (a pvc:// or an uncached Hub id)
        if not base_path or base_path == base_name:
            raise
        base = AutoModelForCausalLM.from_pretrained(base_path, **{k: v for k, v in kw.items() if k != "revision"})
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    model = PeftModel.from_pretrained(base, str(adapter))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    precision = torch.autocast(device, dtype=getattr(torch, autocast)) if autocast else contextlib.nullcontext()
    with precision:
        return generate(model, tokenizer, items, new_tokens, batch_size, shown=shown)


def compare(prompts: list[Any], trainer: list[str], served: list[str]) -> dict[str, Any]:
    """{prompts, differing, firstDifference}: the served answers against the trainer's, prompt by prompt."""
    differing = [i for i, (a, b) in enumerate(zip(trainer, served)) if a != b]
    out: dict[str, Any] = {"prompts": len(trainer), "differing": len(differing)}
    if differing:
        i = differing[0]
        prompt = prompts[i]
        text = prompt if isinstance(prompt, str) else next(
            (m.get("content") or "" for m in reversed(prompt) if m.get("role") == "user"), "")
        out["firstDifference"] = {"prompt": text[:MAX_SHOWN], "trainer": trainer[i][:MAX_SHOWN],
                                  "served": served[i][:MAX_SHOWN]}
    return out


def check(adapter: Path, items, trainer_answers: list[str], new_tokens: int, dtype: str, base_path: str | None = None,
          batch_size: int = 32, shown: int = 0, autocast: str | None = None, revision: str | None = None,
          trust_remote_code: bool = False, timeout: float = 3600) -> dict[str, Any]:
    """Parity of `adapter` against the trainer's answers to `items`, measured in a fresh process, decoded as the
    trainer decoded them (the same batches, and the first `shown` answers kept going as long as a sample is).
    Never raises: a folder that cannot be loaded or answer is reported as such (`error`), with every answer counted
    as differing."""
    with tempfile.TemporaryDirectory() as tmp:
        given = Path(tmp) / "items.json"
        given.write_text(json.dumps({"prompts": [h.prompt for h in items], "expected": [h.expected for h in items],
                                     "newTokens": new_tokens, "dtype": dtype, "basePath": base_path,
                                     "batchSize": batch_size, "shown": shown, "autocast": autocast,
                                     "revision": revision, "trustRemoteCode": trust_remote_code}))
        answers = Path(tmp) / "answers.json"
        cmd = [sys.executable, "-m", "sftop_trainer.parity", "--adapter", str(adapter), "--items", str(given),
               "--out", str(answers)]
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        env["HF_HUB_OFFLINE"] = "1"  # the base as this pod has it; a download here could fill the pod's disk
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"prompts": len(items), "differing": len(items), "error": f"no answers within {timeout:.0f}s"}
        if done.returncode != 0 or not answers.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"prompts": len(items), "differing": len(items),
                    "error": f"the adapter folder could not be loaded and answer: {tail[0][:300]}"}
        served = json.loads(answers.read_text())
    result = compare([h.prompt for h in items], trainer_answers, served)
    log.info("serving parity: %d of %d answers differ from the trainer's", result["differing"], result["prompts"])
    return result


def main(argv: list[str] | None = None) -> int:
    from sftop_trainer.evaluate import HeldOut

    p = argparse.ArgumentParser(prog="python -m sftop_trainer.parity")
    p.add_argument("--adapter", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("SFTOP_LOG_LEVEL", "WARNING"))
    given = json.loads(Path(args.items).read_text())
    items = [HeldOut(prompt, expected) for prompt, expected in zip(given["prompts"], given["expected"])]
    answers = served_answers(Path(args.adapter), items, given["newTokens"], given["dtype"], given.get("basePath"),
                             given.get("batchSize", 32), given.get("shown", 0), given.get("autocast"),
                             given.get("revision"), bool(given.get("trustRemoteCode")))
    Path(args.out).write_text(json.dumps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
