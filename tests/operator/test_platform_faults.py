"""The operator under a platform's faults: an API server that restarts, drops watches, throttles and lags; an
operator killed right after each write it makes; trainer pods whose progress endpoint never answers.

Invariants after each: exactly one Job per run, the status converges to the truth, no output is deleted, at most
one event per transition.
"""

import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys

import kmock
import pytest

from harness.apiserver import ApiServer
from harness.cluster import (Operator, apply, job_status, make_pod, objs, patch, pod_status, requests, running,
                             sftjob, status_of, terminated, wait_for)
from sftop import render

RESULT = {"status": "Succeeded", "steps": 10, "trainLoss": 0.5, "trainedTokens": 640, "adapterPath": "adapter"}


def trainer_jobs(emu, name="chat"):
    return [j for j in objs(emu, "batch/v1/jobs") if j["metadata"]["labels"].get(render.SFTJOB_LABEL) == name
            and j["metadata"]["labels"].get(render.COMPONENT_LABEL) == "trainer"]


async def assert_invariants(emu, name="chat"):
    def events():
        return [e for e in objs(emu, "v1/events") if e["involvedObject"]["name"] == name]

    await wait_for(events, timeout=10)  # events are posted after the status write that records them
    await asyncio.sleep(0.5)
    jobs = trainer_jobs(emu, name)
    assert len(jobs) == 1, f"{len(jobs)} Jobs for one run"
    assert not requests(emu, "DELETE", "/persistentvolumeclaims"), "the operator deleted a claim"
    assert objs(emu, "v1/persistentvolumeclaims"), "the output claim is gone"
    posted = events()
    reasons = collections.Counter(e["reason"] for e in posted)
    assert reasons and max(reasons.values()) == 1, \
        f"more than one event for a transition: {[(e['reason'], e['message']) for e in posted]}"


async def run_to_success(emu, name="chat"):
    job = (await wait_for(lambda: trainer_jobs(emu, name), timeout=30))[0]
    pod = await make_pod(emu, job)
    await pod_status(emu, pod, running())
    await job_status(emu, job, {"active": 1, "startTime": "2026-11-22T10:00:00Z"})
    await wait_for(lambda: status_of(emu, name).get("phase") == "Running", timeout=30)
    return job, pod


async def succeed(emu, job, pod, name="chat"):
    await pod_status(emu, pod, terminated(0, json.dumps(RESULT)))
    await job_status(emu, job, {"active": 0, "succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-22T10:05:00Z"}]})
    return await wait_for(lambda: status_of(emu, name).get("phase") == "Succeeded" and status_of(emu, name),
                          timeout=30)


