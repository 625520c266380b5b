"""A platform team's queues: the operator reads Kueue's Workload to say why a run waits (which ClusterQueue and
flavor, how much is missing, its place in the queue, what cannot be admitted), sets the Kueue priority, and shows a
preemption as Queued/Preempted, counted, never as a failure. Kueue is the stand-in of tests/harness/kueue.py."""

import asyncio
import json

from harness.apiserver import KUEUE_GROUP, KUEUE_VERSION
from harness.cluster import (NS, apply, condition, finish, job_status, make_pod, obj, objs, patch, pod_status,
                             running, sftjob, status_of, wait_for)
from harness.kueue import JOB_UID_LABEL
from sftop import render

PATH = f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs"
WORKLOADS = f"{KUEUE_GROUP}/{KUEUE_VERSION}/workloads"


def queued(name="chat", gpus=1, priority=None, **pod):
    extra = {"workloadPriorityClassName": priority} if priority else {}
    return sftjob(name, queueName="team-a", resources={"gpus": gpus, "cpu": "4", "memory": "16Gi", **pod}, **extra)


def training_job(emu, name="chat"):
    return next((j for j in objs(emu, "batch/v1/jobs") if j["metadata"]["labels"][render.SFTJOB_LABEL] == name),
                None)


def reason(emu, name="chat"):
    return (condition(status_of(emu, name), "Queued") or {}).get("reason")


def explain(emu, name="chat"):
    return lambda: json.dumps(status_of(emu, name))[:1200]


async def test_a_queued_run_names_the_missing_quota_and_its_place_in_the_queue(apiserver, kueue, operator):
    await kueue.queue("gpus", {"a100": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "2"}}, [(NS, "team-a")])
    await apply(apiserver, queued("first", gpus=2))
    await wait_for(lambda: status_of(apiserver, "first").get("phase") == "Pending", timeout=20,
                   explain=explain(apiserver, "first"))
    await apply(apiserver, queued("second", gpus=1))
    await apply(apiserver, queued("third", gpus=1))
    # Kueue writes why the Workload waits after creating it; the operator reads it at the run's next reconcile.
    status = await wait_for(lambda: reason(apiserver, "third") == "WaitingForQuota"
                            and "unused quota" in status_of(apiserver, "third")["message"]
                            and "2nd" in status_of(apiserver, "third")["message"] and status_of(apiserver, "third"),
                            timeout=20, explain=explain(apiserver, "third"))
    assert status["phase"] == "Queued"
    assert status["message"] == ("waiting for quota in ClusterQueue gpus (LocalQueue team-a): couldn't assign flavors "
                                 "to pod set main: insufficient unused quota for nvidia.com/gpu in flavor a100, 1 more "
                                 "needed; 2nd in its ClusterQueue, 2nd in its LocalQueue")
    assert condition(status, "Reconciling")["reason"] == "WaitingForQuota"
    workload = next(w for w in objs(apiserver, WORKLOADS)
                    if w["metadata"]["labels"][JOB_UID_LABEL] == training_job(apiserver, "third")["metadata"]["uid"])
    assert status["run"]["workloadName"] == workload["metadata"]["name"]
    # The operator writes the status, then posts the event.
    await wait_for(lambda: any(e["reason"] == "WaitingForQuota" and e["type"] == "Normal"
                               for e in objs(apiserver, "v1/events") if e["involvedObject"]["name"] == "third"))


async def test_a_run_kueue_cannot_admit_says_why_and_warns(apiserver, kueue, operator):
    await kueue.queue("gpus", {"a100": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "2"}}, [(NS, "other")])
    await apply(apiserver, queued())
    status = await wait_for(lambda: reason(apiserver) == "Inadmissible" and status_of(apiserver),
                            timeout=20, explain=explain(apiserver))
    assert status["message"] == "Kueue cannot admit the run (Inadmissible): LocalQueue team-a doesn't exist " \
                                "(LocalQueue team-a)"
    # The operator writes the status, then posts the event.
    events = await wait_for(lambda: [e for e in objs(apiserver, "v1/events") if e["reason"] == "Inadmissible"])
    assert events[0]["type"] == "Warning"
    assert training_job(apiserver)["spec"]["suspend"] is True


async def test_without_kueue_a_queued_run_says_kueue_is_missing(apiserver, operator):
    await apply(apiserver, queued())
    status = await wait_for(lambda: reason(apiserver) == "KueueNotInstalled" and status_of(apiserver),
                            explain=explain(apiserver))
    assert "serves no Kueue API" in status["message"] and "remove spec.queueName" in status["message"]
    await asyncio.sleep(0.5)
    assert training_job(apiserver)["spec"]["suspend"] is True, "only Kueue lets a queued Job start"


