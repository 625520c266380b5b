"""The Kueue stand-in (tests/harness/kueue.py) does what Kueue's controllers do to queued Jobs: Workloads, quota,
admission, the reasons and messages of pending Workloads, the visibility API, preemption and requeueing."""

from harness.apiserver import KUEUE_GROUP, KUEUE_VERSION
from harness.cluster import NS, job_status, make_pod, obj, objs, pod_status, running, wait_for
from harness.kueue import JOB_UID_LABEL, condition

WORKLOADS = f"{KUEUE_GROUP}/{KUEUE_VERSION}/workloads"


def job(name, gpus=1, queue="team-a", priority=None):
    labels = {"kueue.x-k8s.io/queue-name": queue, "app": name}
    if priority:
        labels["kueue.x-k8s.io/priority-class"] = priority
    container = {"name": "trainer", "image": "trainer",
                 "resources": {"requests": {"cpu": "1", "nvidia.com/gpu": str(gpus)},
                               "limits": {"cpu": "1", "nvidia.com/gpu": str(gpus)}}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"suspend": True, "parallelism": 1, "completions": 1, "template": {
                "metadata": {"labels": {"app": name}}, "spec": {"restartPolicy": "Never", "containers": [container]}}}}


async def submit(emu, body):
    resp = await emu.post(f"/apis/batch/v1/namespaces/{NS}/jobs", json=body)
    assert resp.status == 201, await resp.text()
    return await resp.json()


def workload_of(emu, j):
    return next((w for w in objs(emu, WORKLOADS) if w["metadata"]["labels"].get(JOB_UID_LABEL)
                 == j["metadata"]["uid"]), None)


def cond(emu, j, kind):
    w = workload_of(emu, j)
    return condition(w, kind) if w else None


def suspended(emu, j):
    return obj(emu, "batch/v1/jobs", j["metadata"]["name"])["spec"]["suspend"]


async def gpu_queue(kueue, gpus="2"):
    await kueue.queue("gpus", {"a100": {"cpu": "8", "nvidia.com/gpu": gpus}}, [(NS, "team-a")])


async def test_a_queued_job_gets_a_workload_and_is_admitted_when_it_fits(apiserver, kueue):
    await gpu_queue(kueue)
    await kueue.priority_class("high", 1000)
    j = await submit(apiserver, job("a", gpus=2, priority="high"))
    w = await wait_for(lambda: workload_of(apiserver, j))
    assert w["metadata"]["name"].startswith("job-a-") and len(w["metadata"]["name"]) == len("job-a-") + 5
    owner = w["metadata"]["ownerReferences"][0]
    assert owner["controller"] is True and (owner["kind"], owner["uid"]) == ("Job", j["metadata"]["uid"])
    assert w["spec"]["queueName"] == "team-a" and w["spec"]["podSets"][0]["name"] == "main"
    assert (w["spec"]["priority"], w["spec"]["priorityClassName"]) == (1000, "high")
    await wait_for(lambda: not suspended(apiserver, j))
    w = workload_of(apiserver, j)
    assert condition(w, "QuotaReserved")["message"] == "Quota reserved in ClusterQueue gpus"
    assert condition(w, "Admitted")["status"] == "True"
    assert w["status"]["admission"]["clusterQueue"] == "gpus"
    assert w["status"]["admission"]["podSetAssignments"][0]["flavors"]["nvidia.com/gpu"] == "a100"


async def test_a_job_that_does_not_fit_waits_with_kueues_message_and_position(apiserver, kueue):
    await gpu_queue(kueue)
    first = await submit(apiserver, job("a", gpus=2))
    await wait_for(lambda: not suspended(apiserver, first))
    second = await submit(apiserver, job("b", gpus=1))
    third = await submit(apiserver, job("c", gpus=1))
    waiting = await wait_for(lambda: (cond(apiserver, third, "QuotaReserved") or {}).get("reason") == "Pending"
                             and cond(apiserver, third, "QuotaReserved"))
    assert waiting["status"] == "False"
    assert waiting["message"] == ("couldn't assign flavors to pod set main: insufficient unused quota for "
                                  "nvidia.com/gpu in flavor a100, 1 more needed")
    assert suspended(apiserver, second) and suspended(apiserver, third)
    resp = await apiserver.get(f"/apis/visibility.kueue.x-k8s.io/{KUEUE_VERSION}/namespaces/{NS}/localqueues/"
                               f"team-a/pendingworkloads")
    items = (await resp.json())["items"]
    assert [(i["metadata"]["name"], i["positionInClusterQueue"], i["positionInLocalQueue"]) for i in items] == [
        (workload_of(apiserver, second)["metadata"]["name"], 0, 0),
        (workload_of(apiserver, third)["metadata"]["name"], 1, 1)]