async def test_an_api_server_restart_mid_run_loses_nothing(monkeypatch):
    async with ApiServer() as emu:
        server = kmock.Server(emu)
        await server.__aenter__()
        port = server.port
        monkeypatch.setenv("SFTOP_K8S_SERVER", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("SFTOP_RESYNC_INTERVAL", "5")
        monkeypatch.setenv("SFTOP_METRICS_PORT", "0")
        operator = Operator(emu)
        await operator.start()
        try:
            await apply(emu, sftjob())
            job, pod = await run_to_success(emu)
            server = await emu.restart(server, down=2.0)  # refused for 2 s, then the same state and address
            status = await succeed(emu, job, pod)
            assert status["result"]["trainLoss"] == 0.5 and status["result"]["gpuSeconds"] == 300.0
            await assert_invariants(emu)
        finally:
            await operator.stop()
            await server.__aexit__(None, None, None)


async def test_cut_watches_that_resume_to_410_gone_list_again_and_miss_nothing(apiserver, operator):
    await apply(apiserver, sftjob())
    job, pod = await run_to_success(apiserver)
    since = len(apiserver.log)
    apiserver.compact()
    apiserver.cut_watches()
    # While the watches reconnect, the run finishes: only a fresh list can tell the operator.
    status = await succeed(apiserver, job, pod)
    assert status["result"]["steps"] == 10
    resumed = [r for r in apiserver.log[since:] if r.params.get("watch") == "true"]
    assert any(int(r.params.get("resourceVersion") or 0) < apiserver.compacted for r in resumed), \
        "no watch resumed from before the compaction, so no 410 was answered"
    assert any(r.params.get("watch") != "true" and r.url.path.endswith("/pods") for r in apiserver.log[since:]), \
        "the operator did not list again after 410 Gone"
    await assert_invariants(apiserver)


async def test_429_with_retry_after_is_honoured(apiserver, operator):
    apiserver.fail_next("POST", "/jobs", 429, retry_after=2)
    await apply(apiserver, sftjob())
    await wait_for(lambda: trainer_jobs(apiserver), timeout=20)
    posts = [i for i, r in enumerate(apiserver.log) if r.method.value == "POST" and r.url.path.endswith("/jobs")]
    assert len(posts) >= 2, [(r.method.value, r.url.path) for r in apiserver.log]
    waited = apiserver.stamps[posts[1]] - apiserver.stamps[posts[0]]
    assert waited >= 1.9, f"retried after {waited:.2f}s; the API server asked for 2s"
    await wait_for(lambda: status_of(apiserver).get("run"), timeout=20)
    await assert_invariants(apiserver)


async def test_half_a_second_of_latency_on_every_request(apiserver, operator):
    apiserver.latency = 0.5
    await apply(apiserver, sftjob())
    job, pod = await run_to_success(apiserver)
    status = await succeed(apiserver, job, pod)
    assert status["observedGeneration"] == 1 and status["result"]["adapterPath"].endswith("/adapter")
    await assert_invariants(apiserver)


def start_operator(emu):
    env = {**os.environ, "SFTOP_K8S_SERVER": str(emu.url).rstrip("/"), "SFTOP_RESYNC_INTERVAL": "3",
           "SFTOP_METRICS_PORT": "0", "SFTOP_HEALTH_PORT": "0", "SFTOP_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "sftop.cli", "operator"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("write", [("POST", "/persistentvolumeclaims"), ("POST", "/configmaps"),
                                   ("POST", "/jobs"), ("PATCH", "/sftjobs/chat/status")],
                         ids=["claim", "ConfigMap", "Job", "status"])
