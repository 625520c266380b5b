"""Reconciliation of SFTJobs: a watch cache, a work queue, and one idempotent `reconcile` per SFTJob.

kopf watches SFTJobs, the runs' Jobs and their Pods and hands every event to `Controller.observe_*`, which
updates the cache and queues the SFTJob concerned. Workers take SFTJobs off the queue (never the same one twice at
a time) and reconcile each in three steps:

    observe   the SFTJob, its run's Jobs and pods from the cache (the API server only for what the cache cannot
              know yet), the references the spec names, Kueue's view, the latest progress reading
    decide    `sftop.decide.decide`: a pure function of what was observed -> the writes and the new status
    act       the writes (create children, stop, suspend or label a Job), the status patch within the write
              budget, the events

One concurrency model: everything that touches the cache (the watch handlers, the work queue, the workers, the
progress poller) runs on the operator's one event loop, so the cache is never read while another thread writes
it. The reconcile workers are coroutines; only the Kubernetes client's blocking HTTP calls leave the loop, to a
pool of `workers` threads, and they take and return plain objects, never the cache. Progress reads are not part of
a reconcile at all: `sftop.poller` reads the trainers' endpoints on the same loop, bounded and with backoff, and
queues an SFTJob when its reading says something new.

The write budget: a status is written only when something a user reads changed (a moved timestamp is not enough);
live progress (step, loss, checkpoints) at most `status_writes_per_minute` times a minute per SFTJob, always with
the latest reading; a phase, a reason or a result at once; the running attempt's GPU-seconds with the next write. An event is posted once
per transition: with the status write that records it, and never twice in a row for one SFTJob.

No finalizer and no kopf bookkeeping are written to SFTJobs: deleting one never waits for the operator, and its
children go with it through their owner references.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import functools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from sftop import api, decide, kueue, lifecycle, render
from sftop.decide import Action, Decision, Observed, QueueView
from sftop.kube import Kube, KueueAbsent, now
from sftop.poller import Poller
from sftop.settings import Settings

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name) of an SFTJob
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
CLAIM_MEMORY = 300.0  # seconds an output claim the operator ensured is taken to still exist


class WorkQueue:
    """A set of keys to process, like client-go's: a key waits at most once, is processed by one worker at a
    time, and a key added while it is processed is processed again afterwards; urgent keys are served first.
    Call from the event loop."""

    def __init__(self):
        self._ready: collections.deque[Key] = collections.deque()
        self._urgent: collections.deque[Key] = collections.deque()  # served first: new or changed specs
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._wakeup = asyncio.Event()

    def add(self, key: Key, urgent: bool = False) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            (self._urgent if urgent else self._ready).append(key)
            self._wakeup.set()
        elif urgent and key not in self._urgent:
            self._ready.remove(key)
            self._urgent.append(key)

    def add_after(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= due:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(due, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def get(self) -> Key:
        while not self._ready and not self._urgent:
            self._wakeup.clear()
            await self._wakeup.wait()
        key = (self._urgent or self._ready).popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._ready) + len(self._urgent)



def older(obj: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether `obj` is an older version of `than` by resourceVersion. Kubernetes calls resourceVersions opaque, but
    they are etcd revisions, which only grow; anything but two integers is never taken to be older."""
    a, b = obj["metadata"].get("resourceVersion"), than["metadata"].get("resourceVersion")
    if (obj["metadata"].get("uid") or "") != (than["metadata"].get("uid") or ""):
        return False
    return isinstance(a, str) and isinstance(b, str) and a.isdigit() and b.isdigit() and int(a) < int(b)


def same_version(obj: dict[str, Any], than: dict[str, Any]) -> bool:
    rv = obj["metadata"].get("resourceVersion")
    return bool(rv) and rv == than["metadata"].get("resourceVersion") and \
        obj["metadata"].get("uid") == than["metadata"].get("uid")


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a Job or Pod: metadata, status, a Job's suspend and completions, a pod's node. A Job's
    pod template or a pod's spec is most of its size and nothing the operator reads again."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    out = {"metadata": meta, "status": obj.get("status") or {}}
    spec = obj.get("spec") or {}
    kept = {k: spec[k] for k in ("suspend", "completions", "nodeName") if k in spec}
    if kept:
        out["spec"] = kept
    return out


