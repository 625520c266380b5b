"""Reconciliation of SFTJobs: a watch cache, a work queue, and one idempotent `reconcile` per SFTJob.

kopf watches SFTJobs, the runs' Jobs and their Pods and hands every event to `Controller.observe_*`, which
updates the cache and queues the SFTJob concerned. Workers take SFTJobs off the queue (never the same one
twice at a time) and reconcile each: render the run's children, create what is missing, read the Job and
pods from the cache, and write the status the lifecycle rules derive from them. A reconcile that fails is
retried with backoff; every SFTJob is reconciled again periodically, running ones at the progress interval.

No finalizer and no kopf bookkeeping are written to SFTJobs: deleting one never waits for the operator,
and its children go with it through their owner references.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import logging
import time
import urllib.request
from typing import Any

from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from sftop import api, kueue, lifecycle, render
from sftop.kube import Kube, KueueAbsent, now
from sftop.settings import Settings

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name) of an SFTJob
MAX_PREVIOUS_RUNS = 10
REFERENCE_RETRY = 20.0  # seconds between checks of a missing Secret, ConfigMap or claim
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class WorkQueue:
    """A set of keys to process, like client-go's: a key waits at most once, is processed by one worker at a
    time, and a key added while it is processed is processed again afterwards. Call from the event loop."""

    def __init__(self):
        self._ready: collections.deque[Key] = collections.deque()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._wakeup = asyncio.Event()

    def add(self, key: Key) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
            self._wakeup.set()

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
        while not self._ready:
            self._wakeup.clear()
            await self._wakeup.wait()
        key = self._ready.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._ready)


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`; None when they are equal."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            sub = merge_patch(old[key], value)
            patch[key] = value if not isinstance(value, dict) else sub
    return patch or None


def fetch_progress(ip: str, port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """The trainer's progress, read from its pod: no Kubernetes credentials involved anywhere."""
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/progress", timeout=timeout) as r:
            data = json.loads(r.read().decode())
    except (OSError, ValueError) as e:
        log.debug("no progress from %s:%d: %s", ip, port, e)
        return None
    return data if isinstance(data, dict) else None


def progress_status(data: dict[str, Any], stamp: str) -> dict[str, Any]:
    keys = ("step", "totalSteps", "percent", "epoch", "loss", "learningRate", "tokensPerSecond", "eta", "evalLoss",
            "exactMatch")
    out = {k: data[k] for k in keys if data.get(k) is not None}
    out["updateTime"] = stamp
    return out


