"""The operator's footprint with many SFTJobs, most of them finished.

    python bench/operator_size.py [--finished 9900] [--running 100] [--window 60]
        [--foreign-pods 20000 --foreign-jobs 2000]

An emulated API server (tests/harness) in this process holds `--finished` SFTJobs whose runs Succeeded (their Jobs
gone, as ttlSecondsAfterFinished leaves them) and `--running` ones whose pods train and answer on their progress
endpoint. The operator runs as its own process (`sftop operator`, resync every SFTOP_RESYNC_INTERVAL seconds).
Reported: the operator's resident memory once it has seen everything, the seconds its first pass took, and its
API requests per minute in steady state (the resync's cost), by verb. With `--foreign-pods` / `--foreign-jobs`, other
teams' Pods and Jobs (unlabelled, in 50 other namespaces) are in the cluster too, and the report counts the Pods and
Jobs the API server sent the operator (lists and watches), its own and the foreign ones.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time

import kmock

from operator_load import (ANSWERING_IP, NS, PORT, answering_server, create, proc_stats, seed, start_operator,
                           stop_operator, wait_watching)

from harness.apiserver import ApiServer  # noqa: E402  (operator_load put tests/ on the path)
from sftop import lifecycle, render  # noqa: E402


def kind(path: str) -> str:
    """`sftjobs/status`, `jobs`, `events`...: what a request's path is about."""
    parts = path.strip("/").split("/")
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        parts = parts[parts.index("namespaces") + 2:]
    return parts[0] + ("/" + parts[2] if len(parts) > 2 else "")


async def seed_finished(emu: ApiServer, names: list[str]) -> None:
    sem = asyncio.Semaphore(50)

    async def one(name: str) -> None:
        async with sem:
            _, spec, rid = await create(emu, name)
            out = render.output_path(spec, NS, name, rid)
            status = {"phase": "Succeeded", "message": "the trainer finished and wrote its output",
                      "observedGeneration": 1, "model": render.model_summary(spec),
                      "run": {"id": rid, "jobName": render.job_name(name, rid), "outputPath": out, "attempts": 1,
                              "startTime": "2026-11-22T10:00:00Z", "completionTime": "2026-11-22T10:05:00Z",
                              "podSeconds": {f"{name}-pod": 300.0}, "gpuSeconds": 300.0},
                      "progress": {"step": 10, "totalSteps": 10, "percent": 100, "eta": "0s"},
                      "result": {"adapterPath": f"{out}/adapter", "steps": 10, "trainLoss": 0.5, "gpuSeconds": 300.0},
                      "conditions": lifecycle.phase_conditions([], "Succeeded", "Succeeded", "done", 1,
                                                               "2026-11-22T10:05:00Z")}
            status["conditions"] = lifecycle.standard_conditions(status, 1, "2026-11-22T10:05:00Z", "Succeeded")
            resp = await emu.patch(f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/{name}/status",
                                   json={"status": status}, headers={"Content-Type": "application/merge-patch+json"})
            assert resp.status == 200, await resp.text()

    await asyncio.gather(*(one(n) for n in names))


def seed_foreign(emu: ApiServer, pods: int, jobs: int) -> None:
    """Other teams' workloads, stored directly (the emulator's create path would take minutes for 22,000)."""
    container = {"name": "web", "image": "registry.example.com/team/web:1.4.2",
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                 "env": [{"name": f"SETTING_{k}", "value": "x" * 20} for k in range(10)]}
    for kind_, count, resource in (("pod", pods, "v1/pods"), ("job", jobs, "batch/v1/jobs")):
        for i in range(count):
            ns = f"other-{i % 50:02d}"
            meta = {"name": f"{kind_}-{i:05d}", "namespace": ns, "uid": f"{kind_}-{i}", "resourceVersion": "1",
                    "labels": {"app": "web", "team": ns}}
            if kind_ == "pod":
                body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [container]},
                        "status": {"phase": "Running", "podIP": f"10.1.{i // 250}.{i % 250}"}}
            else:
                body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
                        "spec": {"template": {"spec": {"containers": [container], "restartPolicy": "Never"}}},
                        "status": {"succeeded": 1}}
            emu.objects[kmock.resource(resource), ns, meta["name"]] = body


