"""The operator's Prometheus metrics: SFTJobs by phase, per-SFTJob series for active runs only, and the usage a
platform charges back per namespace."""

import asyncio
import json
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from harness.cluster import Operator, apply, job_status, make_pod, objs, pod_status, running, sftjob, wait_for
from harness.cluster import status_of


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))))


async def test_metrics_count_phases_follow_active_runs_and_charge_usage_back(apiserver, monkeypatch):
    port = free_port()
    monkeypatch.setenv("SFTOP_K8S_SERVER", str(apiserver.url).rstrip("/"))
    monkeypatch.setenv("SFTOP_METRICS_PORT", str(port))
    monkeypatch.setenv("SFTOP_PROGRESS_INTERVAL", "1")
    operator = Operator(apiserver)
    await operator.start()
    try:
        await apply(apiserver, sftjob("a"))
        await apply(apiserver, sftjob("b", training={"maxSteps": 10, "sftConfig": {"output_dir": "/tmp"}}))
        job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
        pod = await make_pod(apiserver, job)
        await pod_status(apiserver, pod, running())
        await job_status(apiserver, job, {"active": 1})
        await wait_for(lambda: status_of(apiserver, "a").get("phase") == "Running"
                       and status_of(apiserver, "b").get("phase") == "Failed")

        found = await asyncio.to_thread(samples, port)
        assert value(found, "sftop_sftjobs", namespace="team-a", phase="Running") == 1
        assert value(found, "sftop_sftjobs", namespace="team-a", phase="Failed") == 1
        assert value(found, "sftop_sftjob_phase", namespace="team-a", sftjob="a", phase="Running") == 1
        assert not any(k[0] == "sftop_sftjob_phase" and ("sftjob", "b") in k[1] for k in found), \
            "a finished SFTJob keeps no per-SFTJob series"
        assert value(found, "sftop_reconciles_total") > 0 and value(found, "sftop_workqueue_depth") is not None

        message = {"status": "Succeeded", "steps": 10, "trainedTokens": 4321, "adapterPath": "adapter"}
        await pod_status(apiserver, pod, {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {
            "terminated": {"exitCode": 0, "message": json.dumps(message), "startedAt": "2026-11-22T10:00:00Z",
                           "finishedAt": "2026-11-22T10:10:00Z"}}}]})
        await job_status(apiserver, job, {"active": 0, "succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-22T10:10:00Z"}]})
        await wait_for(lambda: status_of(apiserver, "a").get("phase") == "Succeeded")
        found = await asyncio.to_thread(samples, port)
        assert status_of(apiserver, "a")["result"]["gpuSeconds"] == 600.0
        assert value(found, "sftop_gpu_seconds_total", namespace="team-a") >= 600.0
        assert value(found, "sftop_trained_tokens_total", namespace="team-a") == 4321
        assert value(found, "sftop_runs_finished_total", namespace="team-a", phase="Succeeded") == 1
        assert value(found, "sftop_runs_finished_total", namespace="team-a", phase="Failed") == 1
        assert not any(k[0].startswith("sftop_sftjob_") for k in found), "no run is active any more"
    finally:
        await operator.stop()