class SFTJobCache:
    """The watched SFTJobs by (namespace, name). One whose run has finished (Succeeded or Failed) is kept as its JSON
    text, a tenth of its size as Python objects: a platform's cluster holds thousands of those, read again only
    at a resync or a change. The others are kept as objects. `get` returns
    an object either way; change the cache by setting the whole object again."""

    def __init__(self):
        self._live: dict[Key, dict[str, Any]] = {}
        self._done: dict[Key, bytes] = {}
        self._phase: dict[Key, str | None] = {}

    def __setitem__(self, key: Key, obj: dict[str, Any]) -> None:
        phase = (obj.get("status") or {}).get("phase")
        self._phase[key] = phase
        if phase in lifecycle.TERMINAL:
            self._done[key] = json.dumps(obj, separators=(",", ":")).encode()
            self._live.pop(key, None)
        else:
            self._live[key] = obj
            self._done.pop(key, None)

    def get(self, key: Key, default: Any = None) -> Any:
        if key in self._live:
            return self._live[key]
        text = self._done.get(key)
        return json.loads(text) if text is not None else default

    def __getitem__(self, key: Key) -> dict[str, Any]:
        obj = self.get(key)
        if obj is None:
            raise KeyError(key)
        return obj

    def pop(self, key: Key, default: Any = None) -> Any:
        obj = self.get(key, default)
        for store in (self._live, self._done, self._phase):
            store.pop(key, None)
        return obj

    def __contains__(self, key: object) -> bool:
        return key in self._phase

    def __len__(self) -> int:
        return len(self._phase)

    def phases(self) -> list[tuple[Key, str | None]]:
        """Every SFTJob's phase, without reading the finished ones back."""
        return list(self._phase.items())

    def active(self) -> list[tuple[Key, dict[str, Any]]]:
        """The SFTJobs whose run has not finished."""
        return list(self._live.items())


