"""A stand-in for Kueue (kubernetes-sigs/kueue) in the emulated cluster: the parts of its controllers that decide
when a queued batch/v1 Job runs, writing the same objects, fields, condition types, reasons and messages that Kueue
writes (apis/kueue/v1beta2, pkg/workload, pkg/scheduler, pkg/controller/jobframework). tests/operator/
test_kueue_stand_in.py checks each rule below.

| Kueue part | what it does here |
|---|---|
| API | serves kueue.x-k8s.io/v1beta2 Workloads, LocalQueues, ClusterQueues, ResourceFlavors and WorkloadPriorityClasses, and the visibility API's pendingworkloads of a LocalQueue (positions from 0) |
| job reconciler | a Job labelled `kueue.x-k8s.io/queue-name` gets a Workload named `job-<job>-<5 hex>`, owned by the Job (controller reference), labelled `kueue.x-k8s.io/job-uid`, with one pod set `main` (count = parallelism, the pod template), the priority of the Job's `kueue.x-k8s.io/priority-class` WorkloadPriorityClass (0 without); an admitted Workload's suspended Job is unsuspended, whoever suspended it (pkg/controller/jobframework/reconciler.go `ReconcileGenericJob`: "Job admitted, unsuspending"); a deactivated Workload (`spec.active: false`) that holds quota is evicted, Evicted True, reason `Deactivated`, "The workload is deactivated", and waits in no queue; reactivated, it gets Requeued True, reason `Reactivated`, "The workload was reactivated", and queues again (pkg/controller/core/workload_controller.go); an evicted Workload's Job is suspended, and once it has no active pod the admission is cleared (QuotaReserved False with the eviction's message, Requeued True); a finished Job's Workload gets Finished True |
| workload controller | a Workload whose LocalQueue does not exist: QuotaReserved False, reason Inadmissible, "LocalQueue <name> doesn't exist" |
| scheduler | pending Workloads by priority, then creation (BestEffortFIFO); one is admitted when its requests fit the ClusterQueue's nominal quota of one flavor less the usage of admitted Workloads: `status.admission` (clusterQueue, podSetAssignments with flavors and resourceUsage), QuotaReserved True "Quota reserved in ClusterQueue <cq>", Admitted True, and Evicted and Preempted turned False with "Previously: ..."; otherwise QuotaReserved False, reason Pending, "couldn't assign flavors to pod set main: insufficient unused quota for <resource> in flavor <flavor>, <n> more needed" (or "insufficient quota ..., request > maximum capacity (<r> > <q>)") |
| preemption | with `preemption.withinClusterQueue: LowerPriority`, a pending Workload that does not fit evicts admitted lower-priority Workloads of its ClusterQueue (lowest priority first, then the most recently admitted) until it would fit: Evicted True, reason Preempted, and Preempted True, reason InClusterQueue, both with "Preempted to accommodate a workload (UID: <uid>, JobUID: <job uid>) due to prioritization in the ClusterQueue; preemptor path: /<cq>; preemptee path: /<cq>" |

Not modelled: cohorts and borrowing, fair sharing, admission checks, partial admission, topology, node selectors
injected from flavors, requeue backoff.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import re
import sys
from typing import Any

import kmock

from harness.apiserver import KUEUE_GROUP, KUEUE_VERSION, ApiServer, _now

JOBS = kmock.resource("batch/v1/jobs")
PODS = kmock.resource("v1/pods")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
API = f"/apis/{KUEUE_GROUP}/{KUEUE_VERSION}"
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}


def quantity(text: Any) -> float:
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match, f"not a quantity: {text!r}"
    return float(match.group(1)) * UNITS.get(match.group(2), 1)


def show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def holds(obj: dict[str, Any], kind: str) -> bool:
    return (condition(obj, kind) or {}).get("status") == "True"


def set_condition(obj: dict[str, Any], kind: str, status: str, reason: str, message: str) -> list[dict[str, Any]]:
    """apimeta.SetStatusCondition: the time moves only when the status changes."""
    conditions = [dict(c) for c in (obj.get("status") or {}).get("conditions") or []]
    old = next((c for c in conditions if c["type"] == kind), None)
    new = {"type": kind, "status": status, "reason": reason, "message": message,
           "observedGeneration": obj["metadata"].get("generation", 1),
           "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == status else _now()}
    conditions = [new if c["type"] == kind else c for c in conditions] if old else conditions + [new]
    obj.setdefault("status", {})["conditions"] = conditions
    return conditions


class Kueue:
    """Kueue's controllers for the emulated cluster. Use as `async with Kueue(emu) as kueue`, then define queues
    with `queue(...)` and priorities with `priority_class(...)`."""

    def __init__(self, emu: ApiServer, interval: float = 0.1):
        self.emu, self.interval = emu, interval
        self.task: asyncio.Task | None = None
        self.admitted_order: list[str] = []  # workload uids, in the order they were admitted
        emu.install_kueue(self.pending)

    async def __aenter__(self) -> Kueue:
        self.task = asyncio.create_task(self._loop(), name="kueue")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception as e:  # Kueue keeps running; the test sees what it wrote
                print(f"kueue: {type(e).__name__}: {e}", file=sys.stderr)
            await asyncio.sleep(self.interval)

    # --------------------------------------------------------------------------------- set-up (the admin)

    async def queue(self, cluster_queue: str, quota: dict[str, dict[str, str]], local_queues: list[tuple[str, str]],
                    preemption: str = "LowerPriority") -> None:
        """A ClusterQueue with `quota` ({flavor: {resource: nominal quota}}) and LocalQueues (namespace, name)
        pointing at it."""
        resources = sorted({r for q in quota.values() for r in q})
        for flavor in quota:
            await self._create(f"{API}/resourceflavors", {"metadata": {"name": flavor}, "spec": {}})
        await self._create(f"{API}/clusterqueues", {"metadata": {"name": cluster_queue}, "spec": {
            "namespaceSelector": {}, "queueingStrategy": "BestEffortFIFO",
            "preemption": {"withinClusterQueue": preemption, "reclaimWithinCohort": "Never"},
            "resourceGroups": [{"coveredResources": resources, "flavors": [
                {"name": flavor, "resources": [{"name": r, "nominalQuota": q[r]} for r in resources if r in q]}
                for flavor, q in quota.items()]}]}})
        for namespace, name in local_queues:
            await self._create(f"{API}/namespaces/{namespace}/localqueues", {
                "metadata": {"name": name, "namespace": namespace}, "spec": {"clusterQueue": cluster_queue}})

    async def priority_class(self, name: str, value: int) -> None:
        await self._create(f"{API}/workloadpriorityclasses", {"metadata": {"name": name}, "value": value,
                                                              "description": f"{name} ({value})"})

    async def _create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        kind = {"resourceflavors": "ResourceFlavor", "clusterqueues": "ClusterQueue", "localqueues": "LocalQueue",
                "workloadpriorityclasses": "WorkloadPriorityClass", "workloads": "Workload"}[path.rsplit("/", 1)[1]]
        resp = await self.emu.post(path, json={"apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}", "kind": kind, **body})
        assert resp.status == 201, await resp.text()
        return await resp.json()

    # -------------------------------------------------------------------------------------- reading

    def _all(self, plural: str) -> list[dict[str, Any]]:
        res = kmock.resource(f"{KUEUE_GROUP}/{KUEUE_VERSION}/{plural}")
        return [copy.deepcopy(o.raw) for (r, _, _), o in list(self.emu.objects.items()) if r == res and not o.deleted]

    def _objects(self, resource: Any) -> list[dict[str, Any]]:
        return [copy.deepcopy(o.raw) for (r, _, _), o in list(self.emu.objects.items()) if r == resource
                and not o.deleted]

    def workloads(self) -> list[dict[str, Any]]:
        return self._all("workloads")

    def workload_of(self, job: dict[str, Any]) -> dict[str, Any] | None:
        uid = job["metadata"]["uid"]
        return next((w for w in self.workloads() if w["metadata"]["labels"].get(JOB_UID_LABEL) == uid), None)

    def _cluster_queue_of(self, workload: dict[str, Any]) -> dict[str, Any] | None:
        ns, name = workload["metadata"]["namespace"], workload["spec"]["queueName"]
        lq = next((q for q in self._all("localqueues") if (q["metadata"]["namespace"], q["metadata"]["name"])
                   == (ns, name)), None)
        if lq is None:
            return None
        return next((c for c in self._all("clusterqueues") if c["metadata"]["name"] == lq["spec"]["clusterQueue"]),
                    None)

    @staticmethod
    def requests(workload: dict[str, Any]) -> dict[str, float]:
        total: dict[str, float] = {}
        for ps in workload["spec"]["podSets"]:
            for c in ps["template"]["spec"]["containers"]:
                for r, q in ((c.get("resources") or {}).get("requests") or {}).items():
                    total[r] = total.get(r, 0.0) + quantity(q) * ps["count"]
        return total

    def _pending_order(self, workloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(workloads, key=lambda w: (-w["spec"].get("priority", 0), w["metadata"]["creationTimestamp"],
                                                w["metadata"]["name"]))

    def _is_pending(self, w: dict[str, Any]) -> bool:
        return not holds(w, "QuotaReserved") and not holds(w, "Finished") and w["spec"].get("active", True)

    def pending(self, namespace: str, local_queue: str) -> list[dict[str, Any]]:
        """The visibility API's answer for a LocalQueue: its pending Workloads, with positions from 0."""
        items = []
        pending = [w for w in self.workloads() if self._is_pending(w)]
        for w in pending:
            cq = self._cluster_queue_of(w)
            if cq is None or (w["metadata"]["namespace"], w["spec"]["queueName"]) != (namespace, local_queue):
                continue
            in_cq = [x for x in self._pending_order(pending) if self._cluster_queue_of(x) == cq]
            in_lq = [x for x in in_cq if (x["metadata"]["namespace"], x["spec"]["queueName"])
                     == (namespace, local_queue)]
            items.append({"metadata": {"name": w["metadata"]["name"], "namespace": namespace,
                                       "ownerReferences": w["metadata"].get("ownerReferences")},
                          "priority": w["spec"].get("priority", 0), "localQueueName": local_queue,
                          "positionInClusterQueue": [x["metadata"]["uid"] for x in in_cq].index(w["metadata"]["uid"]),
                          "positionInLocalQueue": [x["metadata"]["uid"] for x in in_lq].index(w["metadata"]["uid"])})
        return sorted(items, key=lambda i: i["positionInClusterQueue"])

    # -------------------------------------------------------------------------------------- writing

    async def _patch(self, path: str, body: dict[str, Any]) -> None:
        resp = await self.emu.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"})
        assert resp.status < 300, await resp.text()

    async def _write_status(self, w: dict[str, Any]) -> None:
        meta = w["metadata"]
        await self._patch(f"{API}/namespaces/{meta['namespace']}/workloads/{meta['name']}/status",
                          {"status": w["status"]})

    async def _suspend(self, job: dict[str, Any], suspend: bool) -> None:
        if bool(job["spec"].get("suspend")) != suspend:
            meta = job["metadata"]
            await self._patch(f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}",
                              {"spec": {"suspend": suspend}})

    # ------------------------------------------------------------------------------------- one pass

    async def sync(self) -> None:
        jobs = {j["metadata"]["uid"]: j for j in self._objects(JOBS)}
        await self._job_reconciler(jobs)
        await self._schedule(jobs)

    async def _job_reconciler(self, jobs: dict[str, dict[str, Any]]) -> None:
        by_job = {w["metadata"]["labels"].get(JOB_UID_LABEL): w for w in self.workloads()}
        for uid, job in jobs.items():
            if QUEUE_LABEL not in (job["metadata"].get("labels") or {}):
                continue
            w = by_job.get(uid)
            if w is None:
                await self._new_workload(job)
                continue
            finished = next((c for c in (job.get("status") or {}).get("conditions") or []
                             if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None)
            if finished is not None:
                if not holds(w, "Finished"):
                    set_condition(w, "Finished", "True", "Succeeded" if finished["type"] == "Complete" else "Failed",
                                  "Job finished successfully" if finished["type"] == "Complete"
                                  else finished.get("message") or "Job failed")
                    await self._write_status(w)
                continue
            priority = await self._priority(job)
            if priority != (w["spec"].get("priority", 0), w["spec"].get("priorityClassName")):
                meta = w["metadata"]
                spec = {"priority": priority[0], "priorityClassName": priority[1]}
                await self._patch(f"{API}/namespaces/{meta['namespace']}/workloads/{meta['name']}", {"spec": spec})
            activated = w["spec"].get("active", True)
            if not activated and holds(w, "QuotaReserved") and not holds(w, "Evicted"):
                set_condition(w, "Evicted", "True", "Deactivated", "The workload is deactivated")
                await self._write_status(w)
            elif activated and holds(w, "Evicted") and condition(w, "Evicted")["reason"] == "Deactivated" and \
                    not holds(w, "QuotaReserved") and (condition(w, "Requeued") or {}).get("reason") != "Reactivated":
                set_condition(w, "Requeued", "True", "Reactivated", "The workload was reactivated")
                await self._write_status(w)
            if holds(w, "Evicted"):
                await self._suspend(job, True)
                active = [p for p in self._objects(PODS) if p["metadata"].get("labels", {}).get("job-name")
                          == job["metadata"]["name"] and p.get("status", {}).get("phase") in ("Pending", "Running")]
                if holds(w, "QuotaReserved") and not active and not (job.get("status") or {}).get("active"):
                    evicted = condition(w, "Evicted")
                    set_condition(w, "Requeued", "True" if evicted["reason"] == "Preempted" else "False",
                                  evicted["reason"], evicted["message"])
                    set_condition(w, "QuotaReserved", "False", "Pending", evicted["message"])
                    set_condition(w, "Admitted", "False", "NoReservation", "The workload has no reservation")
                    w["status"]["admission"] = None
                    await self._write_status(w)
            elif holds(w, "Admitted"):
                await self._suspend(job, False)

    async def _priority(self, job: dict[str, Any]) -> tuple[int, str | None]:
        name = (job["metadata"].get("labels") or {}).get(PRIORITY_LABEL)
        if not name:
            return 0, None
        wpc = next((c for c in self._all("workloadpriorityclasses") if c["metadata"]["name"] == name), None)
        return (int(wpc["value"]), name) if wpc else (0, name)

    async def _new_workload(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        digest = hashlib.sha256(f"{meta['name']}/{meta['uid']}".encode()).hexdigest()[:5]
        priority, priority_class = await self._priority(job)
        spec: dict[str, Any] = {"queueName": meta["labels"][QUEUE_LABEL], "active": True, "priority": priority,
                                "podSets": [{"name": "main", "count": job["spec"].get("parallelism", 1),
                                             "template": copy.deepcopy(job["spec"]["template"])}]}
        if priority_class:
            spec.update(priorityClassName=priority_class, priorityClassSource="kueue.x-k8s.io/workloadpriorityclass")
        created = await self._create(f"{API}/namespaces/{meta['namespace']}/workloads", {
            "metadata": {"name": f"job-{meta['name']}-{digest}", "namespace": meta["namespace"],
                         "labels": {JOB_UID_LABEL: meta["uid"]},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": spec})
        if self._cluster_queue_of(created) is None:
            set_condition(created, "QuotaReserved", "False", "Inadmissible",
                          f"LocalQueue {spec['queueName']} doesn't exist")
            await self._write_status(created)

    # ------------------------------------------------------------------------------------ scheduler

    def _usage(self, cq: dict[str, Any], workloads: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
        """(flavor, resource) -> what admitted Workloads of `cq` use."""
        used: dict[tuple[str, str], float] = {}
        for w in workloads:
            admission = (w.get("status") or {}).get("admission") or {}
            if admission.get("clusterQueue") != cq["metadata"]["name"] or not holds(w, "QuotaReserved") \
                    or holds(w, "Finished"):
                continue
            for psa in admission.get("podSetAssignments") or []:
                for r, flavor in psa["flavors"].items():
                    used[(flavor, r)] = used.get((flavor, r), 0.0) + quantity(psa["resourceUsage"][r])
        return used

    @staticmethod
    def _fit(cq: dict[str, Any], need: dict[str, float], used: dict[tuple[str, str], float]) \
            -> tuple[str | None, str]:
        """(the flavor that fits, or None with Kueue's message why not)."""
        group = cq["spec"]["resourceGroups"][0]
        messages = []
        for r in need:
            if r not in group["coveredResources"]:
                return None, f"couldn't assign flavors to pod set main: resource {r} unavailable in ClusterQueue"
        for flavor in group["flavors"]:
            quota = {q["name"]: quantity(q["nominalQuota"]) for q in flavor["resources"]}
            short = []
            for r, n in sorted(need.items()):
                if n > quota.get(r, 0):
                    short.append(f"insufficient quota for {r} in flavor {flavor['name']}, request > maximum capacity "
                                 f"({show(n)} > {show(quota.get(r, 0))})")
                elif n > quota[r] - used.get((flavor["name"], r), 0.0):
                    more = n - (quota[r] - used.get((flavor["name"], r), 0.0))
                    short.append(f"insufficient unused quota for {r} in flavor {flavor['name']}, {show(more)} more "
                                 f"needed")
            if not short:
                return flavor["name"], ""
            messages += short
        return None, "couldn't assign flavors to pod set main: " + ", ".join(messages)

    async def _schedule(self, jobs: dict[str, dict[str, Any]]) -> None:
        workloads = self.workloads()
        for w in self._pending_order([w for w in workloads if self._is_pending(w)]):
            cq = self._cluster_queue_of(w)
            if cq is None:
                continue
            owner = (w["metadata"].get("ownerReferences") or [{}])[0].get("uid")
            if owner not in jobs:
                continue
            workloads = self.workloads()
            need = self.requests(w)
            flavor, why = self._fit(cq, need, self._usage(cq, workloads))
            if flavor is not None:
                await self._admit(w, cq, flavor, need)
                continue
            if "unused" in why and cq["spec"].get("preemption", {}).get("withinClusterQueue") == "LowerPriority":
                await self._preempt_for(w, cq, need, workloads, jobs[owner])
            if condition(w, "QuotaReserved") is None or condition(w, "QuotaReserved")["message"] != why:
                set_condition(w, "QuotaReserved", "False", "Pending", why)
                await self._write_status(w)

    async def _admit(self, w: dict[str, Any], cq: dict[str, Any], flavor: str, need: dict[str, float]) -> None:
        name = cq["metadata"]["name"]
        w.setdefault("status", {})["admission"] = {"clusterQueue": name, "podSetAssignments": [{
            "name": "main", "count": w["spec"]["podSets"][0]["count"], "flavors": {r: flavor for r in need},
            "resourceUsage": {r: show(n) for r, n in need.items()}}]}
        set_condition(w, "QuotaReserved", "True", "QuotaReserved", f"Quota reserved in ClusterQueue {name}")
        for kind in ("Evicted", "Preempted"):
            if holds(w, kind):
                set_condition(w, kind, "False", "QuotaReserved", "Previously: " + condition(w, kind)["message"])
        set_condition(w, "Admitted", "True", "Admitted", "The workload is admitted")
        await self._write_status(w)
        self.admitted_order.append(w["metadata"]["uid"])

    async def _preempt_for(self, w: dict[str, Any], cq: dict[str, Any], need: dict[str, float],
                           workloads: list[dict[str, Any]], job: dict[str, Any]) -> None:
        name = cq["metadata"]["name"]
        mine = w["spec"].get("priority", 0)
        admitted = [x for x in workloads if holds(x, "QuotaReserved") and not holds(x, "Finished")
                    and ((x.get("status") or {}).get("admission") or {}).get("clusterQueue") == name]
        if any(holds(x, "Evicted") for x in admitted):
            return  # a preemption is under way: wait for its quota
        order = {uid: i for i, uid in enumerate(self.admitted_order)}
        candidates = sorted((x for x in admitted if x["spec"].get("priority", 0) < mine),
                            key=lambda x: (x["spec"].get("priority", 0), -order.get(x["metadata"]["uid"], 0)))
        victims: list[dict[str, Any]] = []
        for victim in candidates:
            victims.append(victim)
            rest = [x for x in workloads if x["metadata"]["uid"] not in {v["metadata"]["uid"] for v in victims}]
            if self._fit(cq, need, self._usage(cq, rest))[0] is not None:
                break
        else:
            return  # preempting every lower-priority workload would not make room
        message = (f"Preempted to accommodate a workload (UID: {w['metadata']['uid']}, JobUID: "
                   f"{job['metadata']['uid']}) due to prioritization in the ClusterQueue; preemptor path: /{name}; "
                   f"preemptee path: /{name}")
        for victim in victims:
            set_condition(victim, "Evicted", "True", "Preempted", message)
            set_condition(victim, "Preempted", "True", "InClusterQueue", message)
            await self._write_status(victim)
