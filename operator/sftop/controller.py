"""Reconciliation of SFTJobs: the reconcile workers, and one idempotent `reconcile` per SFTJob.

kopf watches SFTJobs, the runs' Jobs and their Pods and hands every event to the watch cache (sftop.cache), which
queues the SFTJob concerned on the work queue (sftop.workqueue). Workers take SFTJobs off the queue (never the same
one twice at a time) and reconcile each in three steps:

    observe   sftop.observe: the SFTJob, its run's Jobs and pods from the cache (the API server only for what the
              cache cannot know yet), the references the spec names, Kueue's view, the latest progress reading
    decide    sftop.decide: a pure function of what was observed -> the writes and the new status
    act       sftop.act: the writes (create children, stop, suspend or label a Job), the status patch within the
              write budget, the events

One concurrency model: everything that touches the cache (the watch handlers, the work queue, the workers, the
progress poller) runs on the operator's one event loop, so the cache is never read while another thread writes
it. The reconcile workers are coroutines; only the Kubernetes client's blocking HTTP calls leave the loop, to a
pool of `workers` threads, and they take and return plain objects, never the cache. Progress reads are not part of
a reconcile at all: `sftop.poller` reads the trainers' endpoints on the same loop, bounded and with backoff, and
queues an SFTJob when its reading says something new.

No finalizer and no kopf bookkeeping are written to SFTJobs: deleting one never waits for the operator, and its
children go with it through their owner references.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from sftop import decide
from sftop.act import Actor
from sftop.cache import WatchCache
from sftop.kube import Kube
from sftop.metrics import Metrics
from sftop.observe import Observer
from sftop.poller import Poller
from sftop.settings import Settings
from sftop.workqueue import Key, WorkQueue

log = logging.getLogger(__name__)
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Controller:
    """The operator's parts on its event loop (watch cache, work queue, progress poller, observer, actor) and the
    workers that reconcile SFTJobs off the queue."""

    def __init__(self, settings: Settings, kube: Kube):
        self.settings = settings
        self.kube = kube
        self.queue = WorkQueue()
        self.cache = WatchCache(self.queue, self.forget)
        # What the watch handlers (sftop.handlers) call, and the metrics and the probe read: the cache's own.
        self.observe_sftjob, self.observe_job, self.observe_pod = \
            self.cache.observe_sftjob, self.cache.observe_job, self.cache.observe_pod
        self.sftjobs, self.jobs = self.cache.sftjobs, self.cache.jobs
        self.failures: dict[Key, int] = {}
        self.executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="sftop-api")
        self.poller = Poller(settings.progress_port, settings.progress_interval, self.queue.add,
                             concurrency=settings.progress_concurrency, timeout=settings.progress_timeout)
        self.metrics = Metrics(self)
        self.poller.on_read = lambda outcome: self.metrics.progress_reads.labels(outcome).inc()
        self.observer = Observer(settings, kube, self.cache, self.poller.readings, self.call)
        self.actor = Actor(settings, kube, self.cache, self.poller, self.metrics, self.call)

    @property
    def errors(self) -> float:
        """Reconciles that failed, from the metrics' counter."""
        return self.metrics.registry.get_sample_value("sftop_reconcile_errors_total") or 0.0

    def forget(self, key: Key) -> None:
        """What the operator remembers of an SFTJob that was deleted: its failures, write budget, progress reads."""
        self.failures.pop(key, None)
        self.actor.forget(key)
        self.poller.forget(key)

    # ----------------------------------------------------------------------------------------- workers

    async def run(self) -> None:
        try:
            await asyncio.gather(self.poller.run(), *(self._worker() for _ in range(self.settings.workers)))
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                delay = await self.reconcile(key)
                self.failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.metrics.reconcile_errors.inc()
                count = self.failures[key] = self.failures.get(key, 0) + 1
                delay = ERROR_BACKOFF[min(count, len(ERROR_BACKOFF)) - 1]
                log.exception("reconciling SFTJob %s/%s failed (attempt %d); retrying in %.0fs", *key, count, delay)
            finally:
                self.queue.done(key)
            if key in self.sftjobs:
                self.queue.add_after(key, min(delay, self.settings.resync_interval) if delay
                                     else self.settings.resync_interval)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A blocking Kubernetes API call, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    # --------------------------------------------------------------------------------------- reconcile

    async def reconcile(self, key: Key) -> float | None:
        """Make the cluster match one SFTJob and its status match the cluster. Returns when to look again."""
        self.metrics.reconciles.inc()
        body = self.sftjobs.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        seen = await self.observer.observe(key, body)
        decision = decide.decide(seen)
        return await self.actor.act(key, seen, decision)
