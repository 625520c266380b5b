"""Time from `apply` to a mistake in the SFTJob's status: with the Validating phase, and without it (the training
pod finds the mistake itself).

    python bench/validation.py [--rows 2000] [--repeat 2]

One machine's cluster, as in tests/e2e: the emulated API server, the operator, and a node that runs each pod as a
local process (tests/harness). The model is the real SmolLM2-135M-Instruct on a claim; the data is Task API
conversations with one broken line near the end. Two mistakes: that data error (the trainer reads the data before
it loads the model) and a LoRA target module the model lacks (found after the weights load, on the old path).
Each pod gets 1 CPU (its thread variables follow); runs go one at a time. Reported per case: seconds from apply
to status Failed with the trainer's reason, and the seconds a training pod ran (what a GPU would have been held
for). Markdown goes to stdout; bench/RESULTS.md records it.
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import kmock  # noqa: E402

from harness.apiserver import ApiServer  # noqa: E402
from harness.cluster import NS, Operator, apply, status_of  # noqa: E402
from harness.node import Node  # noqa: E402
from sftop.render import COMPONENT_LABEL  # noqa: E402
from sftop_trainer import packaged, taskapi  # noqa: E402


def manifest(validation: bool, data: str, targets: list[str] | None = None) -> dict:
    spec = {"model": {"pvc": {"claimName": "models", "path": "smollm2"}},
            "dataset": {"pvc": {"claimName": "data", "path": data}},
            "training": {"maxSteps": 10, "perDeviceTrainBatchSize": 2},
            "resources": {"gpus": 0, "cpu": 1, "memory": "4Gi"},
            "validation": {"enabled": validation},
            "output": {"pvc": {"claimName": "adapters", "create": {"size": "1Gi"}}}}
    if targets:
        spec["lora"] = {"targetModules": targets}
    return {"apiVersion": "sftop.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "bench", "namespace": NS},
            "spec": spec}


async def one(root: Path, model: Path, rows: int, validation: bool, case: str) -> dict:
    async with ApiServer() as emu, kmock.Server(emu) as server:
        os.environ.update(SFTOP_K8S_SERVER=str(server.url).rstrip("/"), SFTOP_PROGRESS_INTERVAL="1",
                          SFTOP_METRICS_PORT="0", SFTOP_DEFAULT_CPU="1", SFTOP_VALIDATION_CPU="1",
                          SFTOP_RESYNC_INTERVAL="10")
        node = Node(emu, root / f"{case}-{validation}")
        os.symlink(model, node.volume("models") / "smollm2")
        good = taskapi.rows(rows, seed=11)
        lines = [json.dumps(r) for r in good]
        lines[-3] = lines[-3][:25]  # a line cut short, near the end
        (node.volume("data") / "broken.jsonl").write_text("\n".join(lines) + "\n")
        (node.volume("data") / "good.jsonl").write_text("\n".join(map(json.dumps, good)) + "\n")
        for claim in ("models", "data"):
            await emu.post(f"/api/v1/namespaces/{NS}/persistentvolumeclaims", json={
                "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
        job = manifest(validation, "broken.jsonl") if case == "data error" else \
            manifest(validation, "good.jsonl", ["q_proj", "query_key_value"])
        operator = Operator(emu)
        async with node:
            await operator.start()
            try:
                started = time.monotonic()
                await apply(emu, job)
                while status_of(emu, "bench").get("phase") != "Failed":
                    if time.monotonic() - started > 600:
                        raise SystemExit(f"{case}: no failure after 600 s: {status_of(emu, 'bench')}")
                    await asyncio.sleep(0.1)
                elapsed = time.monotonic() - started
                status = status_of(emu, "bench")
                training_pods = [p for p in emu_pods(emu) if p["metadata"]["labels"][COMPONENT_LABEL] == "trainer"]
                pod_seconds = sum(pod_runtime(p) for p in training_pods)
            finally:
                await operator.stop()
    reason = next(c["reason"] for c in status["conditions"] if c["type"] == "Failed")
    return {"seconds": elapsed, "reason": reason, "training_pods": len(training_pods), "pod_seconds": pod_seconds}


def emu_pods(emu) -> list[dict]:
    res = kmock.resource("v1/pods")
    return [o for (r, _, _), o in list(emu.objects.items()) if r == res and not o.deleted]


def pod_runtime(pod: dict) -> float:
    from datetime import datetime

    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        t = (cs.get("state") or {}).get("terminated") or {}
        if t.get("startedAt") and t.get("finishedAt"):
            parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
            return (parse(t["finishedAt"]) - parse(t["startedAt"])).total_seconds()
    return 0.0


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    model = packaged.model_folder()
    print("| mistake | path | apply → Failed (s), median | reason | training pods | training pod seconds |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for case in ("data error", "bad target module"):
            for validation in (True, False):
                runs = []
                for i in range(args.repeat):
                    root = Path(tmp) / f"r{i}"
                    runs.append(await one(root, model, args.rows, validation, case))
                    shutil.rmtree(root, ignore_errors=True)
                seconds = statistics.median(r["seconds"] for r in runs)
                results[(case, validation)] = seconds
                last = runs[-1]
                print(f"| {case} | {'validation' if validation else 'training pod'} | {seconds:.1f} | {last['reason']} "
                      f"| {last['training_pods']} | {last['pod_seconds']:.0f} |", flush=True)
        for case in ("data error", "bad target module"):
            print(f"\n{case}: without validation / with = "
                  f"{results[(case, False)] / results[(case, True)]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
