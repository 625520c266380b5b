"""An SFTJob's run: the children it gets, and the status through Pending, Running and Succeeded or Failed."""

import json

import kubernetes_validate

from harness.apiserver import SFTJOBS
from harness.cluster import (NS, apply, condition, job_status, make_pod, obj, objs, oom_killed, pod_status, running,
                             sftjob, status_of, terminated, wait_for)
from sftop import api, render


async def test_valid_sftjob_gets_its_run_children(apiserver, operator):
    resp = await apply(apiserver, sftjob(hubTokenSecret=None))
    assert resp.status == 201
    job = await wait_for(lambda: objs(apiserver, "batch/v1/jobs"))
    job = job[0]
    spec = api.SFTJobSpec.model_validate(obj(apiserver, SFTJOBS, "chat")["spec"])
    rid = render.run_id(spec)
    assert job["metadata"]["name"] == f"chat-{rid}"
    owner = obj(apiserver, SFTJOBS, "chat")["metadata"]["uid"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == owner
    config = obj(apiserver, "v1/configmaps", f"chat-{rid}")
    assert config["metadata"]["ownerReferences"][0]["uid"] == owner
    assert json.loads(config["data"]["config.json"])["run"] == {"id": rid, "sftjob": "chat", "namespace": NS}
    claim = obj(apiserver, "v1/persistentvolumeclaims", "adapters")
    assert claim and "ownerReferences" not in claim["metadata"], "output must not be owned by the SFTJob"
    kubernetes_validate.validate(job, "1.32.0", strict=True)
    status = await wait_for(lambda: status_of(apiserver).get("run") and status_of(apiserver))
    assert status["phase"] == "Pending" and status["run"]["jobName"] == f"chat-{rid}"
    assert status["run"]["outputPath"] == f"adapters:{NS}/chat/{rid}"
    assert status["model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert condition(status, "Accepted")["status"] == "True"


async def test_run_walks_pending_running_succeeded_with_the_result(apiserver, operator):
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    pod = await make_pod(apiserver, job)
    await job_status(apiserver, job, {"active": 1, "startTime": "2026-11-22T10:00:00Z"})
    await pod_status(apiserver, pod, {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]})
    status = await wait_for(lambda: "Insufficient" in status_of(apiserver).get("message", "") and status_of(apiserver))
    assert status["phase"] == "Pending"

    await pod_status(apiserver, pod, running())
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Running" and status_of(apiserver))
    assert status["run"]["startTime"] == "2026-11-22T10:00:00Z" and condition(status, "Running")["status"] == "True"

    message = {"status": "Succeeded", "steps": 10, "trainLoss": 1.25, "evalLoss": 1.5, "runtimeSeconds": 42.0,
               "trainableParameters": 1000, "totalParameters": 50000, "trainedTokens": 12345, "adapterPath": "adapter"}
    await pod_status(apiserver, pod, terminated(0, json.dumps(message)))
    await job_status(apiserver, job, {"active": 0, "succeeded": 1, "completionTime": "2026-11-22T10:05:00Z",
                                      "conditions": [{"type": "Complete", "status": "True",
                                                      "lastTransitionTime": "2026-11-22T10:05:00Z"}]})
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Succeeded" and status_of(apiserver))
    rid = status["run"]["id"]
    assert status["result"] == {"adapterPath": f"adapters:{NS}/chat/{rid}/adapter", "trainLoss": 1.25, "evalLoss": 1.5,
                                "steps": 10, "runtimeSeconds": 42.0, "trainableParameters": 1000,
                                "totalParameters": 50000, "trainedTokens": 12345, "gpuSeconds": 300.0}
    assert status["run"]["completionTime"] == "2026-11-22T10:05:00Z" and status["run"]["attempts"] == 1
    assert status["progress"]["percent"] == 100
    assert condition(status, "Succeeded")["status"] == "True" and condition(status, "Running")["status"] == "False"
    # events are posted after the status write that records the transition, off the reconcile path
    events = await wait_for(lambda: (found := [e for e in objs(apiserver, "v1/events")
                                               if e["involvedObject"]["name"] == "chat"])
                            and "Succeeded" in [e["reason"] for e in found] and found)
    reasons = [e["reason"] for e in events]
    assert "Unschedulable" in reasons and "Training" in reasons and "Succeeded" in reasons


async def test_oom_killed_pod_ends_failed_with_reason_oomkilled(apiserver, operator):
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    await oom_killed(apiserver, job)
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Failed" and status_of(apiserver))
    failed = condition(status, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "OOMKilled"
    assert "spec.resources.memory" in status["message"]


async def test_trainer_data_error_fails_with_its_reason_and_message(apiserver, operator):
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    pod = await make_pod(apiserver, job)
    message = {"status": "Failed", "exitCode": 65, "reason": "InvalidData",
               "message": "dataset file train.jsonl: line 3: not valid JSON"}
    await pod_status(apiserver, pod, terminated(65, json.dumps(message)))
    await job_status(apiserver, job, {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 65",
         "lastTransitionTime": "2026-11-22T10:05:00Z"}]})
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Failed" and status_of(apiserver))
    assert condition(status, "Failed")["reason"] == "InvalidData"
    assert "line 3" in status["message"]


async def test_a_stale_event_never_turns_succeeded_back_into_running(apiserver, operator):
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    pod = await make_pod(apiserver, job)
    await pod_status(apiserver, pod, terminated(0, json.dumps({"status": "Succeeded", "steps": 10})))
    await job_status(apiserver, job, {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-22T10:05:00Z"}]})
    await wait_for(lambda: status_of(apiserver).get("phase") == "Succeeded")
    # a late, re-delivered view of the world: the pod running, the Job without its Complete condition
    await pod_status(apiserver, pod, running())
    await job_status(apiserver, job, {"succeeded": 0, "active": 1, "conditions": []})
    operator.enqueue(NS, "chat")
    import asyncio

    await asyncio.sleep(1.0)
    assert status_of(apiserver)["phase"] == "Succeeded"
