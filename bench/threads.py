"""CPU threads: two trainers side by side, with and without the trainer's thread sizing.

    sudo python bench/threads.py --steps 40      # cgroups need root; without them the pod scenarios are skipped

The same small LoRA run (a 4-layer, 128-wide Llama built locally, 800 Task API rows, batch 8) through
`sftop-train`, timed as seconds per optimizer step (the trainer's own training time / steps):

    alone                 one trainer with the whole machine
    2 pods, unsized       two trainers, each in a cgroup with a 1-CPU quota (what a pod with `cpu: 1` gets), with
                          torch's default of one thread per core it sees (forced with OMP_NUM_THREADS=<cores>)
    2 pods, sized         the same, the trainer sizing its threads from the quota
    2 processes, unsized  two trainers without limits, one thread per core each
    2 processes, 1 thread two trainers without limits with OMP_NUM_THREADS=1, what the operator renders for pods
                          that ask for 1 CPU

Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CGROUP_V1 = Path("/sys/fs/cgroup/cpu")


def make_config(folder: Path, model: Path, data: Path, steps: int, name: str) -> Path:
    cfg = {"model": {"name": str(model)}, "dataset": {"path": str(data)}, "method": "lora",
           "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
           "training": {"maxSteps": steps, "learningRate": 1e-3, "perDeviceTrainBatchSize": 8, "loggingSteps": 10,
                        "saveSteps": 10_000, "gradientCheckpointing": False},
           "output": {"dir": str(folder / name)}, "progress": {"port": 0}}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def cgroup(name: str, cpus: float) -> Path | None:
    """A cgroup v1 `cpu` group with a quota of `cpus`, or None where this machine does not allow one."""
    folder = CGROUP_V1 / f"sftop-bench-{name}"
    try:
        folder.mkdir(exist_ok=True)
        (folder / "cpu.cfs_period_us").write_text("100000")
        (folder / "cpu.cfs_quota_us").write_text(str(int(cpus * 100000)))
    except OSError:
        return None
    return folder


def start(config: Path, env: dict[str, str], group: Path | None) -> subprocess.Popen:
    def enter():  # in the child, before exec: join the cgroup, so the trainer reads its quota
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.Popen([sys.executable, "-m", "sftop_trainer", "--config", str(config), "--no-progress-bar"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=enter)


def seconds_per_step(config: Path) -> float:
    out = Path(json.loads(config.read_text())["output"]["dir"])
    result = json.loads((out / "result.json").read_text())
    return result["trainRuntimeSeconds"] / result["steps"]


def scenario(folder: Path, model: Path, data: Path, steps: int, label: str, count: int, threads: str | None,
             quota: float | None) -> dict | None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["HF_HUB_OFFLINE"] = "1"
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    procs, configs = [], []
    for i in range(count):
        group = None
        if quota is not None:
            group = cgroup(f"{label.replace(' ', '-').replace(',', '')}-{i}", quota)
            if group is None:
                print(f"{label}: skipped (no writable cgroup v1 cpu controller at {CGROUP_V1})", file=sys.stderr)
                return None
        config = make_config(folder, model, data, steps, f"{label.replace(' ', '-').replace(',', '')}-{i}")
        configs.append(config)
        procs.append(start(config, env, group))
    started = time.time()
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"{label}: a trainer failed with {codes}")
    per_step = sum(seconds_per_step(c) for c in configs) / len(configs)
    return {"scenario": label, "processes": count, "secondsPerStep": round(per_step, 4),
            "wallSeconds": round(time.time() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)
    from sftop_trainer import taskapi
    from sftop_trainer.threads import available_cpus
    from sftop_trainer.tiny import build_tiny_model, corpus

    cores = available_cpus()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sftop-threads-") as tmp:
        folder = Path(tmp)
        train = taskapi.rows(800)
        data = taskapi.write_jsonl(train, folder / "data.jsonl")
        model = build_tiny_model(folder / "model", corpus(train), hidden=128, layers=4)
        plan = [("alone", 1, None, None),
                ("2 pods, unsized", 2, str(cores), cores / 2),
                ("2 pods, sized", 2, None, cores / 2),
                ("2 processes, unsized", 2, str(cores), None),
                ("2 processes, 1 thread", 2, "1", None)]
        for label, count, threads, quota in plan:
            row = scenario(folder, model, data, args.steps, label, count, threads, quota)
            if row is not None:
                rows.append(row)
                print(f"{label:24s} {row['secondsPerStep']:.4f} s/step", flush=True)
    alone = rows[0]["secondsPerStep"]
    print(f"\n{cores} CPUs; {args.steps} steps per trainer\n")
    print("| scenario | trainers | s/step (mean of the trainers) | slowdown vs alone |")
    print("|---|---|---|---|")
    for r in rows:
        slowdown = r["secondsPerStep"] / alone
        print(f"| {r['scenario']} | {r['processes']} | {r['secondsPerStep']:.4f} | {slowdown:.1f}× |")
    for path in CGROUP_V1.glob("sftop-bench-*"):
        try:
            path.rmdir()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
