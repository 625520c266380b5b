"""The operator's Prometheus metrics on SFTOP_METRICS_PORT, /metrics, through prometheus_client.

Counters the controller moves as it works (reconciles, status writes, events, progress reads) and the usage the
platform charges back per namespace (GPU-seconds, trained tokens, finished runs). Gauges are read from the watch
cache at scrape time: SFTJobs by namespace and phase, the work queue, and one series per active SFTJob (phase,
percent, loss, tokens/s, ETA). Finished SFTJobs have no per-SFTJob series, so the number of series follows the
number of runs in progress, not the number of SFTJobs ever applied.
"""

from __future__ import annotations

import collections
import re
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sftop import lifecycle

ACTIVE = lifecycle.IN_PROGRESS | {"Suspended"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


def eta_seconds(eta: Any) -> float | None:
    """`1h2m3s` (the trainer's ETA) in seconds."""
    if not isinstance(eta, str) or not eta:
        return None
    parts = _DURATION.findall(eta)
    if not parts:
        return None
    return sum(float(n) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


class _Snapshot(Collector):
    """Gauges read from the controller's cache at scrape time (on the event loop, like every cache read)."""

    def __init__(self, controller: Any):
        self.controller = controller

    def collect(self):
        c = self.controller
        by_phase = GaugeMetricFamily("sftop_sftjobs", "SFTJobs by namespace and phase.", labels=["namespace", "phase"])
        phase = GaugeMetricFamily("sftop_sftjob_phase", "1 for the phase of each active SFTJob (not Succeeded or "
                                                        "Failed).", labels=["namespace", "sftjob", "phase"])
        gauges = {key: GaugeMetricFamily(f"sftop_sftjob_{key}", text, labels=["namespace", "sftjob"]) for key, text in (
            ("progress_percent", "Progress of each running SFTJob, in percent."),
            ("loss", "Latest training loss of each running SFTJob."),
            ("tokens_per_second", "Training throughput of each running SFTJob."),
            ("eta_seconds", "Estimated seconds to the end of each running SFTJob."))}
        counts: collections.Counter = collections.Counter()
        for (namespace, _), current in c.sftjobs.phases():
            counts[(namespace, current or "Pending")] += 1
        for (namespace, name), body in c.sftjobs.active():
            status = body.get("status") or {}
            current = status.get("phase") or "Pending"
            if current not in ACTIVE:
                continue
            phase.add_metric([namespace, name, current], 1)
            progress = status.get("progress") or {} if current == "Running" else {}
            for key, value in (("progress_percent", progress.get("percent")), ("loss", progress.get("loss")),
                               ("tokens_per_second", progress.get("tokensPerSecond")),
                               ("eta_seconds", eta_seconds(progress.get("eta")))):
                if value is not None:
                    gauges[key].add_metric([namespace, name], value)
        for (namespace, current), n in sorted(counts.items()):
            by_phase.add_metric([namespace, current], n)
        yield by_phase
        yield phase
        yield from gauges.values()
        yield GaugeMetricFamily("sftop_workqueue_depth", "SFTJobs waiting to be reconciled.", value=len(c.queue))
        reads = GaugeMetricFamily("sftop_progress_targets", "Running trainers whose progress endpoint is read, by "
                                                            "whether the latest read answered.", labels=["answering"])
        readings = list(c.poller.readings.values())
        reads.add_metric(["true"], sum(1 for r in readings if r.failures == 0))
        reads.add_metric(["false"], sum(1 for r in readings if r.failures > 0))
        yield reads


class Metrics:
    """One registry per controller (tests run several operators in one process)."""

    def __init__(self, controller: Any):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconciles = Counter("sftop_reconciles", "Reconciliations run.", registry=r)
        self.reconcile_errors = Counter("sftop_reconcile_errors", "Reconciliations that failed and were retried.",
                                        registry=r)
        self.writes = Counter("sftop_status_writes", "SFTJob status writes, by what changed: live progress only, or "
                                                     "something else (phase, reason, result).", ["kind"], registry=r)
        self.writes_deferred = Counter("sftop_status_writes_deferred", "Live-progress status writes held back by the "
                                                                       "write budget (written later, coalesced).",
                                       registry=r)
        self.events = Counter("sftop_events", "Kubernetes Events posted about SFTJobs.", registry=r)
        self.progress_reads = Counter("sftop_progress_reads", "Reads of trainer pods' progress endpoints, by "
                                                              "outcome.", ["outcome"], registry=r)
        self.gpu_seconds = Counter("sftop_gpu_seconds", "GPU-seconds of trainer pods (GPUs x running time), by "
                                                        "namespace: for chargeback.", ["namespace"], registry=r)
        self.trained_tokens = Counter("sftop_trained_tokens", "Tokens trained on by finished runs, by namespace.",
                                      ["namespace"], registry=r)
        self.runs_finished = Counter("sftop_runs_finished", "Runs that ended, by namespace and phase.",
                                     ["namespace", "phase"], registry=r)
        r.register(_Snapshot(controller))

    def status_written(self, namespace: str, old: dict[str, Any], new: dict[str, Any], live: bool) -> None:
        """Count a status write, and the usage it records for the first time."""
        self.writes.labels("live" if live else "change").inc()
        before = ((old.get("run") or {}).get("gpuSeconds") or 0.0) if (old.get("run") or {}).get("id") == \
            (new.get("run") or {}).get("id") else 0.0
        after = (new.get("run") or {}).get("gpuSeconds") or 0.0
        if after > before:
            self.gpu_seconds.labels(namespace).inc(after - before)
        if new.get("phase") in lifecycle.TERMINAL and old.get("phase") not in lifecycle.TERMINAL:
            self.runs_finished.labels(namespace, new["phase"]).inc()
            tokens = (new.get("result") or {}).get("trainedTokens")
            if isinstance(tokens, (int, float)) and tokens > 0:
                self.trained_tokens.labels(namespace).inc(tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve(controller: Any, port: int):
    """Start the endpoint on the running loop (scrapes read the cache on the loop); returns the runner to clean up."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=controller.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                                       "X-Content-Type-Options": "nosniff"})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