async def test_more_than_the_queue_can_ever_hold_and_a_missing_local_queue(apiserver, kueue):
    await gpu_queue(kueue)
    big = await submit(apiserver, job("big", gpus=4))
    message = await wait_for(lambda: (cond(apiserver, big, "QuotaReserved") or {}).get("message"))
    assert message == ("couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor "
                       "a100, request > maximum capacity (4 > 2)")
    lost = await submit(apiserver, job("lost", queue="nowhere"))
    reserved = await wait_for(lambda: cond(apiserver, lost, "QuotaReserved"))
    assert (reserved["reason"], reserved["message"]) == ("Inadmissible", "LocalQueue nowhere doesn't exist")


async def test_a_higher_priority_job_preempts_and_the_preempted_one_is_requeued_then_readmitted(apiserver, kueue):
    await gpu_queue(kueue)
    await kueue.priority_class("low", 10)
    await kueue.priority_class("high", 1000)
    low = await submit(apiserver, job("low", gpus=2, priority="low"))
    await wait_for(lambda: not suspended(apiserver, low))
    await job_status(apiserver, low, {"active": 1})
    pod = await make_pod(apiserver, low)
    await pod_status(apiserver, pod, running())
    high = await submit(apiserver, job("high", gpus=1, priority="high"))
    evicted = await wait_for(lambda: (cond(apiserver, low, "Evicted") or {}).get("status") == "True"
                             and cond(apiserver, low, "Evicted"))
    w_high = workload_of(apiserver, high)
    assert evicted["reason"] == "Preempted"
    assert evicted["message"] == (f"Preempted to accommodate a workload (UID: {w_high['metadata']['uid']}, JobUID: "
                                  f"{high['metadata']['uid']}) due to prioritization in the ClusterQueue; preemptor "
                                  f"path: /gpus; preemptee path: /gpus")
    assert cond(apiserver, low, "Preempted")["reason"] == "InClusterQueue"
    await wait_for(lambda: suspended(apiserver, low))
    assert cond(apiserver, low, "QuotaReserved")["status"] == "True", "quota is held until the pod is gone"
    assert suspended(apiserver, high)
    # the Job controller stops the suspended Job's pod
    await apiserver.delete(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}")
    await job_status(apiserver, low, {"active": 0})
    await wait_for(lambda: cond(apiserver, low, "Requeued")["status"] == "True")
    assert cond(apiserver, low, "QuotaReserved")["status"] == "False"
    assert workload_of(apiserver, low)["status"].get("admission") is None
    await wait_for(lambda: not suspended(apiserver, high))
    assert suspended(apiserver, low) and cond(apiserver, low, "Evicted")["status"] == "True"
    # the preemptor finishes: its quota comes back and the preempted Job is admitted again
    await job_status(apiserver, high, {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-22T10:05:00Z"}]})
    await wait_for(lambda: cond(apiserver, high, "Finished"))
    await wait_for(lambda: not suspended(apiserver, low))
    previously = cond(apiserver, low, "Evicted")
    assert previously["status"] == "False" and previously["message"].startswith("Previously: Preempted to")
    assert cond(apiserver, low, "Preempted")["status"] == "False"


async def test_equal_priority_never_preempts(apiserver, kueue):
    await gpu_queue(kueue)
    first = await submit(apiserver, job("first", gpus=2))
    await wait_for(lambda: not suspended(apiserver, first))
    second = await submit(apiserver, job("second", gpus=2))
    await wait_for(lambda: cond(apiserver, second, "QuotaReserved"))
    assert cond(apiserver, first, "Evicted") is None and suspended(apiserver, second)


async def test_an_admitted_job_suspended_by_someone_else_is_started_again_and_deactivation_stops_it(apiserver,
                                                                                                   kueue):
    await gpu_queue(kueue)
    j = await submit(apiserver, job("a"))
    await wait_for(lambda: not suspended(apiserver, j))
    path = f"/apis/batch/v1/namespaces/{NS}/jobs/a"
    await apiserver.patch(path, json={"spec": {"suspend": True}},
                          headers={"Content-Type": "application/merge-patch+json"})
    await wait_for(lambda: not suspended(apiserver, j))  # the jobframework reconciler starts it again
    w = workload_of(apiserver, j)
    await apiserver.patch(f"/apis/{KUEUE_GROUP}/{KUEUE_VERSION}/namespaces/{NS}/workloads/{w['metadata']['name']}",
                          json={"spec": {"active": False}}, headers={"Content-Type": "application/merge-patch+json"})
    await wait_for(lambda: suspended(apiserver, j))
    assert (cond(apiserver, j, "Evicted")["reason"], cond(apiserver, j, "Evicted")["message"]) == \
        ("Deactivated", "The workload is deactivated")
    await job_status(apiserver, j, {"active": 0})
    await wait_for(lambda: cond(apiserver, j, "QuotaReserved")["status"] == "False")
    await apiserver.patch(f"/apis/{KUEUE_GROUP}/{KUEUE_VERSION}/namespaces/{NS}/workloads/{w['metadata']['name']}",
                          json={"spec": {"active": True}}, headers={"Content-Type": "application/merge-patch+json"})
    await wait_for(lambda: not suspended(apiserver, j))
    assert cond(apiserver, j, "Requeued")["reason"] == "Reactivated"
