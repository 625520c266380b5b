"""A reconcile's first step: what one SFTJob's run looks like, as an `Observed` for sftop.decide. From the watch
cache; from the API server only what the cache cannot know yet (a restarted operator's Jobs and finished pods), the
references the spec names, and Kueue's view of a queued Job.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Coroutine

from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from sftop import api, kueue, lifecycle, names, policy, promotion, refs, render
from sftop.cache import WatchCache, slim
from sftop.conditions import conditions_of, holds
from sftop.kube import Kube, KueueAbsent, now
from sftop.kueue import QueueView
from sftop.records import Observed, Reading
from sftop.settings import Settings
from sftop.workqueue import Key

log = logging.getLogger(__name__)


class Observer:
    """Reads for reconciles: `call` makes a blocking Kubernetes API call off the event loop."""

    def __init__(self, settings: Settings, kube: Kube, cache: WatchCache, readings: dict[Key, Reading],
                 call: Callable[..., Coroutine[Any, Any, Any]]):
        self.settings, self.kube, self.cache, self.readings, self.call = settings, kube, cache, readings, call

    async def observe(self, key: Key, body: dict[str, Any]) -> Observed:
        seen = await self._observe(key, body)
        if seen.spec is not None and self.settings.policy and seen.job is None:
            run = seen.status.get("run") or {}
            finished = run.get("id") == render.run_id(seen.spec) and seen.status.get("phase") in lifecycle.TERMINAL
            if not finished or policy.judged_again(seen.status, seen.generation):
                await self._policy(seen)
                await self._cache_claim(seen)
        if seen.spec is not None and seen.spec.promotion is not None:
            await self._promotion(seen)
        return seen

    async def _cache_claim(self, seen: Observed) -> None:
        """The shared model cache claim the policy names, for a Hub model: it must exist and be ReadWriteMany."""
        if seen.policy is None or seen.missing is not None or seen.spec is None or seen.spec.model.hub is None:
            return
        claim = policy.effective(seen.policy, seen.namespace)["cacheClaim"]
        if claim:
            found = await self.call(self.kube.exists, "PersistentVolumeClaim", seen.namespace, claim)
            seen.missing = refs.cache_claim_problem(seen.namespace, claim, found)

    async def _policy(self, seen: Observed) -> None:
        """The cluster's SFTPolicy, read afresh (a refusal is final for the spec it judges, so it must never come
        from an old copy), and the GPUs the namespace's other unfinished training Jobs hold."""
        name = self.settings.policy
        try:
            cached = await self.call(self.kube.read_policy, name)
        except ApiException as e:
            seen.policy_missing = f"the SFTPolicy {name} could not be read: {str(e).splitlines()[0][:200]}"
            return
        if cached is None:
            seen.policy_missing = (f"the SFTPolicy {name} that this operator enforces (SFTOP_POLICY) does not exist: "
                                   f"no run starts until it does (kubectl get sftpolicies)")
            return
        seen.policy = cached
        own = names.job_name(seen.name, render.run_id(seen.spec))
        seen.gpus_in_flight = sum(
            policy.gpus_of(j) for (ns, n), j in self.cache.jobs.items()
            if ns == seen.namespace and n != own
            and (j["metadata"].get("labels") or {}).get(names.COMPONENT_LABEL) == "trainer"
            and not (j.get("spec") or {}).get("suspend")
            and not any(holds(conditions_of(j), c) for c in ("Complete", "Failed")))

    async def _promotion(self, seen: Observed) -> None:
        """The promotion Job the gate calls for, its pods, and any other switch still under way."""
        seen.promotion_jobs = sorted(
            n for (ns, n), j in self.cache.jobs.items() if ns == seen.namespace
            and (j["metadata"].get("labels") or {}).get(names.SFTJOB_LABEL) == seen.name
            and (j["metadata"].get("labels") or {}).get(names.COMPONENT_LABEL) == "promotion"
            and not any(holds(conditions_of(j), c) for c in ("Complete", "Failed")))
        jname = promotion.wanted_job(seen.spec, seen.status, seen.namespace, seen.name)
        if jname is None:
            return
        seen.promotion_job = self.cache.jobs.get((seen.namespace, jname)) or \
            await self._read_job(seen.namespace, jname)
        if seen.promotion_job is not None:
            target = (seen.promotion_job["metadata"].get("labels") or {}).get(names.RUN_LABEL, "")
            pods = await self._pods(seen.namespace, seen.name, target, "promotion", seen.promotion_job)
            # its own pods only: an earlier switch to the same run left pods with the same labels
            seen.promotion_pods = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == jname]

    async def _observe(self, key: Key, body: dict[str, Any]) -> Observed:
        """What `decide` needs of one SFTJob: nothing beyond its spec when the spec is invalid or its run finished;
        the references, the warm-start source and the validation Job while the run has no training Job yet."""
        namespace, name = key
        meta = body["metadata"]
        spec, problems = None, []
        try:
            spec = api.SFTJobSpec.model_validate(body.get("spec") or {})
        except ValidationError as e:
            problems = api.error_lines(e, "spec.")
        seen = Observed(namespace=namespace, name=name, generation=meta.get("generation"),
                        body=body, spec=spec, problems=problems, status=copy.deepcopy(body.get("status") or {}),
                        now=now(), settings=self.settings, progress=self.readings.get(key))
        if spec is None:
            return seen
        rid = render.run_id(spec)
        recorded = (seen.status.get("run") or {}).get("id") == rid
        if recorded and seen.status.get("phase") in lifecycle.TERMINAL and \
                not policy.judged_again(seen.status, seen.generation):
            return seen
        jname = names.job_name(name, rid)
        seen.job = self.cache.jobs.get((namespace, jname))
        if seen.job is None and recorded:
            # The status names this run but its Job is not cached: a restart (watches fill in any order). Ask
            # before creating anything. (An unrecorded run's create answers 409 if its Job exists.)
            seen.job = await self._read_job(namespace, jname)
        if seen.job is None:
            seen.missing = await self._missing_reference(namespace, spec)
            if spec.warm_start is not None and spec.warm_start.sft_job:
                seen.warm_source = self.cache.sftjobs.get((namespace, spec.warm_start.sft_job))
            validated = recorded and (seen.status.get("run") or {}).get("validated")
            if spec.validation.enabled and not validated and seen.missing is None:
                vname = names.validation_job_name(name, rid)
                seen.validation_job = self.cache.jobs.get((namespace, vname)) or await self._read_job(namespace, vname)
                if seen.validation_job is not None:
                    seen.validation_pods = await self._pods(namespace, name, rid, "validation", seen.validation_job)
                    seen.validation_queue = await self._queue_view(seen.validation_job, spec.validation.queue_name,
                                                                   False)
            return seen
        seen.pods = await self._pods(namespace, name, rid, "trainer", seen.job)
        seen.queue = await self._queue_view(seen.job, names.job_queue(seen.job, spec), spec.suspend)
        return seen

    async def _read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        job = await self.call(self.kube.read_job, namespace, name)
        if job is not None:
            job = self.cache.jobs[(namespace, name)] = slim(job)
        return job

    async def _pods(self, namespace: str, name: str, rid: str, component: str,
                    job: dict[str, Any]) -> list[dict[str, Any]]:
        """A run's pods of one component, from the cache; from the API server when its Job finished and no cached
        pod has the result yet (a restart: watches fill in any order, and the result is in that pod)."""
        pods = self.cache.run_pods(namespace, name, rid, component)
        conditions = conditions_of(job)
        finished = any(holds(conditions, c) for c in ("Complete", "SuccessCriteriaMet", "Failed"))
        if finished and not any(lifecycle.termination_message(p)[0] for p in pods):
            listed = await self.call(self.kube.list_pods, namespace, f"{names.SFTJOB_LABEL}={name},"
                                                                     f"{names.RUN_LABEL}={rid},"
                                                                     f"{names.COMPONENT_LABEL}={component}")
            pods = [slim(p) for p in listed]
        return pods

    async def _missing_reference(self, namespace: str, spec: api.SFTJobSpec) -> tuple[str, str] | None:
        for check in refs.references(spec):
            found = await self.call(self.kube.exists, check[0], namespace, check[1])
            missing = refs.missing_reference(namespace, check, found)
            if missing is not None:
                return missing
        return None

    async def _queue_view(self, job: dict[str, Any], queue: str | None, suspend: bool) -> QueueView | None:
        """Kueue's view of a Job it holds suspended (or of one spec.suspend stops): its Workload, ClusterQueue, place
        in the queue, preemptor."""
        if not kueue.worth_reading(job, queue, suspend):
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
            if kueue.in_line(workload):
                pending = await self.call(self.kube.pending_workloads, namespace, queue)
                view.position = kueue.position_of(pending, workload)
            uid = kueue.preemptor_job_uid(workload)
            if uid:
                view.preemptor = next((f"SFTJob {ns}/{(j['metadata'].get('labels') or {})[names.SFTJOB_LABEL]}"
                                       for (ns, _), j in self.cache.jobs.items() if j["metadata"].get("uid") == uid
                                       and names.SFTJOB_LABEL in (j["metadata"].get("labels") or {})), None)
        return view
