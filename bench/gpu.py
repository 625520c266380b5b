"""GPU memory, throughput and model FLOPs utilisation of sftop-train, against its plan and against bare TRL.

    python bench/gpu.py                       # one GPU, a few minutes, nothing downloaded
    python bench/gpu.py --dry-run             # the same code on the CPU with a tiny model, in seconds
    python bench/gpu.py --json report.json    # the report as JSON too

Models: Llama 3.2 1B and Llama 3.1 8B as published (bench/models/*.json), built with random weights on the GPU and
saved once to a temporary folder, with a byte-level BPE tokenizer trained locally (sftop_trainer.tiny). Cases: LoRA
and QLoRA (4-bit) on both, full fine-tuning on the 1B; maxLength 2048 with packing, so every sequence is 2048
tokens. Each case trains the same settings through sftop-train and through a plain TRL script (bare TRL), each in
a process of its own so its peak memory is its own, and reports:

- peak GPU memory, `torch.cuda.max_memory_allocated()`, against the plan's estimate of what torch allocates (the
  plan's perGpu less its CUDA context part, which torch's allocator does not see); goal: within 15 %;
- tokens per second (the Trainer's non-padding input tokens over its training runtime), sftop against bare TRL;
  goal: >= 1.0x (within noise);
- model FLOPs utilisation: tokens/s × FLOPs per token over the GPU's dense bf16 peak (`--peak-tflops`, or a
  table of known GPUs). FLOPs per token are 6 per parameter for full fine-tuning and 4 per frozen parameter under
  LoRA (forward, and the backward pass to the inputs; no weight gradients), plus attention's 12 × layers ×
  hidden × sequence (PaLM's appendix B); gradient checkpointing's recomputation is not counted, as MFU is defined.

`--dry-run` runs the tiny model's LoRA, QLoRA and full cases on the CPU (float32, 128 tokens, 2 steps) in this
process: the report has the same shape, with no GPU peak and no MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SFTOP_PROCESSES", "1")  # one training process on one GPU, never a torchrun relaunch

MODELS = Path(__file__).resolve().parent / "models"
CASES = [("llama-1b", "lora"), ("llama-1b", "qlora"), ("llama-1b", "full"), ("llama-8b", "lora"),
         ("llama-8b", "qlora")]
DRY_CASES = [("tiny", "lora"), ("tiny", "qlora"), ("tiny", "full")]
# Dense bf16 tensor-core peaks, TFLOPS, from NVIDIA's data sheets (SXM parts; without sparsity).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
LR, WARMUP = 2e-4, 0.03
PLAN_GOAL, SPEED_GOAL = 0.15, 1.0


def settings(dry_run: bool) -> dict[str, Any]:
    """What both trainers get: the sequence length, batch, steps and precision."""
    if dry_run:
        return {"max_length": 128, "batch": 1, "steps": 2, "rows": 200, "compute": "float32"}
    return {"max_length": 2048, "batch": 2, "steps": 10, "rows": 3000, "compute": "bfloat16"}


# ------------------------------------------------------------------------------------------------ the models


def build_model(name: str, folder: Path, texts: list[str]) -> Path:
    """A random-weight model saved with save_pretrained, and its tokenizer: the tiny one for the dry run, else the
    published config of bench/models/NAME.json, built on the GPU in bfloat16 (seconds, where a CPU takes minutes)."""
    import torch
    from sftop_trainer.tiny import build_tiny_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    build_tiny_model(folder, texts)  # the tokenizer (and, for the dry run, the model)
    if name == "tiny":
        return folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    spec = {k: v for k, v in json.loads((MODELS / f"{name}.json").read_text()).items() if not k.startswith("_")}
    config = LlamaConfig(**spec, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def parameters(model_dir: Path) -> dict[str, int]:
    """Layers, hidden size and parameter count from the saved config alone (the plan's own count)."""
    from sftop_trainer import memory, plan
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    shape = memory.shape_of(config)
    return {"layers": shape.layers, "hidden": shape.hidden,
            "parameters": memory.parameters_of(plan.empty_model(config)).total}


# ------------------------------------------------------------------------------------------------ one run each


def trainer_config(model_dir: Path, data: Path, out: Path, method: str, s: dict[str, Any], gpu: bool) -> dict:
    cfg: dict[str, Any] = {
        "model": {"name": str(model_dir), "dtype": "auto"}, "dataset": {"path": str(data), "format": "messages"},
        "method": method,
        "training": {"maxSteps": s["steps"], "learningRate": LR, "warmupRatio": WARMUP,
                     "perDeviceTrainBatchSize": s["batch"], "maxLength": s["max_length"], "packing": True,
                     "loggingSteps": 1, "saveSteps": 100_000, "gradientCheckpointing": True},
        "output": {"dir": str(out)}, "progress": {"port": 0}, "hardware": {"gpus": 1 if gpu else 0},
        "evaluation": {"answers": False}}
    if method == "qlora":
        cfg["quantization"] = {"computeDtype": s["compute"]}
    return cfg


def run_sftop(config: dict) -> dict[str, Any]:
    """sftop-train on the config, in this process; its result.json's tokens and training runtime."""
    from sftop_trainer.__main__ import main

    path = Path(config["output"]["dir"]) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    os.environ["SFTOP_TERMINATION_LOG"] = os.devnull
    code = main(["--config", str(path), "--no-progress-bar"])
    if code != 0:
        raise SystemExit(f"sftop-train failed with exit code {code}")
    result = json.loads((Path(config["output"]["dir"]) / "result.json").read_text())
    return {"tokens": result["trainedTokens"], "runtime": result["trainRuntimeSeconds"], "steps": result["steps"]}


def run_bare(config: dict) -> dict[str, Any]:
    """The same run as a plain TRL script: SFTConfig, LoRA, 4-bit loading and mixed precision written out by hand
    as TRL's and PEFT's documentation show them."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    gpu = torch.cuda.is_available()
    t, method, name = config["training"], config["method"], config["model"]["name"]
    compute = torch.bfloat16 if gpu else torch.float32
    kw: dict[str, Any] = {"dtype": compute}
    if method == "full":
        kw["dtype"] = torch.float32  # float32 master weights under mixed precision
    if method == "qlora":
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=compute)
        kw["device_map"] = {"": 0} if gpu else "cpu"
    model = AutoModelForCausalLM.from_pretrained(name, **kw)
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    args = SFTConfig(output_dir=config["output"]["dir"] + "/checkpoints", max_steps=t["maxSteps"],
                     learning_rate=LR, warmup_steps=WARMUP, per_device_train_batch_size=t["perDeviceTrainBatchSize"],
                     gradient_accumulation_steps=1, max_length=t["maxLength"], packing=True, optim="adamw_torch",
                     lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0, seed=42, data_seed=42,
                     activation_checkpointing=True, logging_steps=1, save_strategy="no", report_to="none",
                     use_cpu=not gpu, bf16=gpu, fp16=False, assistant_only_loss=True, disable_tqdm=True,
                     include_num_input_tokens_seen="non_padding", logging_nan_inf_filter=False)
    peft = None if method == "full" else LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                    target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(name),
                         train_dataset=load_dataset("json", data_files=config["dataset"]["path"], split="train"),
                         peft_config=peft)
    output = trainer.train()
    return {"tokens": trainer.state.num_input_tokens_seen, "runtime": output.metrics["train_runtime"],
            "steps": trainer.state.global_step}


def measure(kind: str, config: dict) -> dict[str, Any]:
    """One run, with this process's peak GPU memory (None on a CPU)."""
    import torch

    out = (run_sftop if kind == "sftop" else run_bare)(config)
    out["peak"] = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return out


def apart(request: dict[str, Any], folder: Path, label: str) -> dict[str, Any]:
    """A request for `child` in a process of its own: a run's peak GPU memory is its alone, and all its GPU memory
    is freed when it ends."""
    path = folder / f"{label}-request.json"
    path.write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith('{"bench"')][-1])["bench"]


