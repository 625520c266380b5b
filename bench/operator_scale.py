"""How the operator scales with the number of SFTJobs.

    python bench/operator_scale.py [--counts 100 500 1000]

For each N: an emulated API server (tests/harness, in this process), the operator as its own process
(`sftop operator`, as in a cluster), N SFTJobs applied at once. Reported: seconds until every SFTJob has its Job
and a current status (run id, phase, observedGeneration), the operator's API requests and writes per SFTJob, and
its peak resident memory (VmHWM). Markdown goes to stdout; bench/RESULTS.md records it.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import kmock  # noqa: E402

from harness.apiserver import SFTJOBS, ApiServer  # noqa: E402
from harness.cluster import NS, sftjob  # noqa: E402
from operator_load import proc_stats  # noqa: E402


async def one(n: int) -> dict:
    async with ApiServer() as emu, kmock.Server(emu) as server:
        url = str(server.url).rstrip("/")
        env = {**os.environ, "SFTOP_K8S_SERVER": url, "SFTOP_HEALTH_PORT": "0", "SFTOP_METRICS_PORT": "0", "SFTOP_LOG_LEVEL": "WARNING",
               "SFTOP_RESYNC_INTERVAL": "600"}
        proc = subprocess.Popen([sys.executable, "-m", "sftop.cli", "operator"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not any(r.params.get("watch") == "true" and r.url.path.endswith("/pods") for r in emu.log):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the operator did not start: {proc.stderr.read() if proc.poll() is not None else ''}")
                await asyncio.sleep(0.1)
            before = len(emu.log)
            started = time.monotonic()
            cpu0, own0 = proc_stats(proc.pid)["cpu"], time.process_time()
            sem = asyncio.Semaphore(50)

            async def create(i: int) -> None:
                async with sem:
                    resp = await emu.post(f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs",
                                          json=sftjob(f"job-{i:04d}"))
                    assert resp.status == 201, await resp.text()

            await asyncio.gather(*(create(i) for i in range(n)))
            applied = time.monotonic() - started
            res = kmock.resource(SFTJOBS)

            def current() -> int:
                done = 0
                for (r, _, _), o in list(emu.objects.items()):
                    if r == res and not o.deleted:
                        st = o.get("status") or {}
                        if st.get("run", {}).get("id") and st.get("observedGeneration") == o["metadata"]["generation"]:
                            done += 1
                return done

            jobs = kmock.resource("batch/v1/jobs")
            while current() < n or sum(1 for (r, _, _), o in list(emu.objects.items())
                                       if r == jobs and not o.deleted) < n:
                if time.monotonic() - started > 900:
                    raise SystemExit(f"N={n}: only {current()} SFTJobs current after 900 s")
                await asyncio.sleep(0.2)
            elapsed = time.monotonic() - started
            cpu = {"operator": proc_stats(proc.pid)["cpu"] - cpu0, "emulator": time.process_time() - own0}
            await asyncio.sleep(2)  # let stragglers land before counting
            ops = [r for r in emu.log[before:] if not (r.method.value == "POST" and r.url.path.endswith("/sftjobs"))]
            writes = [r for r in ops if r.method.value in ("POST", "PATCH", "PUT", "DELETE")]
            return {"n": n, "seconds": elapsed, "applied": applied, "requests": len(ops) / n, "cpu": cpu,
                    "writes": len(writes) / n, "rss": proc_stats(proc.pid)["VmHWM"],
                    "by_kind": {k: sum(1 for r in writes if r.method.value == k.split()[0] and k.split()[1] in r.url.path)
                                / n for k in ("POST /jobs", "POST /configmaps", "PATCH /status", "POST /events")}}
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 500, 1000])
    args = parser.parse_args()
    rows = [asyncio.run(one(n)) for n in args.counts]
    for r in rows:
        print(f"N={r['n']}: applied in {r['applied']:.1f} s; CPU seconds: operator {r['cpu']['operator']:.1f}, "
              f"emulator and driver {r['cpu']['emulator']:.1f}", file=sys.stderr)
    print("| SFTJobs | all Jobs + statuses current (s) | per SFTJob (ms) | API requests / SFTJob | writes / SFTJob "
          "| Job creates / SFTJob | status patches / SFTJob | events / SFTJob | operator peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        k = r["by_kind"]
        print(f"| {r['n']} | {r['seconds']:.1f} | {1000 * r['seconds'] / r['n']:.1f} | {r['requests']:.2f} | "
              f"{r['writes']:.2f} | {k['POST /jobs']:.2f} | {k['PATCH /status']:.2f} | {k['POST /events']:.2f} | "
              f"{r['rss']:.0f} |")


if __name__ == "__main__":
    main()
