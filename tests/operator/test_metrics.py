"""The operator's Prometheus metrics."""

import socket
import urllib.request

from harness.cluster import Operator, apply, job_status, make_pod, objs, pod_status, running, sftjob, wait_for
from harness.cluster import status_of


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_metrics_count_sftjobs_by_phase_and_show_progress(apiserver, monkeypatch):
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

        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        import asyncio

        text = await asyncio.to_thread(scrape)
        assert 'sftop_sftjobs{namespace="team-a",phase="Running"} 1' in text
        assert 'sftop_sftjobs{namespace="team-a",phase="Failed"} 1' in text
        assert "# TYPE sftop_reconciles_total counter" in text and "sftop_workqueue_depth" in text
    finally:
        await operator.stop()
