"""Continuation benchmark: does a warm-started run pick up where the earlier one ended?

    python bench/continuation.py                      # 50 steps, then 50 more warm-started, against 100 straight

The quality benchmark's setup (bench/quality.py: SmolLM2-135M-Instruct through `sftop run --local`, 2,000 Task API
rows, 200 held-out requests with unseen titles, LoRA r32/alpha64, batch 2, lr 2e-3). Three SFTJobs:

    first       N steps
    continued   N more steps with `warmStart: {sftJob: first}` (a fresh optimizer and schedule, as in the cluster)
    straight    2N steps in one run

and for each: the first and last logged training loss, the eval loss, exact-match and valid-JSON rates. The
continued run's first loss against the first run's last loss says whether training resumed where it ended.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402


def manifest(name: str, steps: int, lr: float, warm_start: str | None) -> str:
    text = quality.MANIFEST.format(name=name, steps=steps, lr=lr, batch=2, rank=32, alpha=64, seed=42,
                                   prompts=quality.TEST_ROWS, targets='["all-linear"]', max_length=1024,
                                   packing="false", baseline="false", **quality.VARIANTS["lora"])
    if warm_start:
        text = text.replace("  method: lora\n", f"  warmStart: {{sftJob: {warm_start}}}\n  method: lora\n")
    return text


def run(volumes: Path, name: str, steps: int, lr: float, warm_start: str | None = None) -> dict:
    path = volumes.parent / f"{name}.yaml"
    path.write_text(manifest(name, steps, lr, warm_start))
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "sftop.cli", "run", str(path), "--local", "--volumes", str(volumes),
                           "--no-progress-bar"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    folder = next((volumes / "adapters" / "default" / f"quality-{name}").iterdir())
    result = json.loads((folder / "result.json").read_text())
    after = (result.get("evaluation") or {}).get("after") or {}
    return {"name": name, "steps": steps, "warmStart": result.get("warmStart"), "firstLoss": result["firstLoss"],
            "finalLoss": result["finalLoss"], "evalLoss": after.get("evalLoss"), "exactMatch": after.get("exactMatch"),
            "validJson": after.get("validJson"), "trainSeconds": result.get("trainRuntimeSeconds"),
            "wallSeconds": round(time.time() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50, help="steps of the first run, and of the continued one")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sftop-continuation-") as tmp:
        volumes = Path(tmp) / "volumes"
        quality.prepare(volumes, None)
        rows = [run(volumes, "first", args.steps, args.lr),
                run(volumes, "continued", args.steps, args.lr, warm_start="quality-first"),
                run(volumes, "straight", 2 * args.steps, args.lr)]
    lines = ["| run | steps | first loss | last loss | eval loss | exact match | valid JSON | training (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']}{' (warm start)' if r['warmStart'] else ''} | {r['steps']} | {r['firstLoss']:.3f} | "
                     f"{r['finalLoss']:.3f} | {r['evalLoss']:.3f} | {quality.pct(r['exactMatch'])} | "
                     f"{quality.pct(r['validJson'])} | {r['trainSeconds']:.0f} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
