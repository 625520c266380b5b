"""The Validating phase: a CPU-only Job checks a run before the training Job asks for a GPU.

These tests play the validation Job's controller and kubelet by hand; tests/e2e runs the real trainer in it."""

import kubernetes_validate

from harness.apiserver import SFTJOBS
from harness.cluster import PLAN, apply, condition, finish, obj, objs, requests, sftjob, status_of, wait_for
from sftop import api, render


def validating(**spec):
    return sftjob(**{"validation": {"enabled": True}, **spec})


def training_jobs(emu):
    return [j for j in objs(emu, "batch/v1/jobs") if j["metadata"]["labels"][render.COMPONENT_LABEL] == "trainer"]


async def test_a_new_run_validates_on_a_cpu_before_any_gpu_job(apiserver, operator):
    await apply(apiserver, validating(resources={"gpus": 2, "nodeSelector": {"nvidia.com/gpu.product": "H100"},
                                                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}))
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    rid = render.run_id(api.SFTJobSpec.model_validate(obj(apiserver, SFTJOBS, "chat")["spec"]))
    assert job["metadata"]["name"] == f"chat-v{rid[:7]}"
    kubernetes_validate.validate(job, "1.32.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][-1] == "--validate"
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}, "no GPU for validation"
    # the training pod's placement (a WaitForFirstConsumer claim binds where the validation pod lands), no priority
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "priorityClassName" not in pod
    assert job["spec"]["suspend"] is False and render.QUEUE_LABEL not in job["metadata"]["labels"]
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Validating" and status_of(apiserver))
    assert condition(status, "Validated")["status"] == "Unknown"
    assert status["run"]["validationJobName"] == f"chat-v{rid[:7]}"

    await finish(apiserver, job, 0, {"status": "Validated", "plan": PLAN})
    status = await wait_for(lambda: status_of(apiserver).get("plan") and training_jobs(apiserver)
                            and status_of(apiserver))
    assert status["plan"] == PLAN and status["run"]["validated"] is True
    assert condition(status, "Validated")["status"] == "True"
    assert training_jobs(apiserver)[0]["metadata"]["name"] == f"chat-{rid}"
    # events are posted after the status write that records the transition, off the reconcile path
    reasons = await wait_for(lambda: (r := [e["reason"] for e in objs(apiserver, "v1/events")
                                            if e["involvedObject"]["name"] == "chat"]) and "Validated" in r and r)
    assert "Validating" in reasons and "Validated" in reasons


async def test_a_data_error_fails_the_run_during_validation_with_the_trainers_reason(apiserver, operator):
    await apply(apiserver, validating())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    message = {"status": "Failed", "exitCode": 65, "reason": "InvalidData",
               "message": "line 3 of tasks.jsonl: not valid JSON"}
    await finish(apiserver, job, 65, message)
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Failed" and status_of(apiserver))
    assert condition(status, "Failed")["reason"] == "InvalidData"
    assert status["message"] == "line 3 of tasks.jsonl: not valid JSON"
    assert condition(status, "Validated")["status"] == "False"
    assert not training_jobs(apiserver)
    posts = [r for r in requests(apiserver, "POST", "/jobs")]
    assert len(posts) == 1, "only the validation Job was ever created"


async def test_a_run_that_cannot_fit_its_gpu_fails_before_queueing(apiserver, operator):
    await apply(apiserver, validating(queueName="team-a", resources={"gpuMemory": "8Gi"}))
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    plan = {**PLAN, "memory": {**PLAN["memory"], "gpuMemory": 8.0, "gpuMemorySource": "spec.resources.gpuMemory 8Gi",
                               "fits": False, "wouldFit": ["method: qlora"]}}
    await finish(apiserver, job, 0, {"status": "Validated", "plan": plan})
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Failed" and status_of(apiserver))
    assert condition(status, "Failed")["reason"] == "InsufficientGPUMemory"
    assert "12.5 GiB" in status["message"] and "would fit: method: qlora" in status["message"]
    assert status["plan"]["memory"]["fits"] is False
    assert not training_jobs(apiserver)


async def test_validation_off_creates_the_training_job_at_once(apiserver, operator):
    await apply(apiserver, sftjob(validation={"enabled": False}))
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    assert job["metadata"]["labels"][render.COMPONENT_LABEL] == "trainer"
    assert len(objs(apiserver, "batch/v1/jobs")) == 1


async def test_a_suspended_run_still_validates_and_shows_its_plan(apiserver, operator):
    await apply(apiserver, validating(suspend=True))
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    await finish(apiserver, job, 0, {"status": "Validated", "plan": PLAN})
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Suspended" and status_of(apiserver))
    assert status["plan"]["totalSteps"] == 10
    assert training_jobs(apiserver)[0]["spec"]["suspend"] is True
