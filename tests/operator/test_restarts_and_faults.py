"""Operator restarts, re-delivered events and API errors never create a duplicate Job or lose status."""

import asyncio
import json

from harness.cluster import (NS, Operator, apply, job_status, make_pod, objs, pod_status, requests, running,
                             sftjob, status_of, terminated, wait_for)


async def test_restart_mid_run_creates_no_duplicate_and_status_continues(apiserver, operator):
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    pod = await make_pod(apiserver, job)
    await pod_status(apiserver, pod, running())
    await wait_for(lambda: status_of(apiserver).get("phase") == "Running")
    run = status_of(apiserver)["run"]

    await operator.stop()  # as a crash would: no cleanup
    # the run finishes while no operator watches
    await pod_status(apiserver, pod, terminated(0, json.dumps({"status": "Succeeded", "steps": 10, "trainLoss": 0.5,
                                                                "adapterPath": "adapter"})))
    await job_status(apiserver, job, {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-22T10:05:00Z"}]})
    replacement = Operator(apiserver)
    await replacement.start()
    try:
        status = await wait_for(lambda: status_of(apiserver).get("phase") == "Succeeded" and status_of(apiserver))
        assert status["run"]["id"] == run["id"] and status["result"]["trainLoss"] == 0.5
        assert len(objs(apiserver, "batch/v1/jobs")) == 1
        assert len(requests(apiserver, "POST", "/jobs")) == 1, "the restarted operator created the Job again"
    finally:
        await replacement.stop()


async def test_restart_before_the_job_is_seen_adopts_the_existing_job(apiserver, operator):
    await apply(apiserver, sftjob())
    await wait_for(lambda: objs(apiserver, "batch/v1/jobs"))
    await operator.stop()
    # a new operator with an empty cache; an event re-delivered before the Job's own: the create answers 409
    replacement = Operator(apiserver)
    await replacement.start()
    try:
        replacement.loop.call_soon_threadsafe(replacement.controller.jobs.clear)
        replacement.enqueue(NS, "chat")
        await asyncio.sleep(1.0)
        assert len(objs(apiserver, "batch/v1/jobs")) == 1
        assert status_of(apiserver)["run"]["jobName"] == objs(apiserver, "batch/v1/jobs")[0]["metadata"]["name"]
    finally:
        await replacement.stop()


async def test_server_errors_are_retried_without_duplicates(apiserver, operator):
    apiserver.fail_next("POST", "/jobs", 500, times=2)
    apiserver.fail_next("PATCH", "/sftjobs/chat/status", 503, times=2)
    await apply(apiserver, sftjob())
    await wait_for(lambda: objs(apiserver, "batch/v1/jobs"), timeout=20)
    await wait_for(lambda: status_of(apiserver).get("run"), timeout=20)
    await asyncio.sleep(0.5)
    assert len(objs(apiserver, "batch/v1/jobs")) == 1
    assert len(requests(apiserver, "POST", "/jobs")) == 3  # two injected failures, then one success


async def test_a_conflict_on_create_is_read_not_duplicated(apiserver, operator):
    apiserver.fail_next("POST", "/configmaps", 409)
    apiserver.fail_next("POST", "/jobs", 409)
    await apply(apiserver, sftjob())
    await wait_for(lambda: objs(apiserver, "batch/v1/jobs") and objs(apiserver, "v1/configmaps"), timeout=20)
    await wait_for(lambda: status_of(apiserver).get("run"), timeout=20)
    assert len(objs(apiserver, "batch/v1/jobs")) == 1
