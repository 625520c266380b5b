"""Throughput of one training process against two, on the same run.

    python bench/distributed.py --steps 30                 # on this machine's CPUs (gloo)
    python bench/distributed.py --steps 30 --gpus 2        # on a machine with 2 GPUs (NCCL)

The same LoRA run of the real SmolLM2-135M-Instruct (the Task API rows, maxLength 256, 4 sequences per process
and step, no gradient checkpointing) through `sftop-train`:

    1 process              the whole machine (all CPUs, or one GPU)
    2 processes, 1 node    torchrun --standalone, DDP: each process gets half the CPUs (or one GPU)
    2 nodes x 1 process    two trainer commands meeting through the c10d rendezvous, as the pods of a two-node run
                           (with --gpus: one GPU each)
    2 processes, FSDP      as "1 node", the model sharded over the two processes (FSDP2; with --gpus only:
                           accelerate applies FSDP only on accelerators)

For each: seconds per optimizer step and tokens per second (the trainer's own training time; model loading and
saving left out), and the speedup in tokens/s over one process. Two processes see twice the sequences per step,
so a step takes longer; tokens/s is what compares. Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def config(folder: Path, model: Path, data: Path, steps: int, name: str, strategy: str = "DataParallel",
           nodes: int = 1) -> Path:
    cfg = {"model": {"name": str(model)}, "dataset": {"path": str(data)}, "method": "lora",
           "training": {"maxSteps": steps, "learningRate": 1e-3, "perDeviceTrainBatchSize": 4, "maxLength": 256,
                        "loggingSteps": 5, "saveSteps": 100_000, "gradientCheckpointing": False},
           "distribution": {"nodes": nodes, "strategy": strategy},
           "output": {"dir": str(folder / name)}, "progress": {"port": 0}, "run": {"id": name}}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def measure(folder: Path, name: str) -> dict:
    result = json.loads((folder / name / "result.json").read_text())
    train = result["trainRuntimeSeconds"]
    return {"steps": result["steps"], "secondsPerStep": train / result["steps"],
            "tokensPerSecond": result["trainedTokens"] / train, "processes": result["distribution"]["processes"],
            "strategy": result["distribution"]["strategy"], "loss": result["finalLoss"]}


def run(cmds: list[tuple[list[str], dict[str, str]]], log: Path) -> None:
    with open(log, "wb") as out:
        procs = [subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT) for cmd, env in cmds]
        codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"{log.name}: exit codes {codes}\n{log.read_text()[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--gpus", type=int, default=0, help="GPUs to use (0: CPUs, gloo)")
    args = p.parse_args()
    from sftop_trainer import packaged, taskapi
    from sftop_trainer.threads import available_cpus

    model = packaged.model_folder()
    cpus = available_cpus()
    with tempfile.TemporaryDirectory(prefix="sftop-bench-") as tmp:
        folder = Path(tmp)
        data = folder / "train.jsonl"
        taskapi.write_jsonl(taskapi.rows(800, seed=3), data)
        base = {k: v for k, v in os.environ.items() if k not in ("SFTOP_PROCESSES", "CUDA_VISIBLE_DEVICES")}
        cmd = lambda path: [sys.executable, "-m", "sftop_trainer", "--config", str(path), "--no-progress-bar"]  # noqa
        rows = []

        def device(n: int, first: int = 0) -> dict[str, str]:
            return {"CUDA_VISIBLE_DEVICES": ",".join(str(first + i) for i in range(n))} if args.gpus else \
                {"CUDA_VISIBLE_DEVICES": ""}

        def scenario(label: str, name: str, cmds) -> None:
            started = time.time()
            run(cmds, folder / f"{name}.log")
            rows.append((label, measure(folder, name), time.time() - started))
            print(f"{label}: {rows[-1][1]}", file=sys.stderr, flush=True)

        one = config(folder, model, data, args.steps, "one")
        scenario("1 process", "one", [(cmd(one), {**base, **device(1), "SFTOP_PROCESSES": "1",
                                                  "OMP_NUM_THREADS": str(cpus)})])
        ddp = config(folder, model, data, args.steps, "ddp")
        scenario("2 processes, 1 node (DDP)", "ddp",
                 [(cmd(ddp), {**base, **device(2), "SFTOP_PROCESSES": "2", "OMP_NUM_THREADS": str(max(1, cpus // 2))})])
        nodes = config(folder, model, data, args.steps, "nodes", nodes=2)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        scenario("2 nodes x 1 process (c10d)", "nodes", [
            (cmd(nodes), {**base, **device(1, i), "SFTOP_PROCESSES": "1", "JOB_COMPLETION_INDEX": str(i),
                          "SFTOP_RENDEZVOUS": f"127.0.0.1:{port}", "SFTOP_NODE_ADDRESS": "127.0.0.1",
                          "OMP_NUM_THREADS": str(max(1, cpus // 2))}) for i in range(2)])
        if args.gpus:  # accelerate applies FSDP only on accelerators
            fsdp = config(folder, model, data, args.steps, "fsdp", strategy="FSDP")
            scenario("2 processes, 1 node (FSDP)", "fsdp",
                     [(cmd(fsdp), {**base, **device(2), "SFTOP_PROCESSES": "2"})])
    where = f"{args.gpus} GPU(s), NCCL" if args.gpus else f"{cpus} CPUs, gloo"
    base_tps = rows[0][1]["tokensPerSecond"]
    print(f"SmolLM2-135M-Instruct LoRA, {args.steps} steps, 4 sequences of <= 256 tokens per process and step, "
          f"{where}\n")
    print("| scenario | processes | strategy (as trained) | s / optimizer step | tokens / s | vs 1 process "
          "| final loss | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, m, wall in rows:
        print(f"| {label} | {m['processes']} | {m['strategy']} | {m['secondsPerStep']:.2f} | "
              f"{m['tokensPerSecond']:.0f} | {m['tokensPerSecond'] / base_tps:.2f}x | {m['loss']:.3f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