class Controller:
    def __init__(self, settings: Settings, kube: Kube):
        self.settings = settings
        self.kube = kube
        self.queue = WorkQueue()
        self.sftjobs: dict[Key, dict[str, Any]] = {}
        self.jobs: dict[Key, dict[str, Any]] = {}
        self.pods: dict[Key, dict[str, Any]] = {}
        self.failures: dict[Key, int] = {}
        self.progress_read: dict[Key, float] = {}
        self.reconciles = 0
        self.errors = 0

    # ------------------------------------------------------------------------- watch events (async)

    def observe_sftjob(self, event_type: str | None, obj: dict[str, Any]) -> None:
        key = (obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if event_type == "DELETED":
            self.sftjobs.pop(key, None)
            self.queue.forget(key)
            self.failures.pop(key, None)
            self.progress_read.pop(key, None)
            return
        self.sftjobs[key] = obj
        self.queue.add(key)
        # An SFTJob that waits to continue this one's adapter looks again as soon as this one changes.
        for (namespace, name), other in list(self.sftjobs.items()):
            if namespace == key[0] and name != key[1] and \
                    ((other.get("spec") or {}).get("warmStart") or {}).get("sftJob") == key[1] and \
                    (other.get("status") or {}).get("phase") in (None, "Pending"):
                self.queue.add((namespace, name))

    def _observe_child(self, cache: dict[Key, dict[str, Any]], event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace"), meta["name"])
        if event_type == "DELETED":
            cache.pop(key, None)
        else:
            cache[key] = obj
        parent = (meta.get("labels") or {}).get(render.SFTJOB_LABEL)
        if parent:
            self.queue.add((meta.get("namespace"), parent))

    def observe_job(self, event_type: str | None, obj: dict[str, Any]) -> None:
        self._observe_child(self.jobs, event_type, obj)

    def observe_pod(self, event_type: str | None, obj: dict[str, Any]) -> None:
        self._observe_child(self.pods, event_type, obj)

    # ------------------------------------------------------------------------------------- workers

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.settings.workers)))

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                delay = await asyncio.to_thread(self.reconcile, key)
                self.failures.pop(key, None)
            except Exception:
                self.errors += 1
                count = self.failures[key] = self.failures.get(key, 0) + 1
                delay = ERROR_BACKOFF[min(count, len(ERROR_BACKOFF)) - 1]
                log.exception("reconciling SFTJob %s/%s failed (attempt %d); retrying in %.0fs", *key, count, delay)
            finally:
                self.queue.done(key)
            if key in self.sftjobs:
                self.queue.add_after(key, min(delay, self.settings.resync_interval) if delay
                                     else self.settings.resync_interval)

    # ----------------------------------------------------------------------------------- reconcile

    def reconcile(self, key: Key) -> float | None:
        """Make the cluster match one SFTJob and its status match the cluster. Returns when to look again."""
        self.reconciles += 1
        body = self.sftjobs.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        namespace, name = key
        status = copy.deepcopy(body.get("status") or {})
        generation = body["metadata"].get("generation")
        try:
            spec = api.SFTJobSpec.model_validate(body.get("spec") or {})
        except ValidationError as e:
            return self._invalid(body, status, generation, api.error_lines(e, "spec."))

        rid = render.run_id(spec)
        jname = render.job_name(name, rid)
        current = status.get("run") or {}
        if current.get("id") and current["id"] != rid:
            status = self._supersede(body, status, spec, rid)
        elif current.get("id") == rid and status.get("phase") in lifecycle.TERMINAL:
            # A finished run stays finished: only the generation the status speaks for moves.
            if status.get("observedGeneration") != generation:
                self._write(body, status, {**status, "observedGeneration": generation})
            return None

        job = self.jobs.get((namespace, jname))
        warm_start = None
        if job is None:
            # Not in the cache: maybe only not yet (a restart, a watch that lags). Ask before creating anything.
            job = self.kube.read_job(namespace, jname)
            if job is not None:
                self.jobs[(namespace, jname)] = job
        if job is None:
            missing = self._missing_reference(namespace, spec)
            if missing is not None:
                reason, message = missing
                new = self._base_status(status, spec, rid, namespace, name, generation)
                new.update(phase="Pending", message=message)
                new["conditions"] = lifecycle.set_condition(new.get("conditions", []), "Accepted", "False", reason,
                                                            message, generation, now())
                self._write(body, status, new, event=("Warning", reason, message))
                return REFERENCE_RETRY
            warm_start, problem = self._warm_start(namespace, name, spec, status, rid)
            if problem is not None:
                return self._warm_start_problem(body, status, spec, rid, generation, *problem)
            if spec.validation.enabled and not (current.get("id") == rid and current.get("validated")):
                status, passed = self._validation(body, status, spec, rid, warm_start)
                if not passed:
                    finished = status.get("phase") in lifecycle.TERMINAL
                    return None if finished else min(30.0, self.settings.resync_interval)
            job = self._create_children(body, spec, rid, warm_start=warm_start)
        job = self._apply_suspend(job, spec)
        job = self._apply_priority(job, spec)

        pods = self._pods(namespace, name, rid, "trainer")
        conditions = lifecycle.conditions_of(job)
        finished = any(lifecycle.holds(conditions, c) for c in ("Complete", "SuccessCriteriaMet", "Failed"))
        if finished and not any(lifecycle.termination_message(p)[0] for p in pods):
            # The Job says it finished but no finished pod is cached yet (a restart: watches fill in any order).
            # The result is in that pod; ask for it rather than finalize the run without it.
            pods = self._list_pods(namespace, name, rid, "trainer")
        seen = lifecycle.observe(spec.suspend, bool(spec.queue_name), job, pods)
        stamp = now()
        new = self._base_status(status, spec, rid, namespace, name, generation, warm_start)
        run = new["run"]
        if seen.phase == "Queued":
            self._queue_view(job, spec.queue_name, seen, run, (status.get("progress") or {}).get("step"))
        elif seen.phase == "Running" and run.get("preemptions"):
            seen.message += f" (resumed from its checkpoint after {run['preemptions']} preemption(s) by Kueue)"
        new.update(phase=seen.phase, message=seen.message)
        for field, value in (("startTime", seen.start_time), ("completionTime", seen.completion_time)):
            if value:
                run[field] = value
        # A preempted pod is deleted while its Job is suspended and the Job does not count it: count it here.
        started = 0 if seen.phase == "Queued" else seen.attempts
        run["attempts"] = max(started + run.get("preemptions", 0), run.get("attempts", 0))
        conditions = lifecycle.set_condition(new.get("conditions", []), "Accepted", "True", "Accepted",
                                             "the spec is valid and its references exist", generation, stamp)
        new["conditions"] = lifecycle.phase_conditions(conditions, seen.phase, seen.reason, seen.message,
                                                       generation, stamp)
        if seen.phase == "Running" and seen.pod_ip:
            self._read_progress(key, seen.pod_ip, new, stamp)
        if seen.phase in lifecycle.TERMINAL and seen.result:
            if seen.result.get("checkpoints") is not None:
                new["checkpoints"] = checkpoint_status(seen.result["checkpoints"], run.get("outputPath"))
            if seen.phase == "Failed" and seen.result.get("steps") is not None:
                new["result"] = self._result(seen.result, run.get("outputPath"), name)
        if seen.phase == "Succeeded":
            new["result"] = self._result(seen.result, run.get("outputPath"), name)
            progress = dict(new.get("progress") or {})
            progress.update(percent=100, eta="0s", updateTime=stamp)
            if progress.get("totalSteps") is not None or new["result"].get("steps") is not None:
                progress["step"] = progress["totalSteps"] = new["result"].get("steps") or progress.get("totalSteps")
            if new["result"].get("trainLoss") is not None and "loss" not in progress:
                progress["loss"] = new["result"]["trainLoss"]
            new["progress"] = progress
        event = None
        if (seen.phase, seen.reason) != (status.get("phase"), lifecycle.phase_reason(status)):
            event = ("Warning" if seen.warning else "Normal", seen.reason, seen.message)
        self._write(body, status, new, event=event, reason=seen.reason)
        if seen.phase == "Running":
            return self.settings.progress_interval
        if seen.phase in ("Pending", "Queued"):
            return min(30.0, self.settings.resync_interval)
        return None

    # ---------------------------------------------------------------------------------- validation

    def _pods(self, namespace: str, name: str, rid: str, component: str) -> list[dict[str, Any]]:
        out = []
        for (ns, _), p in self.pods.items():
            labels = p["metadata"].get("labels") or {}
            if ns == namespace and labels.get(render.RUN_LABEL) == rid and labels.get(render.SFTJOB_LABEL) == name \
                    and labels.get(render.COMPONENT_LABEL, "trainer") == component:
                out.append(p)
        return out

    def _list_pods(self, namespace: str, name: str, rid: str, component: str) -> list[dict[str, Any]]:
        """A run's pods of one component, asked of the API server (not the cache)."""
        return self.kube.list_pods(namespace, f"{render.SFTJOB_LABEL}={name},{render.RUN_LABEL}={rid},"
                                              f"{render.COMPONENT_LABEL}={component}")

    def _validation(self, body: dict[str, Any], status: dict[str, Any], spec: api.SFTJobSpec,
                    rid: str, warm_start: render.ClaimPath | None = None) -> tuple[dict[str, Any], bool]:
        """The Validating phase of a run: create its CPU-only Job, follow it, and write what it found. Returns
        (the status now, whether the run passed and its training Job may be created)."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        generation = body["metadata"].get("generation")
        vname = render.validation_job_name(name, rid)
        job = self.jobs.get((namespace, vname)) or self.kube.read_job(namespace, vname)
        if job is None:
            job = self._create_children(body, spec, rid, validation=True, warm_start=warm_start)
        pods = self._pods(namespace, name, rid, "validation")
        finished = any(lifecycle.holds(lifecycle.conditions_of(job), c) for c in ("Complete", "SuccessCriteriaMet"))
        if finished and not any(lifecycle.termination_message(p)[0] for p in pods):
            pods = self._list_pods(namespace, name, rid, "validation")
        seen = lifecycle.observe(False, bool(spec.validation.queue_name), job, pods)
        if seen.phase == "Queued":
            self._queue_view(job, spec.validation.queue_name, seen, {}, None)
        stamp = now()
        new = self._base_status(status, spec, rid, namespace, name, generation, warm_start)
        new["run"]["validationJobName"] = vname
        conditions = lifecycle.set_condition(new.get("conditions", []), "Accepted", "True", "Accepted",
                                             "the spec is valid and its references exist", generation, stamp)
        passed = False
        if seen.phase == "Succeeded":
            plan = (seen.result or {}).get("plan")
            problem = validation_problem(plan)
            if problem is None:
                new["plan"] = plan
                reason, message = "Validated", (f"data, template and model checked: {plan['samples']} samples, "
                                                f"{plan['totalSteps']} steps, ~{plan['memory']['perGpu']} GiB per GPU")
                conditions = lifecycle.set_condition(conditions, "Validated", "True", reason, message, generation,
                                                     stamp)
                new["run"]["validated"] = passed = True
                new.update(phase="Pending", message="creating the training Job")
                event = ("Normal", reason, message)
            else:
                if plan is not None:
                    new["plan"] = plan
                reason, message = problem
                conditions = lifecycle.set_condition(conditions, "Validated", "False", reason, message, generation,
                                                     stamp)
                conditions = lifecycle.phase_conditions(conditions, "Failed", reason, message, generation, stamp)
                new.update(phase="Failed", message=message)
                new["run"]["completionTime"] = seen.completion_time or stamp
                event = ("Warning", reason, message)
        elif seen.phase == "Failed":
            reason, message = seen.reason, seen.message
            conditions = lifecycle.set_condition(conditions, "Validated", "False", reason, message, generation, stamp)
            conditions = lifecycle.phase_conditions(conditions, "Failed", reason, message, generation, stamp)
            new.update(phase="Failed", message=message)
            new["run"]["completionTime"] = seen.completion_time or stamp
            event = ("Warning", reason, message)
        else:
            reason = seen.reason if seen.warning or seen.phase == "Queued" else "Validating"
            message = seen.message if seen.warning or seen.phase == "Queued" else \
                "checking the data, chat template and model on a CPU before asking for a GPU"
            conditions = lifecycle.set_condition(conditions, "Validated", "Unknown", reason, message, generation,
                                                 stamp)
            new.update(phase="Validating", message=message)
            event = ("Warning" if seen.warning else "Normal", reason, message)
        new["conditions"] = conditions
        if (new.get("phase"), reason) == (status.get("phase"), _validated_reason(status)):
            event = None
        self._write(body, status, new, event=event, reason=reason)
        return new, passed

    # ------------------------------------------------------------------------------------- helpers

    def _base_status(self, status: dict[str, Any], spec: api.SFTJobSpec, rid: str, namespace: str, name: str,
                     generation: int | None, warm_start: render.ClaimPath | None = None) -> dict[str, Any]:
        new = copy.deepcopy(status)
        new["observedGeneration"] = generation
        new["model"] = render.model_summary(spec)
        run = dict(new.get("run") or {})
        if run.get("id") != rid:
            run = {}
        run.update(id=rid, jobName=render.job_name(name, rid),
                   outputPath=render.output_path(spec, namespace, name, rid))
        if warm_start is not None:
            run["warmStart"] = str(warm_start)
        run.setdefault("attempts", 0)
        new["run"] = run
        return new

    def _invalid(self, body: dict[str, Any], status: dict[str, Any], generation: int | None,
                 problems: list[str]) -> None:
        message = "invalid spec: " + "; ".join(problems)
        new = copy.deepcopy(status)
        stamp = now()
        new.update(phase="Failed", message=message, observedGeneration=generation)
        conditions = lifecycle.set_condition(new.get("conditions", []), "Accepted", "False", "InvalidSpec", message,
                                             generation, stamp)
        new["conditions"] = lifecycle.phase_conditions(conditions, "Failed", "InvalidSpec", message, generation, stamp)
        changed = status.get("message") != message or status.get("phase") != "Failed"
        self._write(body, status, new, event=("Warning", "InvalidSpec", message) if changed else None)
        return None

    def _supersede(self, body: dict[str, Any], status: dict[str, Any], spec: api.SFTJobSpec,
                   rid: str) -> dict[str, Any]:
        """The spec's training inputs changed: the current run becomes a previous run (its output stays where
        it is), an unfinished one is stopped, and a new run starts."""
        old = status["run"]
        namespace = body["metadata"]["namespace"]
        if status.get("phase") not in lifecycle.TERMINAL:
            self.kube.stop_job(namespace, old["jobName"])
            if old.get("validationJobName") and not old.get("validated"):
                self.kube.stop_job(namespace, old["validationJobName"])
        previous = {"id": old["id"], "jobName": old["jobName"], "phase": status.get("phase") or "Pending"}
        if old.get("outputPath"):
            previous["outputPath"] = old["outputPath"]
        new = copy.deepcopy(status)
        new["previousRuns"] = [previous] + [r for r in status.get("previousRuns", []) if r.get("id") != rid
                                            and r.get("id") != old["id"]][: MAX_PREVIOUS_RUNS - 1]
        for field in ("progress", "result", "plan", "checkpoints"):
            new.pop(field, None)
        new["conditions"] = [c for c in new.get("conditions", []) if c.get("type") != "Validated"]
        new["run"] = {"id": rid}
        message = (f"the spec's training inputs changed: run {rid} replaces run {old['id']}, whose output stays "
                   f"at {old.get('outputPath')}")
        self.kube.post_event(body, "Normal", "NewRun", message)
        return new

    def _missing_reference(self, namespace: str, spec: api.SFTJobSpec) -> tuple[str, str] | None:
        """The first Secret, ConfigMap or claim the spec names that does not exist (or lacks its key).
        A missing reference waits: in GitOps the Secret may arrive after the SFTJob."""
        checks: list[tuple[str, str, str | None, str]] = []
        if spec.hub_token_secret is not None:
            checks.append(("Secret", spec.hub_token_secret.name, spec.hub_token_secret.key, "spec.hubTokenSecret"))
        if spec.dataset.config_map is not None:
            checks.append(("ConfigMap", spec.dataset.config_map.name, spec.dataset.config_map.key,
                           "spec.dataset.configMap"))
            if spec.dataset.eval_split is not None and spec.dataset.eval_split.file is not None:
                checks.append(("ConfigMap", spec.dataset.config_map.name, spec.dataset.eval_split.file,
                               "spec.dataset.evalSplit.file"))
        if spec.model.pvc is not None:
            checks.append(("PersistentVolumeClaim", spec.model.pvc.claim_name, None, "spec.model.pvc.claimName"))
        if spec.dataset.pvc is not None:
            checks.append(("PersistentVolumeClaim", spec.dataset.pvc.claim_name, None, "spec.dataset.pvc.claimName"))
        if spec.output.pvc.create is None:
            checks.append(("PersistentVolumeClaim", spec.output.pvc.claim_name, None, "spec.output.pvc.claimName"))
        for kind, name, key, field in checks:
            obj = self.kube.exists(kind, namespace, name)
            short = {"PersistentVolumeClaim": "PVC"}.get(kind, kind)
            if obj is None:
                return f"{short}NotFound", (f"{field}: {kind} {name} does not exist in namespace {namespace}; the run "
                                            f"starts when it does")
            if key is not None and key not in (obj.get("data") or {}) and key not in (obj.get("stringData") or {}):
                return f"{short}KeyNotFound", f"{field}: {kind} {name} has no key {key!r}; the run starts when it does"
        return None

    def _warm_start(self, namespace: str, name: str, spec: api.SFTJobSpec, status: dict[str, Any],
                    rid: str) -> tuple[render.ClaimPath | None, tuple[str, str, bool] | None]:
        """spec.warmStart resolved to a folder on a claim, once per run (kept in status.run.warmStart): (the folder,
        None), or (None, (reason, message, whether it can never resolve))."""
        ws = spec.warm_start
        if ws is None:
            return None, None
        run = status.get("run") or {}
        if run.get("id") == rid and run.get("warmStart"):
            return render.ClaimPath.parse(run["warmStart"]), None
        if ws.pvc is not None:
            return render.ClaimPath(ws.pvc.claim_name, ws.pvc.path.rstrip("/")), None
        assert ws.sft_job is not None
        own = ws.sft_job == name
        other = status if own else (self.sftjobs.get((namespace, ws.sft_job)) or {}).get("status")
        if not own and (namespace, ws.sft_job) not in self.sftjobs:
            return None, ("WarmStartNotFound", f"spec.warmStart.sftJob: SFTJob {ws.sft_job} does not exist in "
                                               f"namespace {namespace}; the run starts when it does", False)
        other = other or {}
        current = other.get("run") or {}
        runs = ([] if own else [{**current, "phase": other.get("phase")}]) + list(other.get("previousRuns") or [])
        runs = [r for r in runs if r.get("id")]
        if ws.run_id is not None:
            found = [r for r in runs if r["id"] == ws.run_id]
        elif own:
            found = [r for r in runs if r.get("phase") == "Succeeded"][:1]
        else:
            found = runs[:1]
        if not found:
            known = ", ".join(f"{r['id']} ({r.get('phase')})" for r in runs) or "none"
            which = f"run {ws.run_id}" if ws.run_id else "run that succeeded"
            return None, ("WarmStartNotFound", f"spec.warmStart: SFTJob {ws.sft_job} has no {which}; its runs: "
                                               f"{known}", own or ws.run_id is not None)
        source = found[0]
        if not own and source is runs[0] and other.get("model") and other["model"] != render.model_summary(spec):
            return None, ("WarmStartMismatch", f"spec.warmStart: SFTJob {ws.sft_job} trains another base model "
                                               f"({other['model']}, this SFTJob {render.model_summary(spec)}); an "
                                               f"adapter continues only on its own base", True)
        if not source.get("outputPath"):
            return None, ("WarmStartNotFound", f"spec.warmStart: run {source['id']} of SFTJob {ws.sft_job} has no "
                                               f"output yet", False)
        out = render.ClaimPath.parse(source["outputPath"])
        if ws.checkpoint is not None:
            return render.ClaimPath(out.claim, f"{out.folder}/checkpoints/checkpoint-{ws.checkpoint}"), None
        phase = source.get("phase")
        if phase == "Succeeded":
            return render.ClaimPath(out.claim, f"{out.folder}/adapter"), None
        if phase in lifecycle.TERMINAL or source is not runs[0] or own:
            return None, ("WarmStartNotFound", f"spec.warmStart: run {source['id']} of SFTJob {ws.sft_job} ended "
                                               f"{phase} without an adapter; name one of its checkpoints with "
                                               f"warmStart.checkpoint", True)
        return None, ("WaitingForWarmStart", f"spec.warmStart: waiting for run {source['id']} of SFTJob {ws.sft_job} "
                                             f"to succeed (it is {phase or 'Pending'})", False)

    def _warm_start_problem(self, body: dict[str, Any], status: dict[str, Any], spec: api.SFTJobSpec, rid: str,
                            generation: int | None, reason: str, message: str, final: bool) -> float | None:
        """A warm start that cannot resolve: the run fails when it never can, and waits when it may."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        new = self._base_status(status, spec, rid, namespace, name, generation)
        stamp = now()
        phase = "Failed" if final else "Pending"
        new.update(phase=phase, message=message)
        conditions = lifecycle.set_condition(new.get("conditions", []), "Accepted", "False" if final else "True",
                                             reason, message, generation, stamp)
        new["conditions"] = lifecycle.phase_conditions(conditions, phase, reason, message, generation, stamp)
        if final:
            new["run"]["completionTime"] = stamp
        changed = (status.get("phase"), status.get("message")) != (phase, message)
        self._write(body, status, new, event=("Warning", reason, message) if changed else None, reason=reason)
        return None if final else REFERENCE_RETRY

    def _create_children(self, body: dict[str, Any], spec: api.SFTJobSpec, rid: str,
                         validation: bool = False, warm_start: render.ClaimPath | None = None) -> dict[str, Any]:
        import kopf

        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        claim = render.output_claim(namespace, spec)
        if claim is not None:
            self.kube.ensure_claim(claim)  # not adopted: output outlives the SFTJob
        config_map = render.config_map(name, namespace, spec, rid, self.settings, warm_start)
        kopf.adopt(config_map, owner=body)
        self.kube.ensure_config_map(config_map)
        job = render.job(name, namespace, spec, rid, self.settings, validation=validation, warm_start=warm_start)
        kopf.adopt(job, owner=body, nested=("spec.template",))
        created = self.kube.ensure_job(job)
        self.jobs[(namespace, created["metadata"]["name"])] = created
        log.info("SFTJob %s/%s: run %s, Job %s", namespace, name, rid, created["metadata"]["name"])
        return created

    def _apply_suspend(self, job: dict[str, Any], spec: api.SFTJobSpec) -> dict[str, Any]:
        """spec.suspend drives the Job's suspend; with a queue, only Kueue lets a Job start."""
        suspended = bool((job.get("spec") or {}).get("suspend"))
        conditions = lifecycle.conditions_of(job)
        if lifecycle.holds(conditions, "Complete") or lifecycle.holds(conditions, "Failed"):
            return job
        want = spec.suspend if not spec.queue_name else (spec.suspend or suspended)
        if want != suspended:
            job = self.kube.set_job_suspended(job["metadata"]["namespace"], job["metadata"]["name"], want)
            self.jobs[(job["metadata"]["namespace"], job["metadata"]["name"])] = job
        return job

    def _queue_view(self, job: dict[str, Any], queue: str | None, seen: lifecycle.Observation, run: dict[str, Any],
                    step: int | None) -> None:
        """A run Kueue holds suspended: why, from its Workload; counts a preemption the first time it is seen."""
        namespace = job["metadata"]["namespace"]
        queue = queue or ""
        try:
            workload = self.kube.workload_of(namespace, job)
            cluster_queue = ((self.kube.local_queue(namespace, queue) or {}).get("spec") or {}).get("clusterQueue")
        except KueueAbsent:
            seen.reason, seen.warning = "KueueNotInstalled", True
            seen.message = (f"the run waits for Kueue to admit it (LocalQueue {queue}), but this cluster serves no "
                            f"Kueue API: install Kueue, or remove spec.queueName to run without a queue")
            return
        except ApiException as e:  # Kueue's view is an explanation: without it the run still reads Queued
            log.warning("could not read Kueue's Workload of Job %s/%s: %s", namespace, job["metadata"]["name"],
                        str(e).splitlines()[0][:200])
            return
        position = preemptor = None
        if workload is not None:
            run["workloadName"] = workload["metadata"]["name"]
            if not kueue.holds(workload, "Evicted") and not kueue.holds(workload, "QuotaReserved"):
                position = kueue.position_of(self.kube.pending_workloads(namespace, queue), workload)
            uid = kueue.preemptor_job_uid(workload)
            if uid:
                preemptor = next((f"SFTJob {ns}/{(j['metadata'].get('labels') or {})[render.SFTJOB_LABEL]}"
                                  for (ns, _), j in list(self.jobs.items()) if j["metadata"].get("uid") == uid
                                  and render.SFTJOB_LABEL in (j["metadata"].get("labels") or {})), None)
        state = kueue.queue_state(workload, queue, cluster_queue, position, preemptor, step)
        seen.reason, seen.message, seen.warning = state.reason, state.message, state.warning
        if state.preempted_at and state.preempted_at != run.get("lastPreemptionTime"):
            run["preemptions"] = run.get("preemptions", 0) + 1
            run["lastPreemptionTime"] = state.preempted_at

    def _apply_priority(self, job: dict[str, Any], spec: api.SFTJobSpec) -> dict[str, Any]:
        """spec.workloadPriorityClassName on the Job, where Kueue allows the change: a new value always, a first
        value only while the Job is suspended, never a removal."""
        meta = job["metadata"]
        want, have = spec.workload_priority_class_name, (meta.get("labels") or {}).get(render.PRIORITY_LABEL)
        conditions = lifecycle.conditions_of(job)
        if not spec.queue_name or not want or want == have or lifecycle.holds(conditions, "Complete") \
                or lifecycle.holds(conditions, "Failed"):
            return job
        if have or (job.get("spec") or {}).get("suspend"):
            job = self.kube.set_job_label(meta["namespace"], meta["name"], render.PRIORITY_LABEL, want)
            self.jobs[(meta["namespace"], meta["name"])] = job
        return job

    def _read_progress(self, key: Key, ip: str, new: dict[str, Any], stamp: str) -> None:
        last = self.progress_read.get(key, 0.0)
        if time.monotonic() - last < self.settings.progress_interval * 0.9 and new.get("progress"):
            return
        self.progress_read[key] = time.monotonic()
        data = fetch_progress(ip, self.settings.progress_port)
        if data and data.get("step") is not None:
            new["progress"] = progress_status(data, stamp)
        if data and isinstance(data.get("checkpoints"), list):
            new["checkpoints"] = checkpoint_status(data["checkpoints"], new["run"].get("outputPath"))

    @staticmethod
    def _result(message: dict[str, Any] | None, output_path: str | None, name: str) -> dict[str, Any]:
        message = message or {}
        result: dict[str, Any] = {}
        if output_path and message.get("adapterPath"):
            result["adapterPath"] = f"{output_path}/{message['adapterPath']}"
        if output_path and message.get("mergedPath"):
            result["mergedPath"] = f"{output_path}/{message['mergedPath']}"
        for key in ("trainLoss", "evalLoss", "steps", "runtimeSeconds", "trainableParameters", "totalParameters",
                    "trainedTokens", "evaluation", "resultStep", "stopReason", "warmStart"):
            if message.get(key) is not None:
                result[key] = message[key]
        serve = message.get("serving")
        if output_path and message.get("adapterPath") and isinstance(serve, dict) and serve.get("loraRank"):
            result["serving"] = serving_status(name, render.ClaimPath.parse(f"{output_path}/{message['adapterPath']}"),
                                               serve)
        return result

    def _write(self, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any],
               event: tuple[str, str, str] | None = None, reason: str | None = None) -> None:
        """Patch the status when it changed (only the difference), then post the event. Every write carries the
        kstatus conditions that follow from the phase it writes."""
        if new.get("phase"):
            new = {**new, "conditions": lifecycle.standard_conditions(new, new.get("observedGeneration"), now(),
                                                                      reason)}
        new = {k: v for k, v in new.items() if v is not None and v != {} and v != []}
        patch = merge_patch(body.get("status") or {}, new)
        if patch is not None:
            meta = body["metadata"]
            self.kube.patch_status(meta["namespace"], meta["name"], patch)
            body["status"] = new  # the cache sees our own write before its watch event arrives
        if event is not None and patch is not None:
            self.kube.post_event(body, *event)


