"""What the schema cannot check, the operator does: invalid specs fail once with the field named, missing
references wait with a reason, spec changes start new runs, suspend and resume, deletion keeps the output."""

import asyncio

import kmock

from harness.apiserver import SFTJOBS
from harness.cluster import (NS, apply, condition, make_pod, obj, objs, patch, pod_status, requests,
                             running, sftjob, status_of, wait_for)

SFTJOB_PATH = f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/chat"


async def test_invalid_spec_fails_once_with_the_field_named(apiserver, operator):
    manifest = sftjob(training={"maxSteps": 10, "sftConfig": {"output_dir": "/tmp/elsewhere"}})
    assert (await apply(apiserver, manifest)).status == 201  # the CRD cannot see this rule; the operator can
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Failed" and status_of(apiserver))
    accepted = condition(status, "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec"
    assert "spec.training" in status["message"] and "output_dir" in status["message"]
    assert not objs(apiserver, "batch/v1/jobs")
    operator.enqueue(NS, "chat")
    await asyncio.sleep(1.0)
    events = [e for e in objs(apiserver, "v1/events") if e["reason"] == "InvalidSpec"]
    assert len(events) == 1, "an invalid spec is reported once, not in a loop"
    assert len(requests(apiserver, "PATCH", "/sftjobs/chat/status")) == 1


async def test_a_spec_the_schema_let_through_is_still_checked(apiserver, operator):
    # an SFTJob stored before the CRD had its current schema: the operator must not trust the server
    manifest = sftjob()
    manifest["spec"]["training"] = {"learningRate": -1}
    manifest["metadata"].update(uid="0a0a", generation=1, resourceVersion="1")
    apiserver.objects[kmock.resource(SFTJOBS), NS, "chat"] = manifest
    operator.loop.call_soon_threadsafe(operator.controller.observe_sftjob, None, manifest)
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Failed" and status_of(apiserver))
    assert "spec.training.learningRate" in status["message"] and "greater than 0" in status["message"]


async def test_missing_secret_is_said_from_the_pods_own_error_and_never_read(apiserver, operator):
    await apply(apiserver, sftjob(hubTokenSecret={"name": "hf-token"}))
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs"), timeout=30))[0]
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in env
    pod = await make_pod(apiserver, job)
    # kubelet cannot build the container's environment (pkg/kubelet/kubelet_pods.go), and retries
    await pod_status(apiserver, pod, {"phase": "Pending", "containerStatuses": [{"name": "trainer", "ready": False,
        "state": {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'}}}]})
    status = await wait_for(lambda: status_of(apiserver).get("message", "").startswith("spec.hubTokenSecret")
                            and status_of(apiserver), timeout=15)
    assert status["phase"] == "Pending"
    assert status["message"] == "spec.hubTokenSecret: Secret hf-token does not exist in namespace team-a; the run " \
                                "starts when it does"
    assert [c["reason"] for c in status["conditions"] if c["reason"] == "SecretNotFound"], status["conditions"]
    await pod_status(apiserver, pod, running())
    await wait_for(lambda: status_of(apiserver).get("phase") == "Running", timeout=15)
    for config in objs(apiserver, "v1/configmaps"):
        assert "hf_secret" not in str(config)
    assert not requests(apiserver, "GET", "/secrets"), "the operator read a Secret"


async def test_missing_claim_is_named(apiserver, operator):
    await apply(apiserver, sftjob(output={"pvc": {"claimName": "adapters"}}))
    status = await wait_for(lambda: condition(status_of(apiserver), "Accepted") and status_of(apiserver))
    assert condition(status, "Accepted")["reason"] == "PVCNotFound"
    assert "spec.output.pvc.claimName" in status["message"]


async def test_a_multi_node_run_waits_for_an_output_claim_its_pods_can_share(apiserver, operator):
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "adapters", "namespace": NS},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    await apiserver.post(f"/api/v1/namespaces/{NS}/persistentvolumeclaims", json=claim)
    await apply(apiserver, sftjob(output={"pvc": {"claimName": "adapters"}}, distribution={"nodes": 2}))
    status = await wait_for(lambda: condition(status_of(apiserver), "Accepted") and status_of(apiserver))
    accepted = condition(status, "Accepted")
    assert status["phase"] == "Pending" and accepted["reason"] == "PVCNotShared"
    assert "adapters is ReadWriteOnce" in accepted["message"] and "ReadWriteMany" in accepted["message"]
    assert not objs(apiserver, "batch/v1/jobs")
    # the same claim is fine for one node
    await patch(apiserver, SFTJOB_PATH, {"spec": {"distribution": {"nodes": 1}}})
    await wait_for(lambda: objs(apiserver, "batch/v1/jobs"), timeout=30)


async def test_a_multi_node_run_waits_for_input_claims_its_pods_can_all_read(apiserver, operator):
    for name, modes in (("models", ["ReadWriteOnce"]), ("data", ["ReadOnlyMany"])):
        await apiserver.post(f"/api/v1/namespaces/{NS}/persistentvolumeclaims", json={
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": NS},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": "1Gi"}}}})
    await apply(apiserver, sftjob(model={"pvc": {"claimName": "models", "path": "qwen"}},
                                  dataset={"pvc": {"claimName": "data", "path": "train.jsonl"}},
                                  output={"pvc": {"claimName": "adapters", "create": {
                                      "size": "1Gi", "accessModes": ["ReadWriteMany"]}}},
                                  distribution={"nodes": 2}))
    status = await wait_for(lambda: condition(status_of(apiserver), "Accepted") and status_of(apiserver),
                            explain=lambda: status_of(apiserver))
    accepted = condition(status, "Accepted")
    assert accepted["reason"] == "PVCNotShared" and accepted["message"].startswith("spec.model.pvc.claimName: ")
    assert "models is ReadWriteOnce" in accepted["message"] and "ReadOnlyMany or ReadWriteMany" in accepted["message"]
    assert not objs(apiserver, "batch/v1/jobs")
    await patch(apiserver, f"/api/v1/namespaces/{NS}/persistentvolumeclaims/models",
                {"spec": {"accessModes": ["ReadWriteMany"]}})
    await wait_for(lambda: objs(apiserver, "batch/v1/jobs"), timeout=40)


async def test_spec_change_starts_a_new_run_and_keeps_the_old_output(apiserver, operator):
    await apply(apiserver, sftjob())
    first = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    first_status = await wait_for(lambda: status_of(apiserver).get("run") and status_of(apiserver))
    # a metadata-only change starts nothing
    await patch(apiserver, SFTJOB_PATH, {"metadata": {"labels": {"team": "nlp"}}})
    await asyncio.sleep(0.5)
    assert len(objs(apiserver, "batch/v1/jobs")) == 1

    await patch(apiserver, SFTJOB_PATH, {"spec": {"training": {"maxSteps": 20}}})
    status = await wait_for(lambda: status_of(apiserver)["run"]["id"] != first_status["run"]["id"]
                            and status_of(apiserver))
    second_job = await wait_for(lambda: obj(apiserver, "batch/v1/jobs", status["run"]["jobName"]))
    assert status["observedGeneration"] == 2
    assert status["previousRuns"][0]["id"] == first_status["run"]["id"]
    assert status["previousRuns"][0]["outputPath"] == first_status["run"]["outputPath"]
    assert status["run"]["outputPath"] != first_status["run"]["outputPath"]
    # the unfinished first run was stopped; its output (on the claim) is not touched
    await wait_for(lambda: obj(apiserver, "batch/v1/jobs", first["metadata"]["name"]) is None)
    assert second_job and obj(apiserver, "v1/persistentvolumeclaims", "adapters")
    await wait_for(lambda: any(e["reason"] == "NewRun" for e in objs(apiserver, "v1/events")))


async def test_suspend_and_resume(apiserver, operator):
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    pod = await make_pod(apiserver, job)
    await pod_status(apiserver, pod, running())
    await wait_for(lambda: status_of(apiserver).get("phase") == "Running")
    await patch(apiserver, SFTJOB_PATH, {"spec": {"suspend": True}})
    await wait_for(lambda: obj(apiserver, "batch/v1/jobs", job["metadata"]["name"])["spec"]["suspend"] is True)
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Suspended" and status_of(apiserver))
    assert condition(status, "Suspended")["status"] == "True"
    assert len(objs(apiserver, "batch/v1/jobs")) == 1, "suspend is not a new run"
    await patch(apiserver, SFTJOB_PATH, {"spec": {"suspend": False}})
    await wait_for(lambda: obj(apiserver, "batch/v1/jobs", job["metadata"]["name"])["spec"]["suspend"] is False)
    await wait_for(lambda: status_of(apiserver).get("phase") == "Running")
    assert condition(status_of(apiserver), "Suspended")["status"] == "False"


async def test_queued_run_waits_for_kueue_and_is_never_unsuspended_by_the_operator(apiserver, operator):
    await apply(apiserver, sftjob(queueName="team-a"))
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"] is True
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Queued" and status_of(apiserver))
    assert condition(status, "Queued")["status"] == "True"  # why it waits: tests/operator/test_queues.py
    await asyncio.sleep(0.5)
    assert obj(apiserver, "batch/v1/jobs", job["metadata"]["name"])["spec"]["suspend"] is True
    # Kueue admits it
    await patch(apiserver, f"/apis/batch/v1/namespaces/{NS}/jobs/{job['metadata']['name']}", {"spec": {"suspend": False}})
    pod = await make_pod(apiserver, job)
    await pod_status(apiserver, pod, running())
    await wait_for(lambda: status_of(apiserver).get("phase") == "Running")


async def test_deleting_the_sftjob_removes_its_children_but_not_the_output(apiserver, operator):
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    pod = await make_pod(apiserver, job)
    await wait_for(lambda: status_of(apiserver).get("run"))
    assert not obj(apiserver, SFTJOBS, "chat")["metadata"].get("finalizers"), "no finalizer: deletion never waits"
    resp = await apiserver.delete(SFTJOB_PATH)
    assert resp.status == 200
    assert obj(apiserver, SFTJOBS, "chat") is None, "deleted at once, with the operator running or not"
    await wait_for(lambda: not objs(apiserver, "batch/v1/jobs") and not objs(apiserver, "v1/configmaps")
                   and obj(apiserver, "v1/pods", pod["metadata"]["name"]) is None)
    assert obj(apiserver, "v1/persistentvolumeclaims", "adapters") is not None


async def test_progress_is_read_from_the_trainer_pod(apiserver, operator):

    from sftop_trainer.progress import Progress, serve

    progress = Progress("r1")
    progress.update(phase="Training", loss=0.75, learningRate=1e-4)
    progress.step(3, 10, 0.3, 300)
    progress.step(4, 10, 0.4, 400)
    server = serve(progress, "127.0.0.1", 18931)
    try:
        operator.controller.poller.port = 18931
        await apply(apiserver, sftjob())
        job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
        pod = await make_pod(apiserver, job)
        await pod_status(apiserver, pod, running("127.0.0.1"))
        status = await wait_for(lambda: status_of(apiserver).get("progress") and status_of(apiserver))
        p = status["progress"]
        assert (p["step"], p["totalSteps"], p["percent"], p["loss"]) == (4, 10, 40, 0.75)
        assert p["eta"] and p["updateTime"]
    finally:
        server.shutdown()
        server.server_close()
