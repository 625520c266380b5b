"""Weights before GPUs: how long a training process holds its (GPU) pod before the first step, with and without the
shared model cache, for two runs of the same base model.

    python bench/model_cache.py [--rate-mb 100]

The Hub is tests/harness/hub.py serving the real SmolLM2-135M-Instruct (sftop_trainer.packaged) on a loopback port
to huggingface_hub's own client, throttled to `--rate-mb` MB/s (a fast link to the Hub; the loopback alone would
make a download look free). Each run is `sftop-train` as its pods run it, on this machine's CPUs, 1 step:
- without the cache: the training process downloads the model into its own cache volume (a fresh one per pod,
  as an emptyDir is), then trains;
- with the cache (the SFTPolicy's cacheClaim): `sftop-train --validate` (the CPU-only Validating phase) fills the
  shared cache, then the training process reads it offline.
Reported per run: bytes the training process downloaded, seconds from its start to its first step (what a GPU is
held for before it computes), and the validation's download seconds (on a CPU). Markdown goes to stdout.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness.hub import Hub  # noqa: E402
from sftop_trainer import packaged, taskapi  # noqa: E402


async def trainer(config: Path, env: dict[str, str], *args: str) -> tuple[float | None, float, dict]:
    """(seconds to the first step, seconds in all, termination message)."""
    term = config.with_suffix(".term")
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sftop_trainer", "--config", str(config), "--no-progress-bar", *args,
        env={**env, "SFTOP_TERMINATION_LOG": str(term)}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    first = None
    assert proc.stdout is not None
    async for line in proc.stdout:
        if first is None and b'"step": 1' in line and b'"event": "progress"' in line:
            first = time.monotonic() - started
    await proc.wait()
    message = json.loads(term.read_text()) if term.exists() else {}
    assert proc.returncode == 0, message
    return first, time.monotonic() - started, message


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate-mb", type=float, default=100.0, help="the Hub link's speed, MB/s")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sftop-bench-cache-"))
    data = tmp / "train.jsonl"
    taskapi.write_jsonl(taskapi.rows(64), data)
    async with Hub(rate=args.rate_mb * 1e6) as hub:
        hub.add("HuggingFaceTB/SmolLM2-135M-Instruct", packaged.model_folder())
        size = sum(len(d) for d in hub.repos["HuggingFaceTB/SmolLM2-135M-Instruct"].files.values())
        base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
        base.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", OMP_NUM_THREADS="2")
        rows = []
        for cached in (False, True):
            shared = tmp / "shared-cache"
            for n in (1, 2):
                run = tmp / f"{'cached' if cached else 'plain'}-{n}"
                run.mkdir()
                config = run / "config.json"
                config.write_text(json.dumps({
                    "model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "cache": cached},
                    "dataset": {"path": str(data)}, "method": "lora",
                    "training": {"maxSteps": 1, "perDeviceTrainBatchSize": 2, "loggingSteps": 1},
                    "output": {"dir": str(run / "out")}, "progress": {"port": 0}}))
                validation = None
                if cached:
                    env = {**base, "HF_HUB_CACHE": str(shared)}
                    _, _, message = await trainer(config, env, "--validate")
                    validation = message["plan"]["cache"]
                    env["HF_HUB_OFFLINE"] = "1"
                else:
                    env = {**base, "HF_HUB_CACHE": str(run / "pod-cache")}  # the pod's own emptyDir
                before = hub.served["HuggingFaceTB/SmolLM2-135M-Instruct"]
                first, total, _ = await trainer(config, env)
                fetched = hub.served["HuggingFaceTB/SmolLM2-135M-Instruct"] - before
                rows.append((cached, n, fetched, first, validation))
    print(f"SmolLM2-135M-Instruct, {size / 1e6:.0f} MB of files, a Hub link of {args.rate_mb:g} MB/s; 1 training "
          f"step on this machine's CPUs.\n")
    print("| run | bytes the training process downloaded | seconds to its first step (GPU held) | "
          "validation on a CPU: downloaded, seconds |")
    print("|---|---|---|---|")
    for cached, n, fetched, first, validation in rows:
        where = "shared cache" if cached else "no cache"
        val = "—" if validation is None else \
            f"{validation['downloadedBytes'] / 1e6:.0f} MB, {validation['downloadSeconds']:.1f} s"
        print(f"| {where}, run {n} | {fetched / 1e6:.0f} MB | {first:.1f} | {val} |")


if __name__ == "__main__":
    asyncio.run(main())
