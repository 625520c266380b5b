"""The operator under a platform's running load: many SFTJobs in progress, most of whose pods never answer.

    python bench/operator_load.py [--silent 1000] [--answering 100] [--new 100] [--window 120]

An emulated API server (tests/harness) in this process holds `--silent + --answering` SFTJobs whose Jobs run a
pod each, as a cluster does when the operator (re)starts: the silent pods' progress endpoint is a loopback server
that accepts connections and never answers (a NetworkPolicy that drops the operator's reads looks the same), the
answering pods' one reports a step that grows by one a second. The operator runs as its own process
(`sftop operator`). After a warm-up, `--new` SFTJobs are applied at once.

Reported: p50/p99 seconds from apply to the new SFTJob's Job and to its first status, status writes per running
SFTJob per minute (over the window), how old the answering pods' progress in status is (seconds behind the pod,
sampled every second over the window), the operator's CPU (share of one core over the window) and resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp.web  # noqa: E402
import kmock  # noqa: E402

from harness.apiserver import SFTJOBS, ApiServer  # noqa: E402
from harness.cluster import NS, running, sftjob  # noqa: E402
from sftop import api, render  # noqa: E402
from sftop.settings import Settings  # noqa: E402

PORT = 18080
SILENT_IP, ANSWERING_IP = "127.0.0.2", "127.0.0.3"


def proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) and resident memory (now and peak, MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    out = {"cpu": (int(fields[11]) + int(fields[12])) / ticks}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def start_operator(url: str, **env: str) -> subprocess.Popen:
    env = {**os.environ, "SFTOP_K8S_SERVER": url, "SFTOP_HEALTH_PORT": "0", "SFTOP_METRICS_PORT": "0",
           "SFTOP_LOG_LEVEL": "WARNING", **env}
    return subprocess.Popen([sys.executable, "-m", "sftop.cli", "operator"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def stop_operator(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def wait_watching(emu: ApiServer, proc: subprocess.Popen, since: int = 0) -> None:
    deadline = time.monotonic() + 60
    while not any(r.params.get("watch") == "true" and r.url.path.endswith("/pods") for r in emu.log[since:]):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the operator did not start: {proc.stderr.read() if proc.poll() is not None else ''}")
        await asyncio.sleep(0.1)


def live(emu: ApiServer, resource: str) -> dict[str, dict[str, Any]]:
    res = kmock.resource(resource)
    return {name: o.raw for (r, _, name), o in list(emu.objects.items()) if r == res and not o.deleted}


async def silent_server() -> asyncio.AbstractServer:
    held: list[Any] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never answers, never closes

    return await asyncio.start_server(accept, SILENT_IP, PORT)


async def answering_server(t0: float) -> aiohttp.web.AppRunner:
    async def progress(_: aiohttp.web.Request) -> aiohttp.web.Response:
        step = int(time.monotonic() - t0)
        return aiohttp.web.json_response({"step": step, "totalSteps": 1_000_000, "percent": step / 10_000,
                                          "loss": 1.0, "tokensPerSecond": 1000.0, "eta": "11d"})

    app = aiohttp.web.Application()
    app.router.add_get("/progress", progress)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, ANSWERING_IP, PORT).start()
    return runner


async def create(emu: ApiServer, name: str) -> tuple[dict[str, Any], api.SFTJobSpec, str]:
    """Apply an SFTJob; returns it as stored, its spec and its run id."""
    resp = await emu.post(f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs", json=sftjob(name))
    assert resp.status == 201, await resp.text()
    stored = await resp.json()
    spec = api.SFTJobSpec.model_validate(stored["spec"])
    return stored, spec, render.run_id(spec)


async def seed(emu: ApiServer, names: list[str], ip_of: dict[str, str]) -> None:
    """Each SFTJob with its run's Job and a running pod, as the cluster holds them when the operator starts."""
    settings = Settings()
    sem = asyncio.Semaphore(50)

    async def one(name: str) -> None:
        async with sem:
            stored, spec, rid = await create(emu, name)
            owner = {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": name,
                     "uid": stored["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
            job = render.job(name, NS, spec, rid, settings)
            job["metadata"]["ownerReferences"] = [owner]
            resp = await emu.post(f"/apis/batch/v1/namespaces/{NS}/jobs", json=job)
            job = await resp.json()
            await emu.patch(f"/apis/batch/v1/namespaces/{NS}/jobs/{job['metadata']['name']}/status",
                            json={"status": {"active": 1, "startTime": "2026-11-22T10:00:00Z"}},
                            headers={"Content-Type": "application/merge-patch+json"})
            template = job["spec"]["template"]
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"{job['metadata']['name']}-x1y2z", "namespace": NS,
                                "labels": {**template["metadata"]["labels"], "job-name": job["metadata"]["name"]},
                                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "controller": True,
                                                     "name": job["metadata"]["name"], "uid": job["metadata"]["uid"]}]},
                   "spec": template["spec"], "status": running(ip_of[name])}
            resp = await emu.post(f"/api/v1/namespaces/{NS}/pods", json=pod)
            assert resp.status == 201, await resp.text()

    await asyncio.gather(*(one(n) for n in names))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    silent = [f"silent-{i:04d}" for i in range(args.silent)]
    answering = [f"answer-{i:04d}" for i in range(args.answering)]
    ip_of = {**{n: SILENT_IP for n in silent}, **{n: ANSWERING_IP for n in answering}}
    t0 = time.monotonic()
    hold = await silent_server()
    runner = await answering_server(t0)
    async with ApiServer() as emu, kmock.Server(emu) as server:
        started = time.monotonic()
        await seed(emu, silent + answering, ip_of)
        print(f"seeded {len(ip_of)} running SFTJobs in {time.monotonic() - started:.0f} s", file=sys.stderr)
        proc = start_operator(str(server.url).rstrip("/"), SFTOP_PROGRESS_PORT=str(PORT))
        try:
            await wait_watching(emu, proc)
            await asyncio.sleep(args.warmup)
            status_path = f"/{NS}/sftjobs/"
            before, cpu0, w0 = len(emu.log), proc_stats(proc.pid)["cpu"], time.monotonic()
            new = [f"new-{i:04d}" for i in range(args.new)]
            applied: dict[str, float] = {}
            job_of: dict[str, str] = {}

            async def apply(name: str) -> None:
                _, _, rid = await create(emu, name)
                applied[name], job_of[name] = time.monotonic(), render.job_name(name, rid)

            await asyncio.gather(*(apply(n) for n in new))
            to_job: dict[str, float] = {}
            to_status: dict[str, float] = {}
            jobs_res, sftjobs_res = kmock.resource("batch/v1/jobs"), kmock.resource(SFTJOBS)

            def exists(key: tuple) -> dict[str, Any] | None:
                # a look at the new objects only: the measurement must not take the emulator's CPU
                return emu.objects[key] if key in emu.objects and not emu.objects[key].deleted else None

            # the answering SFTJobs' progress age, sampled every second over the window: one look at the end
            # would catch the write cycle (4 a minute, reads every 15 s) at one arbitrary phase of it
            ages: list[float] = []
            last_sample = 0.0
            while time.monotonic() - w0 < args.window:
                stamp = time.monotonic()
                if stamp - last_sample >= 1.0:
                    last_sample = stamp
                    for n in answering:
                        obj = exists((sftjobs_res, NS, n))
                        step = (((obj or {}).get("status") or {}).get("progress") or {}).get("step")
                        if step is not None:
                            ages.append(stamp - t0 - step)
                for n in new:
                    if n not in to_job and exists((jobs_res, NS, job_of[n])) is not None:
                        to_job[n] = stamp - applied[n]
                    if n not in to_status and ((exists((sftjobs_res, NS, n)) or {}).get("status") or {}).get("phase"):
                        to_status[n] = stamp - applied[n]
                if len(to_job) == len(new) and len(to_status) == len(new) and stamp - w0 >= args.min_window:
                    break
                await asyncio.sleep(0.05)
            window = time.monotonic() - w0
            stats = proc_stats(proc.pid)
            seeded = set(ip_of)
            writes = [r for r in emu.log[before:] if r.method.value == "PATCH" and r.url.path.endswith("/status")
                      and status_path in r.url.path and r.url.path.split("/")[-2] in seeded]
            per_kind = {kind: sum(1 for r in writes if r.url.path.split("/")[-2].startswith(kind)) for kind in
                        ("silent", "answer")}
            sftjobs = live(emu, SFTJOBS)
            silent_said = [(sftjobs[n].get("status") or {}) for n in silent]
            return {
                "running": len(ip_of), "silent": args.silent, "answering": args.answering, "new": args.new,
                "window": window, "done_job": len(to_job), "done_status": len(to_status),
                "job_p50": pct(list(to_job.values()), 0.5), "job_p99": pct(list(to_job.values()), 0.99),
                "status_p50": pct(list(to_status.values()), 0.5), "status_p99": pct(list(to_status.values()), 0.99),
                "writes_per_min": len(writes) / len(ip_of) / (window / 60),
                "writes_silent": per_kind["silent"] / max(1, args.silent) / (window / 60),
                "writes_answering": per_kind["answer"] / max(1, args.answering) / (window / 60),
                "progress_age_p50": pct(ages, 0.5), "progress_age_max": max(ages) if ages else float("nan"),
                "silent_running": sum(1 for s in silent_said if s.get("phase") == "Running"),
                "silent_message": next((s.get("message") for s in silent_said if s.get("message")), None),
                "cpu": (stats["cpu"] - cpu0) / window, "rss": stats.get("VmRSS"), "peak_rss": stats.get("VmHWM"),
            }
        finally:
            stop_operator(proc)
            hold.close()
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--silent", type=int, default=1000)
    parser.add_argument("--answering", type=int, default=100)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds between the operator's start and the apply")
    parser.add_argument("--window", type=float, default=120.0, help="longest wait for the new SFTJobs (s)")
    parser.add_argument("--min-window", type=float, default=60.0, help="shortest measurement window (s)")
    args = parser.parse_args()
    r = asyncio.run(main_async(args))
    print(json.dumps(r, indent=1), file=sys.stderr)

    def late(p: float, done: int) -> str:
        return f"{p:.2f}" if done == r["new"] else f"> {r['window']:.0f} ({done}/{r['new']} done)"

    print("| running (silent + answering) | new | apply → Job p50 / p99 (s) | apply → first status p50 / p99 (s) "
          "| status writes / running SFTJob / min (silent, answering) | answering progress age p50 / max (s) "
          "| operator CPU (cores) | RSS / peak (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {r['running']} ({r['silent']} + {r['answering']}) | {r['new']} | {late(r['job_p50'], r['done_job'])} / "
          f"{late(r['job_p99'], r['done_job'])} | {late(r['status_p50'], r['done_status'])} / "
          f"{late(r['status_p99'], r['done_status'])} | {r['writes_per_min']:.2f} ({r['writes_silent']:.2f}, "
          f"{r['writes_answering']:.2f}) | {r['progress_age_p50']:.0f} / {r['progress_age_max']:.0f} | "
          f"{r['cpu']:.2f} | {r['rss']:.0f} / {r['peak_rss']:.0f} |")


if __name__ == "__main__":
    main()
