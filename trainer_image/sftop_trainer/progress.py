"""Live progress, readable without Kubernetes credentials.

The trainer serves its latest progress on a small HTTP endpoint in the pod (the operator polls it):
    GET /progress   JSON: phase, step, totalSteps, percent, epoch, loss, learningRate, tokensPerSecond, eta, ...
    GET /metrics    the same as Prometheus metrics (prometheus_client)
    GET /healthz    200 while the process runs
and logs the same JSON as one line per logging step on stdout (`{"event": "progress", ...}`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Thread-safe snapshot of the run's progress; the training loop writes it, the endpoint reads it."""

    def __init__(self, run_id: str | None = None):
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {"phase": "Starting", "step": 0, "totalSteps": None, "runId": run_id}
        self._step_times: list[tuple[float, int, int]] = []  # (monotonic time, step, tokens) this session
        self.started = time.time()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._data.update({k: v for k, v in fields.items() if v is not None or k == "eta"})

    def step(self, step: int, total: int | None, epoch: float | None, tokens: int | None) -> None:
        now = time.monotonic()
        with self._lock:
            self._step_times.append((now, step, tokens or 0))
            window = self._step_times[-50:]
            self._step_times = window
            data = self._data
            data.update(step=step, totalSteps=total, epoch=round(epoch, 4) if epoch is not None else None,
                        tokensSeen=tokens, phase="Training")
            if total:
                data["percent"] = min(100, int(100 * step / total))
            if len(window) >= 2 and window[-1][1] > window[0][1]:
                (t0, s0, k0), (t1, s1, k1) = window[0], window[-1]
                per_step = (t1 - t0) / (s1 - s0)
                data["secondsPerStep"] = round(per_step, 4)
                if k1 > k0 and t1 > t0:
                    data["tokensPerSecond"] = round((k1 - k0) / (t1 - t0), 1)
                if total:
                    data["etaSeconds"] = round(per_step * max(0, total - step), 1)
                    data["eta"] = format_duration(data["etaSeconds"])

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {k: v for k, v in self._data.items() if v is not None}


METRICS = [
    ("step", "sftop_trainer_step", "Optimizer steps done."),
    ("totalSteps", "sftop_trainer_total_steps", "Optimizer steps in the run."),
    ("epoch", "sftop_trainer_epoch", "Epochs done, fractional."),
    ("loss", "sftop_trainer_loss", "Latest logged training loss."),
    ("evalLoss", "sftop_trainer_eval_loss", "Latest evaluation loss."),
    ("learningRate", "sftop_trainer_learning_rate", "Latest learning rate."),
    ("tokensPerSecond", "sftop_trainer_tokens_per_second", "Training throughput."),
    ("tokensSeen", "sftop_trainer_tokens_seen", "Tokens trained on so far."),  # a counter: exposed as ..._total
    ("etaSeconds", "sftop_trainer_eta_seconds", "Estimated seconds to the end."),
]
COUNTERS = {"tokensSeen"}


class _Collector:
    """The latest progress as Prometheus metrics, read at scrape time."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshot = self.progress.snapshot()
        run = str(snapshot.get("runId") or "")
        for key, name, help_text in METRICS:
            value = snapshot.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                family = (CounterMetricFamily if key in COUNTERS else GaugeMetricFamily)(name, help_text,
                                                                                         labels=["run"])
                family.add_metric([run], value)
                yield family


def registry(progress: Progress):
    """A prometheus_client registry with the run's progress metrics."""
    from prometheus_client import CollectorRegistry

    out = CollectorRegistry(auto_describe=False)
    out.register(_Collector(progress))  # type: ignore[arg-type]
    return out


class _Handler(BaseHTTPRequestHandler):
    progress: Progress
    metrics: Any

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?")[0] == "/progress":
            self._send(200, "application/json", json.dumps(self.progress.snapshot()))
        elif self.path.split("?")[0] == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.metrics).decode())
        elif self.path.split("?")[0] == "/healthz":
            self._send(200, "text/plain", "ok\n")
        else:
            self._send(404, "text/plain", "not found\n")

    def _send(self, code: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # polled every few seconds: keep the log clean
        pass


def serve(progress: Progress, host: str, port: int) -> ThreadingHTTPServer | None:
    """Start the endpoint in a daemon thread. A port that cannot be bound is logged, never fatal: progress is
    a convenience, training is the job."""
    if port == 0:
        return None
    handler = type("ProgressHandler", (_Handler,), {"progress": progress, "metrics": registry(progress)})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        log.warning("progress endpoint not started on %s:%d: %s", host, port, e)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="progress-endpoint", daemon=True).start()
    return server


JSON_LINES = True  # off under a progress bar: a terminal gets the bar, a pod's log the JSON lines


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout: the pod's log is the progress record of last resort."""
    if not JSON_LINES or os.environ.get("RANK", "0") != "0":  # one record per run, from its first process
        return
    print(json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=str), flush=True)