def checkpoint_status(checkpoints: list[Any], output_path: str | None) -> list[dict[str, Any]]:
    """The trainer's checkpoint inventory as status shows it: paths as <claim>:<folder>, within the status' bound."""
    out = []
    for c in checkpoints:
        if not isinstance(c, dict) or not isinstance(c.get("step"), int) or not c.get("path"):
            continue
        entry = {k: c[k] for k in ("step", "epoch", "trainLoss", "evalLoss", "complete", "best") if c.get(k) is not None}
        entry.setdefault("complete", False)
        entry["path"] = f"{output_path}/{c['path']}" if output_path else c["path"]
        out.append(entry)
    if len(out) > MAX_CHECKPOINTS:
        best = [c for c in out if c.get("best")]
        out = (best + [c for c in out[-MAX_CHECKPOINTS:] if not c.get("best")])[-MAX_CHECKPOINTS:]
        out.sort(key=lambda c: c["step"])
    return out


MAX_CHECKPOINTS = 21
ADAPTER_MOUNT = "/adapters"  # where the serving handoff assumes the output claim is mounted in the vLLM pod


def serving_status(name: str, adapter: render.ClaimPath, serve: dict[str, Any]) -> dict[str, Any]:
    """status.result.serving: what vLLM and KServe need to load the adapter from its claim."""
    path = f"{ADAPTER_MOUNT}/{adapter.folder}"
    lora_module = {"name": name, "path": path, "base_model_name": serve.get("baseModel")}
    out = {"claimName": adapter.claim, "path": adapter.folder, "baseModel": serve.get("baseModel"),
           "loraRank": serve["loraRank"],
           "targetModules": serve["targetModules"] if isinstance(serve.get("targetModules"), list) else [],
           "vllmLoraModules": json.dumps({k: v for k, v in lora_module.items() if v}, separators=(",", ":")),
           "storageUri": f"pvc://{adapter.claim}/{adapter.folder}"}
    for key in ("baseModelRevision", "vllmMaxLoraRank"):
        if serve.get(key) is not None:
            out[key] = serve[key]
    return out


def validation_problem(plan: dict[str, Any] | None) -> tuple[str, str] | None:
    """(reason, message) when a validation that finished does not let the run start."""
    if not plan:
        return "ValidationFailed", "the validation Job finished without writing a plan"
    try:
        checked = api.Plan.model_validate(plan)
    except ValidationError as e:
        return "ValidationFailed", "the validation Job wrote a plan this operator cannot read: " + "; ".join(
            api.error_lines(e, "plan."))
    mem = checked.memory
    if mem.fits is False:
        return "InsufficientGPUMemory", (
            f"the run needs about {mem.per_gpu} GiB per GPU ({checked.method}) but the GPU has {mem.gpu_memory} GiB "
            f"({mem.gpu_memory_source}); would fit: " + "; or ".join(mem.would_fit or ["nothing found"]))
    return None


def _validated_reason(status: dict[str, Any]) -> str | None:
    for c in status.get("conditions") or []:
        if c.get("type") == "Validated":
            return c.get("reason")
    return None