async def test_the_kueue_priority_is_a_label_on_the_job_and_follows_the_spec_while_queued(apiserver, kueue, operator):
    await kueue.queue("gpus", {"a100": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "0"}}, [(NS, "team-a")])
    await kueue.priority_class("batch", 10)
    await kueue.priority_class("urgent", 1000)
    await apply(apiserver, queued(priority="batch", priorityClassName="gpu-pods"))
    job = await wait_for(lambda: training_job(apiserver))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "batch"
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "gpu-pods", "the pod priority stays apart"
    await wait_for(lambda: reason(apiserver) == "WaitingForQuota", timeout=20, explain=explain(apiserver))
    rid = status_of(apiserver)["run"]["id"]
    await patch(apiserver, f"{PATH}/chat", {"spec": {"workloadPriorityClassName": "urgent"}})
    await wait_for(lambda: training_job(apiserver)["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "urgent")
    workload = await wait_for(lambda: next((w for w in objs(apiserver, WORKLOADS) if w["spec"].get("priority") == 1000),
                                           None), timeout=20)
    assert workload["spec"]["priorityClassName"] == "urgent"
    assert status_of(apiserver)["run"]["id"] == rid and len(objs(apiserver, "batch/v1/jobs")) == 1, \
        "a new priority is not a new run"


async def test_preemption_is_queued_preempted_counted_and_resumes(apiserver, kueue, operator):
    await kueue.queue("gpus", {"a100": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "1"}}, [(NS, "team-a")])
    await kueue.priority_class("batch", 10)
    await kueue.priority_class("urgent", 1000)
    await apply(apiserver, queued("nightly", priority="batch"))
    job = await wait_for(lambda: (j := training_job(apiserver, "nightly")) and not j["spec"]["suspend"] and j)
    await job_status(apiserver, job, {"active": 1, "startTime": "2026-11-22T10:00:00Z"})
    pod = await make_pod(apiserver, job)
    await pod_status(apiserver, pod, running())
    await wait_for(lambda: status_of(apiserver, "nightly").get("phase") == "Running")
    assert status_of(apiserver, "nightly")["run"]["attempts"] == 1

    await apply(apiserver, queued("urgent", priority="urgent"))
    status = await wait_for(lambda: reason(apiserver, "nightly") == "Preempted" and status_of(apiserver, "nightly"),
                            timeout=20, explain=explain(apiserver, "nightly"))
    assert status["phase"] == "Queued" and condition(status, "Failed") is None
    assert status["message"].startswith(f"preempted by Kueue for SFTJob {NS}/urgent: Preempted to accommodate a "
                                        "workload (UID: ")
    assert "the trainer saved a checkpoint and the run resumes from it" in status["message"]
    assert status["run"]["preemptions"] == 1 and status["run"]["lastPreemptionTime"]
    # the Job controller stops the suspended Job's pod (SIGTERM: the trainer checkpoints and exits 'Interrupted')
    assert obj(apiserver, "batch/v1/jobs", job["metadata"]["name"])["spec"]["suspend"] is True
    await apiserver.delete(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}")
    await job_status(apiserver, job, {"active": 0})
    urgent = await wait_for(lambda: (j := training_job(apiserver, "urgent")) and not j["spec"]["suspend"] and j)
    await asyncio.sleep(0.5)
    status = status_of(apiserver, "nightly")
    assert reason(apiserver, "nightly") == "Preempted" and status["run"]["preemptions"] == 1, "counted once"

    await finish(apiserver, urgent, 0, {"status": "Succeeded", "steps": 5})
    await wait_for(lambda: not obj(apiserver, "batch/v1/jobs", job["metadata"]["name"])["spec"]["suspend"])
    await job_status(apiserver, job, {"active": 1})
    second = await make_pod(apiserver, job, suffix="x9y8z")
    await pod_status(apiserver, second, running())
    status = await wait_for(lambda: status_of(apiserver, "nightly").get("phase") == "Running"
                            and status_of(apiserver, "nightly"))
    assert status["message"] == "the trainer is running (resumed from its checkpoint after 1 preemption(s) by Kueue)"
    assert status["run"]["attempts"] == 2 and status["run"]["preemptions"] == 1
    # the event is posted after the status write that records the transition
    await wait_for(lambda: "Preempted" in [e["reason"] for e in objs(apiserver, "v1/events")
                                           if e["involvedObject"]["name"] == "nightly"])


async def test_a_kueue_read_that_fails_leaves_the_run_queued_with_the_plain_reason(apiserver, kueue, operator):
    await kueue.queue("gpus", {"a100": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "0"}}, [(NS, "team-a")])
    apiserver.fail_next("GET", "/workloads", status=403, times=1000)
    await apply(apiserver, queued())
    await wait_for(lambda: status_of(apiserver).get("phase") == "Queued", explain=explain(apiserver))
    assert reason(apiserver) == "WaitingForAdmission" and operator.controller.errors == 0
