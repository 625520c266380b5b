"""The operator in a shared cluster, as a real API server and Kueue behave there: other teams' Pods and Jobs, watch
gaps that lose deletions, admission plugins that check owner references, Kueue's own controllers."""

import asyncio

import pytest

from harness.cluster import (NS, Operator, apply, job_status, make_pod, objs, patch, pod_status, requests, running,
                             sftjob, status_of, wait_for)
from test_platform_faults import run_to_success, succeed, trainer_jobs
from test_queues import PATH, WORKLOADS, queued, training_job

OTHER = "team-b"


async def foreign(emu, count, start=0):
    """`count` Pods and Jobs of another team, none of them the operator's."""
    for i in range(start, start + count):
        meta = {"name": f"web-{i}", "namespace": OTHER, "labels": {"app": "web"}}
        resp = await emu.post(f"/api/v1/namespaces/{OTHER}/pods", json={
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}})
        assert resp.status == 201, await resp.text()
        resp = await emu.post(f"/apis/batch/v1/namespaces/{OTHER}/jobs", json={
            "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})
        assert resp.status == 201, await resp.text()


async def test_other_teams_pods_and_jobs_never_reach_the_operator(apiserver, operator):
    await foreign(apiserver, 5)  # while the watches run
    await apply(apiserver, sftjob())
    job, pod = await run_to_success(apiserver)
    since = len(apiserver.log)
    apiserver.compact()
    apiserver.cut_watches()  # the watches resume to 410 Gone and list again
    await foreign(apiserver, 5, start=5)
    await succeed(apiserver, job, pod)
    await wait_for(lambda: any(r.params.get("watch") != "true" and r.url.path.endswith("/pods")
                               for r in apiserver.log[since:]), timeout=15)
    sent = {key: n for key, n in apiserver.sent.items() if key[1] == OTHER}
    assert sent == {}, f"the API server sent the operator other teams' objects: {sent}"
    assert apiserver.sent[("v1/pods", "team-a")] and apiserver.sent[("batch/v1/jobs", "team-a")]
    for r in requests(apiserver, "GET", "/pods") + requests(apiserver, "GET", "/jobs"):
        if r.url.path in ("/api/v1/pods", "/apis/batch/v1/jobs"):
            assert r.params.get("labelSelector") == "sftop.dev/sftjob", r.url
            assert r.params.get("watch") == "true" or r.params.get("limit"), f"an unpaged list: {r.url}"
    assert len(objs(apiserver, "v1/pods", OTHER)) == 10
    assert status_of(apiserver)["phase"] == "Succeeded"


@pytest.mark.parametrize("phase", ["Validating", "Running"])
async def test_a_deletion_lost_in_a_watch_gap_brings_no_child_back(apiserver, operator, phase):
    if phase == "Validating":  # the collected validation Job is what the operator would create again
        await apply(apiserver, sftjob(validation={"enabled": True}))
        await wait_for(lambda: status_of(apiserver).get("phase") == "Validating", timeout=15)
    else:
        await apply(apiserver, sftjob())
        await run_to_success(apiserver)
    apiserver.hold_watches("sftjobs")  # the SFTJob's DELETED event will never reach the operator
    since = len(apiserver.log)
    resp = await apiserver.delete(f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/chat")
    assert resp.status < 300
    # The collector deletes its Job; that DELETED event does reach the operator, which still holds the SFTJob.
    await wait_for(lambda: (NS, "chat") not in operator.controller.sftjobs, timeout=15,
                   explain=lambda: f"{len(requests_since(apiserver, since, 'POST'))} creates since the deletion")
    apiserver.compact()
    apiserver.release_watches()  # the watch resumes into 410 Gone, and the list no longer has the SFTJob
    await asyncio.sleep(2)
    assert requests_since(apiserver, since, "POST") == [], "children created for an SFTJob that is gone"
    assert objs(apiserver, "batch/v1/jobs") == [] and objs(apiserver, "v1/configmaps") == []


def requests_since(emu, since, method):
    return [r.url.path for r in emu.log[since:] if r.method.value.upper() == method and "/events" not in r.url.path]


async def test_children_block_their_owners_deletion_under_owner_reference_enforcement(apiserver, operator):
    assert apiserver.owner_rules is not None, "the emulator enforces OwnerReferencesPermissionEnforcement"
    await apply(apiserver, sftjob())
    await run_to_success(apiserver)
    owned = objs(apiserver, "batch/v1/jobs") + objs(apiserver, "v1/configmaps")
    assert len(owned) == 2
    for child in owned:
        assert [r["blockOwnerDeletion"] for r in child["metadata"]["ownerReferences"]] == [True]


async def test_a_queue_label_on_the_sftjob_never_queues_its_job(apiserver, operator):
    manifest = sftjob()
    manifest["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a", "team": "a"}
    await apply(apiserver, manifest)
    job, _ = await run_to_success(apiserver)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert "kueue.x-k8s.io/queue-name" not in labels and labels["team"] == "a"
    assert job["spec"].get("suspend") is not True


async def test_suspending_an_admitted_run_deactivates_its_workload_and_kueue_keeps_it_stopped(apiserver, kueue,
                                                                                              operator):
    await kueue.queue("gpus", {"a100": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "1"}}, [(NS, "team-a")])
    await apply(apiserver, queued())
    job = await wait_for(lambda: (j := training_job(apiserver)) and not j["spec"]["suspend"] and j, timeout=20)
    await job_status(apiserver, job, {"active": 1, "startTime": "2026-11-22T10:00:00Z"})
    pod = await make_pod(apiserver, job)
    await pod_status(apiserver, pod, running())
    await wait_for(lambda: status_of(apiserver).get("phase") == "Running", timeout=20)

    await patch(apiserver, f"{PATH}/chat", {"spec": {"suspend": True}})
    await wait_for(lambda: objs(apiserver, WORKLOADS)[0]["spec"]["active"] is False, timeout=20)
    await wait_for(lambda: training_job(apiserver)["spec"]["suspend"], timeout=20)
    await apiserver.delete(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}")  # the Job controller's part
    await job_status(apiserver, job, {"active": 0})
    flips = []
    for _ in range(20):  # two seconds: Kueue and the operator no longer take turns with the Job
        flips.append(training_job(apiserver)["spec"]["suspend"])
        await asyncio.sleep(0.1)
    assert all(flips), f"the Job was started again while suspended: {flips}"
    assert status_of(apiserver)["phase"] == "Suspended"
    assert not [r for r in requests(apiserver, "PATCH", "/jobs/") if r.data and "suspend" in (r.data.get("spec") or {})
                and (r.headers.get("User-Agent") or "").startswith("sftop-operator/")], "the operator suspended a queued Job"

    await patch(apiserver, f"{PATH}/chat", {"spec": {"suspend": False}})
    await wait_for(lambda: objs(apiserver, WORKLOADS)[0]["spec"]["active"] is True, timeout=20)
    await wait_for(lambda: not training_job(apiserver)["spec"]["suspend"], timeout=20)


async def test_a_spec_change_that_comes_back_with_a_status_write_is_acted_on_at_once(apiserver, monkeypatch):
    monkeypatch.setenv("SFTOP_K8S_SERVER", str(apiserver.url).rstrip("/"))
    monkeypatch.setenv("SFTOP_RESYNC_INTERVAL", "120")  # only the change itself may start the new run
    monkeypatch.setenv("SFTOP_METRICS_PORT", "0")
    op = Operator(apiserver)
    await op.start()
    try:
        await apply(apiserver, sftjob())
        job = (await wait_for(lambda: trainer_jobs(apiserver), timeout=15))[0]
        pod = await make_pod(apiserver, job)
        await wait_for(lambda: status_of(apiserver).get("phase") == "Pending", timeout=15)
        await asyncio.sleep(1)  # quiet: no reconcile under way or queued
        apiserver.watch_delay["sftjobs"] = 1.0  # the spec change's event arrives after the status write below
        await patch(apiserver, f"{PATH}/chat", {"spec": {"training": {"maxSteps": 20}}})
        await pod_status(apiserver, pod, running())  # one reconcile writes Running; its response has the new spec
        first = job["metadata"]["name"]
        await wait_for(lambda: [j for j in trainer_jobs(apiserver) if j["metadata"]["name"] != first], timeout=8,
                       explain=lambda: f"status: {status_of(apiserver).get('phase')}, "
                                       f"observedGeneration {status_of(apiserver).get('observedGeneration')}")
    finally:
        apiserver.watch_delay.clear()
        await op.stop()