async def main_async(args: argparse.Namespace) -> dict:
    finished = [f"done-{i:05d}" for i in range(args.finished)]
    running = [f"live-{i:04d}" for i in range(args.running)]
    runner = await answering_server(time.monotonic())
    async with ApiServer() as emu, kmock.Server(emu) as server:
        started = time.monotonic()
        await seed_finished(emu, finished)
        await seed(emu, running, {n: ANSWERING_IP for n in running})
        seed_foreign(emu, args.foreign_pods, args.foreign_jobs)
        print(f"seeded {len(finished)} finished and {len(running)} running SFTJobs in "
              f"{time.monotonic() - started:.0f} s", file=sys.stderr)
        before = len(emu.log)
        proc = start_operator(str(server.url).rstrip("/"), SFTOP_PROGRESS_PORT=str(PORT),
                              SFTOP_RESYNC_INTERVAL=str(args.resync))
        t0 = time.monotonic()
        try:
            cpu0 = proc_stats(proc.pid)["cpu"]
            await wait_watching(emu, proc)
            # the first pass: every running SFTJob has its progress in status
            while True:
                done = sum(1 for n in running if (emu.objects[(kmock.resource("sftop.dev/v1alpha1/sftjobs"), NS, n)]
                                                  .get("status") or {}).get("progress"))
                if done == len(running) or time.monotonic() - t0 > 600:
                    break
                await asyncio.sleep(0.5)
            first_pass = time.monotonic() - t0
            first_cpu = proc_stats(proc.pid)["cpu"] - cpu0  # the operator's own, not the emulator's filtering
            first_requests = len(emu.log) - before
            await asyncio.sleep(args.settle)
            mark, w0 = len(emu.log), time.monotonic()
            await asyncio.sleep(args.window)
            window = time.monotonic() - w0
            requests = emu.log[mark:]
            stats = proc_stats(proc.pid)
            children = {k: n for k, n in emu.sent.items() if k[0] in ("v1/pods", "batch/v1/jobs")}
            by = collections.Counter(f"{r.method.value} {kind(r.url.path)}" for r in requests
                                     if r.params.get("watch") != "true")
            return {"sftjobs": len(finished) + len(running), "finished": len(finished), "running": len(running),
                    "first_pass": first_pass, "first_cpu": first_cpu, "first_requests": first_requests, "rss": stats.get("VmRSS"),
                    "peak_rss": stats.get("VmHWM"), "per_minute": len(requests) / window * 60,
                    "by_verb": {k: v / window * 60 for k, v in by.most_common()}, "resync": args.resync,
                    "foreign": args.foreign_pods + args.foreign_jobs,
                    "sent_own": sum(n for k, n in children.items() if k[1] == NS),
                    "sent_foreign": sum(n for k, n in children.items() if k[1] != NS)}
        finally:
            stop_operator(proc)
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--finished", type=int, default=9900)
    parser.add_argument("--running", type=int, default=100)
    parser.add_argument("--resync", type=float, default=300.0)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=120.0)
    parser.add_argument("--foreign-pods", type=int, default=0)
    parser.add_argument("--foreign-jobs", type=int, default=0)
    args = parser.parse_args()
    r = asyncio.run(main_async(args))
    print(r, file=sys.stderr)
    verbs = ", ".join(f"{k} {v:.0f}" for k, v in r["by_verb"].items())
    print("| SFTJobs (finished + running) | foreign Pods and Jobs | Pods and Jobs sent to the operator (own, foreign) "
          "| first pass (s) | operator CPU in it (s) | operator RSS / peak (MiB) | API requests / min in steady state "
          "(resync every {:.0f} s) |".format(r["resync"]))
    print("|---|---|---|---|---|---|---|")
    print(f"| {r['sftjobs']} ({r['finished']} + {r['running']}) | {r['foreign']} | {r['sent_own']}, "
          f"{r['sent_foreign']} | {r['first_pass']:.0f} | {r['first_cpu']:.1f} | {r['rss']:.0f} / {r['peak_rss']:.0f} | "
          f"{r['per_minute']:.0f} ({verbs}) |")


if __name__ == "__main__":
    main()
