"""The operator's Prometheus metrics (text format 0.0.4) on SFTOP_METRICS_PORT, /metrics."""

from __future__ import annotations

import collections
from typing import Any


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(controller: Any) -> str:
    """SFTJobs by phase, reconciles, errors, queue depth, and each running SFTJob's progress."""
    lines = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    phases: collections.Counter = collections.Counter()
    percent, loss = [], []
    for (namespace, name), body in list(controller.sftjobs.items()):
        status = body.get("status") or {}
        phases[(namespace, status.get("phase") or "Unknown")] += 1
        progress = status.get("progress") or {}
        labels = {"namespace": namespace, "sftjob": name}
        if status.get("phase") == "Running" and progress.get("percent") is not None:
            percent.append((labels, progress["percent"]))
        if status.get("phase") == "Running" and progress.get("loss") is not None:
            loss.append((labels, progress["loss"]))
    metric("sftop_sftjobs", "gauge", "SFTJobs by namespace and phase.",
           [({"namespace": ns, "phase": phase}, n) for (ns, phase), n in sorted(phases.items())])
    metric("sftop_reconciles_total", "counter", "Reconciliations run.", [({}, controller.reconciles)])
    metric("sftop_reconcile_errors_total", "counter", "Reconciliations that failed and were retried.",
           [({}, controller.errors)])
    metric("sftop_workqueue_depth", "gauge", "SFTJobs waiting to be reconciled.", [({}, len(controller.queue))])
    metric("sftop_sftjob_progress_percent", "gauge", "Progress of running SFTJobs.", percent)
    metric("sftop_sftjob_loss", "gauge", "Latest training loss of running SFTJobs.", loss)
    return "\n".join(lines) + "\n"


async def serve(controller: Any, port: int):
    """Start the endpoint on the running loop; returns the runner to clean up."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=render(controller), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