async def test_sigkill_right_after_a_write_then_a_restart(apiserver, write):
    """The operator process dies the instant the API server stores one of its writes, before it reads the answer;
    a new process takes over from what the cluster holds."""
    killed = []
    first = start_operator(apiserver)
    try:
        apiserver.after_write(*write, lambda request: (os.kill(first.pid, signal.SIGKILL), killed.append(request)))
        await apply(apiserver, sftjob())
        await wait_for(lambda: killed, timeout=30)
        assert first.wait(10) == -signal.SIGKILL
        second = start_operator(apiserver)
        try:
            job, pod = await run_to_success(apiserver)
            # and once more, right after the write that records the result
            apiserver.after_write("PATCH", "/sftjobs/chat/status",
                                  lambda request: (os.kill(second.pid, signal.SIGKILL), killed.append(request)))
            await pod_status(apiserver, pod, terminated(0, json.dumps(RESULT)))
            await job_status(apiserver, job, {"active": 0, "succeeded": 1, "conditions": [
                {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-22T10:05:00Z"}]})
            await wait_for(lambda: len(killed) == 2, timeout=30)
        finally:
            second.kill()
            second.wait(10)
        third = start_operator(apiserver)
        try:
            status = await wait_for(lambda: status_of(apiserver).get("phase") == "Succeeded" and status_of(apiserver),
                                    timeout=30)
            await asyncio.sleep(4)  # a resync of the third process: nothing more to write or post
        finally:
            third.kill()
            third.wait(10)
    finally:
        first.kill()
    assert status["result"]["trainLoss"] == 0.5 and status["run"]["jobName"] == trainer_jobs(apiserver)[0][
        "metadata"]["name"]
    assert len(requests(apiserver, "POST", "/jobs")) <= 2, "a Job was created again without a 409"
    await assert_invariants(apiserver)


async def test_a_silent_progress_endpoint_is_said_and_holds_up_no_one(apiserver, operator):
    """A pod whose progress endpoint accepts and never answers (a NetworkPolicy dropping the operator's reads
    looks the same): its SFTJob says progress is unavailable and why; another SFTJob's progress and a new SFTJob's
    Job are not delayed by it."""
    from sftop_trainer.progress import Progress, serve

    held = []

    async def accept(reader, writer):
        held.append(writer)  # never answers

    silent = await asyncio.start_server(accept, "127.0.0.2", 0)
    port = silent.sockets[0].getsockname()[1]
    progress = Progress("r1")
    progress.step(7, 40, 0.2, 500)
    answering = serve(progress, "127.0.0.3", port)
    operator.controller.poller.port = port
    try:
        for name, ip in (("quiet", "127.0.0.2"), ("talks", "127.0.0.3")):
            await apply(apiserver, sftjob(name))
            job = (await wait_for(lambda: trainer_jobs(apiserver, name)))[0]
            pod = await make_pod(apiserver, job, suffix=name[:5])
            await pod_status(apiserver, pod, running(ip))
        talks = await wait_for(lambda: status_of(apiserver, "talks").get("progress"), timeout=10)
        assert talks["step"] == 7 and talks["totalSteps"] == 40
        quiet = await wait_for(lambda: next((c for c in status_of(apiserver, "quiet").get("conditions", [])
                                             if c["type"] == "ProgressReported" and c["status"] == "False"), None),
                               timeout=15)
        assert quiet["reason"] == "ProgressUnavailable" and "127.0.0.2" in quiet["message"]
        assert "NetworkPolicy" in quiet["message"] and status_of(apiserver, "quiet")["phase"] == "Running"
        await apply(apiserver, sftjob("new"))
        await wait_for(lambda: trainer_jobs(apiserver, "new"), timeout=3)
        events = await wait_for(lambda: [e for e in objs(apiserver, "v1/events") if e["reason"] == "ProgressUnavailable"])
        assert [e["involvedObject"]["name"] for e in events] == ["quiet"]
    finally:
        answering.shutdown()
        answering.server_close()
        silent.close()
        for w in held:
            w.close()


async def test_a_finished_sftjob_is_never_written_again(apiserver, operator):
    """The API server fills the CRD's defaults into status ([] and {}) on every read: that is no change, and a
    resync of a finished SFTJob writes nothing."""
    await apply(apiserver, sftjob())
    job, pod = await run_to_success(apiserver)
    await succeed(apiserver, job, pod)
    await asyncio.sleep(1)
    # what the API server's structural defaulting shows of the CRD's list defaults
    await patch(apiserver, "/apis/sftop.dev/v1alpha1/namespaces/team-a/sftjobs/chat/status",
                {"status": {"checkpoints": [], "previousRuns": []}})
    writes = len(requests(apiserver, "PATCH", "/sftjobs/chat/status"))
    await asyncio.sleep(6)  # more than one resync (5 s here)
    assert len(requests(apiserver, "PATCH", "/sftjobs/chat/status")) == writes
    assert status_of(apiserver)["checkpoints"] == [] and status_of(apiserver)["phase"] == "Succeeded"


async def test_live_progress_is_written_at_most_at_the_budget_and_always_the_latest(apiserver, operator):
    """A trainer whose step moves every half second (the poller reads it every second here) is written once for its
    first progress, then no more than 4 times a minute, each time with the latest step."""
    from sftop_trainer.progress import Progress, serve

    progress = Progress("r1")
    progress.step(1, 1000, 0.0, 100)
    with socket.socket() as probe:
        probe.bind(("127.0.0.4", 0))
        port = probe.getsockname()[1]
    server = serve(progress, "127.0.0.4", port)
    operator.controller.poller.port = port
    try:
        await apply(apiserver, sftjob())
        job = (await wait_for(lambda: trainer_jobs(apiserver)))[0]
        pod = await make_pod(apiserver, job)
        await pod_status(apiserver, pod, running("127.0.0.4"))
        await wait_for(lambda: status_of(apiserver).get("progress"), timeout=10)
        since = len(apiserver.log)
        for step in range(2, 40):  # 19 s of a step every half second
            progress.step(step, 1000, 0.0, 100 * step)
            await asyncio.sleep(0.5)
        writes = [r for r in apiserver.log[since:] if r.method.value == "PATCH"
                  and r.url.path.endswith("/sftjobs/chat/status")]
        assert 1 <= len(writes) <= 2, f"{len(writes)} progress writes in 19 s at a budget of 4 a minute"
        assert status_of(apiserver)["progress"]["step"] >= 20, "the write carried an old reading"
    finally:
        server.shutdown()
        server.server_close()
