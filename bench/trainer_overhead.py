"""What sftop-train costs over a bare TRL script: the same tiny LoRA run, through each, alternately.

    python bench/trainer_overhead.py [--repeats 5] [--steps 60]

Both run as child processes of this one, one after the other, with identical settings (model, data, LoRA,
SFTConfig). Reported per repetition and as medians: time per step (training runtime / steps) and time to the
first step (process start to the end of step 1: imports, data, model, tokenization). Results go to stdout as a
Markdown table; bench/RESULTS.md records them.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_sftop(model, data, out, steps):
    config = Path(out) / "config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({
        "model": {"name": model}, "dataset": {"path": data, "format": "messages"}, "method": "lora",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "training": {"maxSteps": steps, "learningRate": 2e-3, "perDeviceTrainBatchSize": 8, "loggingSteps": 10,
                     "saveSteps": 1000, "assistantOnlyLoss": True},
        "output": {"dir": out}, "progress": {"port": 0}}))
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "sftop_trainer", "--config", str(config), "--no-progress-bar"],
                          capture_output=True, text=True, env={**os.environ, "SFTOP_TERMINATION_LOG": os.devnull})
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    first = next(e["time"] for e in events if e["event"] == "progress" and e["step"] == 1)
    result = json.loads((Path(out) / "result.json").read_text())
    return first - start, result["trainRuntimeSeconds"] / result["steps"]


def run_bare(model, data, out, steps):
    start = time.time()
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "bare_trl.py"), model, data, out, str(steps)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    line = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    return line["firstStepAt"] - start, line["trainRuntime"] / line["steps"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    from sftop_trainer import taskapi
    from sftop_trainer.tiny import build_tiny_model, corpus

    with tempfile.TemporaryDirectory() as tmp:
        rows = taskapi.rows(800)
        data = str(taskapi.write_jsonl(rows, Path(tmp) / "data.jsonl"))
        model = str(build_tiny_model(Path(tmp) / "model", corpus(rows), hidden=128, layers=4))
        rows_out = []
        for i in range(args.repeats):
            # alternate the order so drift on a shared machine hits both alike
            order = [("sftop", run_sftop), ("bare", run_bare)] if i % 2 == 0 else [("bare", run_bare),
                                                                                    ("sftop", run_sftop)]
            measured = {}
            for name, fn in order:
                measured[name] = fn(model, data, f"{tmp}/{name}-{i}", args.steps)
            rows_out.append(measured)
            print(f"rep {i}: sftop first step {measured['sftop'][0]:.2f}s, {measured['sftop'][1] * 1000:.1f} ms/step; "
                  f"bare first step {measured['bare'][0]:.2f}s, {measured['bare'][1] * 1000:.1f} ms/step",
                  file=sys.stderr)
    step_ratio = statistics.median(r["sftop"][1] / r["bare"][1] for r in rows_out)
    first_ratio = statistics.median(r["sftop"][0] / r["bare"][0] for r in rows_out)
    print("| repetition | sftop s/step | bare s/step | ratio | sftop first step (s) | bare first step (s) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows_out):
        print(f"| {i} | {r['sftop'][1]:.4f} | {r['bare'][1]:.4f} | {r['sftop'][1] / r['bare'][1]:.3f} | "
              f"{r['sftop'][0]:.2f} | {r['bare'][0]:.2f} | {r['sftop'][0] / r['bare'][0]:.3f} |")
    print(f"\nmedian ratio, time per step: {step_ratio:.3f} (goal <= 1.03); "
          f"median ratio, time to first step: {first_ratio:.3f}")


if __name__ == "__main__":
    main()
