"""Quality benchmark: does an SFTJob turn a real chat model into one that reliably does a task?

    python bench/quality.py                                   # the whole table (about an hour on 2 CPU cores)
    python bench/quality.py --variants lora --steps 25 50     # part of it

SmolLM2-135M-Instruct (installed from PyPI, `sftop_trainer.packaged`), fine-tuned through `sftop run --local`
(the trainer config the operator renders) on 2,000 distinct Task API rows (`sftop_trainer.taskapi`: a
natural-language task request -> the Task API JSON call it means), and scored by the trainer's own evaluation on
200 held-out requests whose task titles never occur in training: valid-JSON and exact-match rates (JSON answers
compared as parsed values), before training and after N steps. Each N is a run of its own, with the learning-rate
schedule a user asking for N steps gets. Variants:

    lora        the settings the demo uses (assistant-only loss, the default on conversations)
    qlora       the same on a 4-bit (nf4) base, through bitsandbytes' CPU path
    all-tokens  lora with training.assistantOnlyLoss: false (the system line, the request and the template's
                markup carry loss too)

Training time is the trainer's own `trainRuntimeSeconds` (wall time of the training loop on this machine's
cores); CPU time is what the whole `sftop run` process used (loading, evaluation and saving included). Runs go
one at a time; the trainer sizes its threads to the machine. Results are printed as a Markdown table for
bench/RESULTS.md, and written as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN_ROWS, TEST_ROWS = 2000, 200

MANIFEST = """\
apiVersion: sftop.dev/v1alpha1
kind: SFTJob
metadata: {{name: quality-{name}}}
spec:
  model: {{pvc: {{claimName: models, path: SmolLM2-135M-Instruct}}}}
  dataset:
    pvc: {{claimName: data, path: train.jsonl}}
    evalSplit: {{file: test.jsonl}}
  method: {method}
  lora: {{r: {rank}, alpha: {alpha}, dropout: 0.0, targetModules: {targets}}}
  training:
    maxSteps: {steps}
    maxLength: {max_length}
    packing: {packing}
    learningRate: {lr}
    perDeviceTrainBatchSize: {batch}
    perDeviceEvalBatchSize: 32
    loggingSteps: 5
    saveSteps: {steps}
    gradientCheckpointing: false
    seed: {seed}
    assistantOnlyLoss: {assistant_only}
  evaluation: {{prompts: {prompts}, baseline: {baseline}, samples: 3}}
  resources: {{gpus: 0}}
  output: {{pvc: {{claimName: adapters}}}}
"""

VARIANTS = {
    "lora": {"method": "lora", "assistant_only": "true"},
    "qlora": {"method": "qlora", "assistant_only": "true"},
    "all-tokens": {"method": "lora", "assistant_only": "false"},
}


def prepare(volumes: Path, system: str | None) -> None:
    from sftop_trainer import packaged, taskapi

    packaged.place(packaged.model_folder(), volumes / "models" / packaged.FOLDER)
    train, test = taskapi.split(TRAIN_ROWS, TEST_ROWS, seed=0)
    if system is not None:  # a system line of the data's own instead of the template's default one
        for row in train + test:
            row["messages"].insert(0, {"role": "system", "content": system})
    taskapi.write_jsonl(train, volumes / "data" / "train.jsonl")
    taskapi.write_jsonl(test, volumes / "data" / "test.jsonl")


def run_one(volumes: Path, variant: str, steps: int, knobs: argparse.Namespace, baseline: bool) -> dict:
    name = f"{variant}-{steps}"
    manifest = volumes.parent / f"{name}.yaml"
    manifest.write_text(MANIFEST.format(name=name, steps=steps, lr=knobs.lr, batch=knobs.batch, rank=knobs.rank,
                                        alpha=knobs.alpha, seed=knobs.seed, prompts=TEST_ROWS,
                                        targets=json.dumps(knobs.targets), max_length=knobs.max_length,
                                        packing="true" if knobs.packing else "false",
                                        baseline="true" if baseline else "false", **VARIANTS[variant]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "sftop.cli", "run", str(manifest), "--local", "--volumes",
                           str(volumes), "--no-progress-bar"], capture_output=True, text=True)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    folder = next((volumes / "adapters" / "default" / f"quality-{name}").iterdir())
    result = json.loads((folder / "result.json").read_text())
    ev = result.get("evaluation") or {}
    return {"variant": variant, "steps": steps, "learningRate": knobs.lr, "batch": knobs.batch, "rank": knobs.rank,
            "alpha": knobs.alpha, "seed": knobs.seed, "targets": knobs.targets, "packing": knobs.packing,
            "maxLength": knobs.max_length, "system": knobs.system, "wallSeconds": round(wall, 1),
            "cpuSeconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "trainSeconds": result.get("trainRuntimeSeconds"), "trainedTokens": result.get("trainedTokens"),
            "before": ev.get("before"), "after": ev.get("after"), "samples": ev.get("samples"),
            "loss": result["data"]["loss"]}


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def table(rows: list[dict]) -> str:
    lines = ["| variant | steps | training (s) | minutes of training (2 cores) | exact match | valid JSON | eval loss |",
             "|---|---|---|---|---|---|---|"]
    base = next((r["before"] for r in rows if r.get("before")), None)
    if base:
        lines.append(f"| before training | 0 | 0 | 0 | {pct(base.get('exactMatch'))} | {pct(base.get('validJson'))} "
                     f"| {base.get('evalLoss', 0):.3f} |")
    for r in rows:
        a = r["after"] or {}
        train = r["trainSeconds"] or 0
        lines.append(f"| {r['variant']} | {r['steps']} | {train:.0f} | {train / 60:.1f} | "
                     f"{pct(a.get('exactMatch'))} | {pct(a.get('validJson'))} | {a.get('evalLoss', 0):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", nargs="+", type=int, default=[25, 50, 100, 200])
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (the demo's)")
    p.add_argument("--batch", type=int, default=2, help="perDeviceTrainBatchSize (the demo's)")
    p.add_argument("--rank", type=int, default=32, help="LoRA rank (the demo's)")
    p.add_argument("--alpha", type=int, default=64, help="LoRA alpha (the demo's)")
    p.add_argument("--seed", type=int, default=42, help="training.seed: data order and LoRA initialisation")
    p.add_argument("--targets", nargs="+", default=["all-linear"], help="lora.targetModules (the demo's: all-linear)")
    p.add_argument("--packing", action="store_true", help="training.packing: several rows per sequence")
    p.add_argument("--max-length", type=int, default=1024, help="training.maxLength (tokens per packed sequence)")
    p.add_argument("--system", help="a system line added to every row (default: none, the template's own)")
    p.add_argument("--no-baseline", action="store_true", help="skip the evaluation before training")
    p.add_argument("--out", help="write every run's figures as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sftop-quality-") as tmp:
        volumes = Path(tmp) / "volumes"
        prepare(volumes, args.system)
        for variant in args.variants:
            for steps in args.steps:
                row = run_one(volumes, variant, steps, args, baseline=not rows and not args.no_baseline)
                rows.append(row)
                a = row["after"] or {}
                print(f"{variant:10s} {steps:4d} steps  train {row['trainSeconds']:6.0f} s  exact "
                      f"{pct(a.get('exactMatch'))}  JSON {pct(a.get('validJson'))}", flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