class Controller:
    def __init__(self, settings: Settings, kube: Kube):
        from sftop.metrics import Metrics

        self.settings = settings
        self.kube = kube
        self.queue = WorkQueue()
        self.sftjobs = SFTJobCache()
        self.jobs: dict[Key, dict[str, Any]] = {}
        self.pods: dict[Key, dict[str, Any]] = {}
        self.failures: dict[Key, int] = {}
        self.last_write: dict[Key, float] = {}  # when each SFTJob's status was last written (monotonic)
        self.last_event: dict[Key, tuple[str, str]] = {}  # the last (reason, message) posted about each SFTJob
        self.claims: dict[Key, float] = {}  # output claims ensured, and when
        self.posting: set[asyncio.Task] = set()  # events being posted
        self.continuing: dict[Key, set[Key]] = collections.defaultdict(set)  # SFTJob -> those warm-starting from it
        self.pods_of_run: dict[tuple, set[Key]] = collections.defaultdict(set)  # (namespace, sftjob, run) -> pods
        self.executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="sftop-api")
        self.poller = Poller(settings.progress_port, settings.progress_interval, self.queue.add,
                             concurrency=settings.progress_concurrency, timeout=settings.progress_timeout)
        self.metrics = Metrics(self)
        self.poller.on_read = lambda outcome: self.metrics.progress_reads.labels(outcome).inc()

    @property
    def errors(self) -> float:
        """Reconciles that failed, from the metrics' counter."""
        return self.metrics.registry.get_sample_value("sftop_reconcile_errors_total") or 0.0

    # ------------------------------------------------------------------------------------ watch events

    def observe_sftjob(self, event_type: str | None, obj: dict[str, Any], requeue: bool = True) -> None:
        key = (obj["metadata"].get("namespace"), obj["metadata"]["name"])
        cached = self.sftjobs.get(key)
        if event_type != "DELETED" and cached is not None and older(obj, cached):
            return  # an event from before a write of ours already in the cache (watches lag behind writes)
        if requeue and cached is not None and same_version(obj, cached):
            return  # the watch event of our own status write: nothing new to act on
        source = ((((cached or obj).get("spec") or {}).get("warmStart") or {}).get("sftJob"))
        if source:
            self.continuing[(key[0], source)].discard(key)
        if event_type == "DELETED":
            self.sftjobs.pop(key, None)
            self.queue.forget(key)
            for memory in (self.failures, self.last_write, self.last_event):
                memory.pop(key, None)
            self.poller.forget(key)
            return
        obj["metadata"].pop("managedFields", None)
        (obj["metadata"].get("annotations") or {}).pop(LAST_APPLIED, None)  # a copy of the spec, as a string
        self.sftjobs[key] = obj
        source = ((obj.get("spec") or {}).get("warmStart") or {}).get("sftJob")
        if source and source != key[1]:
            self.continuing[(key[0], source)].add(key)
        if not requeue:
            return
        # A spec the operator has not acted on yet (a new SFTJob, a changed one) goes before routine looks.
        self.queue.add(key, urgent=(obj.get("status") or {}).get("observedGeneration") != obj["metadata"].get(
            "generation"))
        # An SFTJob that waits to continue this one's adapter looks again as soon as this one changes.
        for other in self.continuing.get(key, ()):
            if ((self.sftjobs.get(other) or {}).get("status") or {}).get("phase") in (None, "Pending"):
                self.queue.add(other)

    def _observe_child(self, cache: dict[Key, dict[str, Any]], event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace"), meta["name"])
        if event_type == "DELETED":
            cache.pop(key, None)
        else:
            cache[key] = slim(obj)
        parent = (meta.get("labels") or {}).get(render.SFTJOB_LABEL)
        if parent:
            self.queue.add((meta.get("namespace"), parent))

    def observe_job(self, event_type: str | None, obj: dict[str, Any]) -> None:
        self._observe_child(self.jobs, event_type, obj)

    def observe_pod(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        run = (meta.get("namespace"), labels.get(render.SFTJOB_LABEL), labels.get(render.RUN_LABEL))
        if event_type == "DELETED":
            self.pods_of_run[run].discard((meta.get("namespace"), meta["name"]))
            if not self.pods_of_run[run]:
                del self.pods_of_run[run]
        else:
            self.pods_of_run[run].add((meta.get("namespace"), meta["name"]))
        self._observe_child(self.pods, event_type, obj)

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
        seen = await self.observe(key, body)
        decision = decide.decide(seen)
        return await self.act(key, seen, decision)

    async def observe(self, key: Key, body: dict[str, Any]) -> Observed:
        namespace, name = key
        meta = body["metadata"]
        spec, problems = None, []
        try:
            spec = api.SFTJobSpec.model_validate(body.get("spec") or {})
        except ValidationError as e:
            problems = api.error_lines(e, "spec.")
        seen = Observed(namespace=namespace, name=name, generation=meta.get("generation"),
                        body=body, spec=spec, problems=problems, status=copy.deepcopy(body.get("status") or {}),
                        now=now(), settings=self.settings, progress=self.poller.readings.get(key))
        if spec is None:
            return seen
        rid = render.run_id(spec)
        recorded = (seen.status.get("run") or {}).get("id") == rid
        if recorded and seen.status.get("phase") in lifecycle.TERMINAL:
            return seen
        jname = render.job_name(name, rid)
        seen.job = self.jobs.get((namespace, jname))
        if seen.job is None and recorded:
            # The status names this run but its Job is not cached: a restart (watches fill in any order). Ask
            # before creating anything. (An unrecorded run's create answers 409 if its Job exists.)
            seen.job = await self._read_job(namespace, jname)
        if seen.job is None:
            seen.missing = await self._missing_reference(namespace, spec)
            if spec.warm_start is not None and spec.warm_start.sft_job:
                seen.warm_source = self.sftjobs.get((namespace, spec.warm_start.sft_job))
            validated = recorded and (seen.status.get("run") or {}).get("validated")
            if spec.validation.enabled and not validated and seen.missing is None:
                vname = render.validation_job_name(name, rid)
                seen.validation_job = self.jobs.get((namespace, vname)) or await self._read_job(namespace, vname)
                if seen.validation_job is not None:
                    seen.validation_pods = await self._pods(namespace, name, rid, "validation", seen.validation_job)
                    seen.validation_queue = await self._queue_view(seen.validation_job, spec.validation.queue_name,
                                                                   False)
            return seen
        seen.pods = await self._pods(namespace, name, rid, "trainer", seen.job)
        seen.queue = await self._queue_view(seen.job, spec.queue_name, spec.suspend)
        return seen

    async def _read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        job = await self.call(self.kube.read_job, namespace, name)
        if job is not None:
            job = self.jobs[(namespace, name)] = slim(job)
        return job

    async def _pods(self, namespace: str, name: str, rid: str, component: str,
                    job: dict[str, Any]) -> list[dict[str, Any]]:
        """A run's pods of one component, from the cache; from the API server when its Job finished and no cached
        pod has the result yet (a restart: watches fill in any order, and the result is in that pod)."""
        cached = (self.pods.get(k) for k in self.pods_of_run.get((namespace, name, rid), ()))
        pods = [p for p in cached if p is not None
                and (p["metadata"].get("labels") or {}).get(render.COMPONENT_LABEL, "trainer") == component]
        conditions = lifecycle.conditions_of(job)
        finished = any(lifecycle.holds(conditions, c) for c in ("Complete", "SuccessCriteriaMet", "Failed"))
        if finished and not any(lifecycle.termination_message(p)[0] for p in pods):
            listed = await self.call(self.kube.list_pods, namespace, f"{render.SFTJOB_LABEL}={name},"
                                                                     f"{render.RUN_LABEL}={rid},"
                                                                     f"{render.COMPONENT_LABEL}={component}")
            pods = [slim(p) for p in listed]
        return pods

    async def _missing_reference(self, namespace: str, spec: api.SFTJobSpec) -> tuple[str, str] | None:
        for check in decide.references(spec):
            found = await self.call(self.kube.exists, check[0], namespace, check[1])
            missing = decide.missing_reference(namespace, check, found)
            if missing is not None:
                return missing
        return None

    async def _queue_view(self, job: dict[str, Any], queue: str | None, suspend: bool) -> QueueView | None:
        """Kueue's view of a Job it holds suspended: its Workload, ClusterQueue, place in the queue, preemptor."""
        conditions = lifecycle.conditions_of(job)
        if not queue or suspend or not (job.get("spec") or {}).get("suspend") or \
                any(lifecycle.holds(conditions, c) for c in ("Complete", "SuccessCriteriaMet", "Failed")):
            return None
        namespace = job["metadata"]["namespace"]
        view = QueueView()
        try:
            view.workload = await self.call(self.kube.workload_of, namespace, job)
            local = await self.call(self.kube.local_queue, namespace, queue)
            view.cluster_queue = ((local or {}).get("spec") or {}).get("clusterQueue")
        except KueueAbsent:
            return QueueView(absent=True)
        except ApiException as e:
            log.warning("could not read Kueue's Workload of Job %s/%s: %s", namespace, job["metadata"]["name"],
                        str(e).splitlines()[0][:200])
            return QueueView(unreadable=True)
        workload = view.workload
        if workload is not None:
            if not kueue.holds(workload, "Evicted") and not kueue.holds(workload, "QuotaReserved"):
                pending = await self.call(self.kube.pending_workloads, namespace, queue)
                view.position = kueue.position_of(pending, workload)
            uid = kueue.preemptor_job_uid(workload)
            if uid:
                view.preemptor = next((f"SFTJob {ns}/{(j['metadata'].get('labels') or {})[render.SFTJOB_LABEL]}"
                                       for (ns, _), j in self.jobs.items() if j["metadata"].get("uid") == uid
                                       and render.SFTJOB_LABEL in (j["metadata"].get("labels") or {})), None)
        return view

    # --------------------------------------------------------------------------------------------- act

    async def act(self, key: Key, seen: Observed, decision: Decision) -> float | None:
        """Carry out a decision: the writes, then the status within the write budget, then its events."""
        requeue = decision.requeue
        for action in decision.actions:
            created = await self._act(action)
            if created is not None:
                self.jobs[(action.namespace, created["metadata"]["name"])] = slim(created)
                requeue = 0.5 if requeue is None else min(requeue, 0.5)  # look at what was created (or found)
        if decision.track:
            self.poller.track(key, decision.track)
        else:
            self.poller.forget(key)
        if decision.status is None:
            return requeue
        new = decision.status
        if new.get("phase"):
            new = {**new, "conditions": lifecycle.standard_conditions(new, new.get("observedGeneration"), now(),
                                                                      decision.reason)}
        new = decide.without_empty(new)
        body = seen.body
        old = decide.without_empty(body.get("status") or {})  # the CRD's defaults filled in are no difference
        worth, live = decide.worth_writing(old, new)
        if not worth:
            return requeue
        if live:
            wait = self.last_write.get(key, -1e9) + 60.0 / self.settings.status_writes_per_minute - time.monotonic()
            if wait > 0:  # coalesced: the latest reading is written when the budget allows
                self.metrics.writes_deferred.inc()
                return wait if requeue is None else min(requeue, wait)
        patch = decide.merge_patch(old, new)
        assert patch is not None
        stored = await self.call(self.kube.patch_status, seen.namespace, seen.name, patch)
        self.last_write[key] = time.monotonic()
        self.metrics.status_written(seen.namespace, old, new, live)
        if key in self.sftjobs:
            # The cache sees our own write before its watch event arrives, and no older event replaces it.
            if isinstance(stored, dict) and stored.get("metadata"):
                self.observe_sftjob("MODIFIED", stored, requeue=False)
            else:
                self.sftjobs[key] = {**self.sftjobs[key], "status": new}
        for kind, reason, message in decision.events:
            if self.last_event.get(key) == (reason, message):
                continue  # the same event twice in a row: a retry, not a transition
            self.last_event[key] = (reason, message)
            # Off the reconcile's path: an event is a courtesy (kube.post_event never raises), the status says it.
            task = asyncio.create_task(self.call(self.kube.post_event, body, kind, reason, message))
            self.posting.add(task)
            task.add_done_callback(self.posting.discard)
            self.metrics.events.inc()
        return requeue

    async def _act(self, action: Action) -> dict[str, Any] | None:
        """One write; returns the Job it created (or found), for the cache."""
        kube = self.kube
        if action.verb == "ensure_claim":
            claim = (action.namespace, action.name)
            if time.monotonic() - self.claims.get(claim, -1e9) > CLAIM_MEMORY:
                await self.call(kube.ensure_claim, action.body)
                self.claims[claim] = time.monotonic()
        elif action.verb == "ensure_config_map":
            await self.call(kube.ensure_config_map, action.body)
        elif action.verb == "ensure_service":
            await self.call(kube.ensure_service, action.body)
        elif action.verb == "ensure_job":
            job = await self.call(kube.ensure_job, action.body)
            log.info("SFTJob %s/%s: Job %s", action.namespace,
                     (action.body or {}).get("metadata", {}).get("labels", {}).get(render.SFTJOB_LABEL),
                     job["metadata"]["name"])
            return job
        elif action.verb == "stop_job":
            await self.call(kube.stop_job, action.namespace, action.name)
        elif action.verb == "suspend_job":
            return await self.call(kube.set_job_suspended, action.namespace, action.name, action.value)
        elif action.verb == "label_job":
            return await self.call(kube.set_job_label, action.namespace, action.name, *action.value)
        else:
            raise ValueError(f"unknown action {action.verb}")
        return None