# ------------------------------------------------------------------------------------------------ the report


def planned_bytes(config: dict) -> tuple[float, float]:
    """(the plan's per-GPU estimate, the part torch's allocator holds), in GiB."""
    from sftop_trainer.config import TrainerConfig
    from sftop_trainer.plan import make_plan

    memory = make_plan(TrainerConfig.model_validate(config), gpus=1)["memory"]
    return memory["perGpu"], round(memory["perGpu"] - memory["parts"]["cuda"], 2)


def flops_per_token(method: str, params: dict[str, int], seq: int) -> float:
    """Training FLOPs per token: 6N for full fine-tuning, 4N for frozen weights (LoRA's adapters are negligible),
    plus attention's 12 × layers × hidden × sequence."""
    return (6 if method == "full" else 4) * params["parameters"] + 12 * params["layers"] * params["hidden"] * seq


def peak_tflops(override: float | None) -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name(0)
    if override:
        return name, override
    return name, next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def case_report(model: str, method: str, params: dict, s: dict, plan: tuple[float, float], sftop: dict,
                bare: dict, peak: float | None) -> dict[str, Any]:
    gib = 1024**3
    speed = {k: r["tokens"] / r["runtime"] if r["runtime"] else None for k, r in (("sftop", sftop), ("bare", bare))}
    fpt = flops_per_token(method, params, s["max_length"])
    mfu = {k: round(v * fpt / (peak * 1e12), 4) if v and peak else None for k, v in speed.items()}
    peak_gib = round(sftop["peak"] / gib, 2) if sftop["peak"] is not None else None
    return {
        "model": model, "method": method, "parameters": params["parameters"], "maxLength": s["max_length"],
        "batch": s["batch"], "steps": sftop["steps"],
        "planGiB": plan[0], "planAllocatedGiB": plan[1], "peakGiB": peak_gib,
        "bareTrlPeakGiB": round(bare["peak"] / gib, 2) if bare["peak"] is not None else None,
        "peakOverPlan": round(peak_gib / plan[1], 3) if peak_gib else None,
        "tokensPerSecond": round(speed["sftop"], 1) if speed["sftop"] else None,
        "bareTrlTokensPerSecond": round(speed["bare"], 1) if speed["bare"] else None,
        "speedRatio": round(speed["sftop"] / speed["bare"], 3) if speed["sftop"] and speed["bare"] else None,
        "mfu": mfu["sftop"], "bareTrlMfu": mfu["bare"],
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [(f"device: {report['device']}; bf16 peak {report['peakTflops'] or 'unknown'} TFLOPS; "
              f"{report['seconds']} s in all"), "",
             ("| model | method | peak GiB | plan GiB (allocated) | peak / plan | tokens/s | bare TRL tokens/s | "
              "ratio | MFU | bare TRL MFU |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        lines.append(f"| {c['model']} | {c['method']} | {c['peakGiB']} | {c['planGiB']} ({c['planAllocatedGiB']}) | "
                     f"{c['peakOverPlan']} | {c['tokensPerSecond']} | {c['bareTrlTokensPerSecond']} | "
                     f"{c['speedRatio']} | {c['mfu']} | {c['bareTrlMfu']} |")
    return "\n".join(lines)


def run(dry_run: bool, override_peak: float | None) -> dict[str, Any]:
    from sftop_trainer import taskapi
    from sftop_trainer.tiny import corpus

    started = time.time()
    s = settings(dry_run)
    device, peak = peak_tflops(override_peak)
    if not dry_run and device == "cpu":
        raise SystemExit("no GPU visible: run on one GPU, or use --dry-run")
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = taskapi.rows(s["rows"])
        data = taskapi.write_jsonl(rows, root / "data.jsonl")
        texts = corpus(taskapi.rows(400, seed=1))
        built: dict[str, tuple[Path, dict]] = {}
        for model, method in (DRY_CASES if dry_run else CASES):
            if model not in built:
                folder = root / model
                if dry_run:
                    build_model(model, folder, texts)
                else:
                    apart({"build": model, "folder": str(folder), "texts": texts}, root, f"build-{model}")
                built[model] = (folder, parameters(folder))
            folder, params = built[model]
            runs = {}
            for kind in ("sftop", "bare"):
                config = trainer_config(folder, data, root / f"{model}-{method}-{kind}", method, s, not dry_run)
                runs[kind] = measure(kind, config) if dry_run else \
                    apart({"measure": kind, "config": config}, root, f"{model}-{method}-{kind}")
                # checkpoints of the 1B's full fine-tuning alone take 20 GB: the disk holds one case at a time
                shutil.rmtree(config["output"]["dir"], ignore_errors=True)
            plan = planned_bytes(trainer_config(folder, data, root / f"{model}-{method}-plan", method, s,
                                                not dry_run))
            cases.append(case_report(model, method, params, s, plan, runs["sftop"], runs["bare"], peak))
            print(json.dumps(cases[-1]), file=sys.stderr, flush=True)
    return {"dryRun": dry_run, "device": device, "peakTflops": peak, "goals": {
        "peakWithinPlan": PLAN_GOAL, "speedRatioAtLeast": SPEED_GOAL}, "cases": cases,
        "seconds": round(time.time() - started, 1)}


def child(request_path: str) -> None:
    """The other side of measure_apart: build a model, or measure one run, and print it as one JSON line."""
    request = json.loads(Path(request_path).read_text())
    if "build" in request:
        build_model(request["build"], Path(request["folder"]), request["texts"])
        out: dict[str, Any] = {}
    else:
        out = measure(request["measure"], request["config"])
    print(json.dumps({"bench": out}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="the tiny model on the CPU, in this process, in seconds")
    p.add_argument("--json", help="also write the report to this file")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: a table of known GPUs)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    report = run(args.dry_run, args.peak_tflops)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
