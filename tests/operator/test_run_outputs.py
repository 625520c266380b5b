"""What a run leaves behind, as the SFTJob's status shows it: checkpoints, the result with its serving handoff, a
failed run's progress; and what a run starts from and reports to: warm start, tracking."""

import json

from harness.cluster import (NS, apply, condition, finish, make_pod, obj, objs, patch, pod_status, running, sftjob,
                             status_of, wait_for)
from sftop import api, render

CHECKPOINTS = [{"step": 20, "path": "checkpoints/checkpoint-20", "complete": True, "epoch": 0.5, "trainLoss": 1.4,
                "evalLoss": 1.3, "best": True},
               {"step": 40, "path": "checkpoints/checkpoint-40", "complete": True, "epoch": 1.0, "trainLoss": 1.1,
                "evalLoss": 1.35}]
SERVING = {"baseModel": "Qwen/Qwen2.5-0.5B-Instruct", "baseModelRevision": "7ae557604adf67be50417f59c2c2f167def9a775",
           "loraRank": 32, "loraAlpha": 64, "targetModules": ["q_proj", "v_proj"], "vllmMaxLoraRank": 32}


def job_of(emu, name: str = "chat"):
    return next((j for j in objs(emu, "batch/v1/jobs") if j["metadata"]["labels"][render.SFTJOB_LABEL] == name), None)


async def test_checkpoints_appear_while_training_and_the_result_says_how_to_serve_it(apiserver, operator):
    from sftop_trainer.progress import Progress, serve

    progress = Progress("r1")
    progress.step(25, 60, 0.6, 1000)
    progress.update(checkpoints=CHECKPOINTS[:1])
    server = serve(progress, "127.0.0.1", 18932)
    try:
        operator.controller.poller.port = 18932
        await apply(apiserver, sftjob())
        job = await wait_for(lambda: job_of(apiserver))
        pod = await make_pod(apiserver, job)
        await pod_status(apiserver, pod, running("127.0.0.1"))
        status = await wait_for(lambda: status_of(apiserver).get("checkpoints") and status_of(apiserver))
    finally:
        server.shutdown()
        server.server_close()
    out = status["run"]["outputPath"]
    assert status["checkpoints"] == [{"step": 20, "epoch": 0.5, "trainLoss": 1.4, "evalLoss": 1.3, "complete": True,
                                      "best": True, "path": f"{out}/checkpoints/checkpoint-20"}]
    message = {"status": "Succeeded", "steps": 45, "resultStep": 20, "adapterPath": "adapter", "trainLoss": 1.2,
               "stopReason": "EarlyStopping: the eval loss did not improve for 2 evaluation(s)",
               "checkpoints": CHECKPOINTS, "serving": SERVING}
    await pod_status(apiserver, pod, {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "ready": False,
                     "state": {"terminated": {"exitCode": 0, "message": json.dumps(message), "reason": "Completed"}}}]})
    await patch(apiserver, f"/apis/batch/v1/namespaces/{NS}/jobs/{job['metadata']['name']}/status", {"status": {
        "succeeded": 1, "conditions": [{"type": "Complete", "status": "True",
                                        "lastTransitionTime": "2026-11-22T10:05:00Z"}]}})
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Succeeded" and status_of(apiserver))
    result = status["result"]
    assert result["resultStep"] == 20 and result["steps"] == 45 and result["stopReason"].startswith("EarlyStopping")
    assert [c["step"] for c in status["checkpoints"]] == [20, 40]
    assert all(c["path"].startswith(f"{out}/checkpoints/") for c in status["checkpoints"])
    claim, folder = out.split(":")
    assert result["serving"] == {
        "claimName": claim, "path": f"{folder}/adapter", "baseModel": "Qwen/Qwen2.5-0.5B-Instruct",
        "baseModelRevision": SERVING["baseModelRevision"], "loraRank": 32, "vllmMaxLoraRank": 32,
        "targetModules": ["q_proj", "v_proj"], "storageUri": f"pvc://{claim}/{folder}/adapter",
        "vllmLoraModules": json.dumps({"name": "chat", "path": f"/adapters/{folder}/adapter",
                                       "base_model_name": "Qwen/Qwen2.5-0.5B-Instruct"}, separators=(",", ":"))}
    api.SFTJobStatus.model_validate(status)


async def test_a_failed_run_keeps_the_steps_losses_and_checkpoints_it_reached(apiserver, operator):
    await apply(apiserver, sftjob())
    job = await wait_for(lambda: job_of(apiserver))
    await finish(apiserver, job, 70, {"status": "Failed", "exitCode": 70, "reason": "LossSpike",
                                      "message": "the training loss spiked at step 41", "steps": 43,
                                      "trainLoss": 1.9, "checkpoints": CHECKPOINTS})
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Failed" and status_of(apiserver))
    assert condition(status, "Failed")["reason"] == "LossSpike"
    assert status["result"] == {"steps": 43, "trainLoss": 1.9, "gpuSeconds": 300.0}  # what the failed attempt used
    assert [c["step"] for c in status["checkpoints"]] == [20, 40]


def config_of(emu, name: str) -> dict:
    job = job_of(emu, name)
    return json.loads(obj(emu, "v1/configmaps", job["metadata"]["name"])["data"]["config.json"])


async def succeed(emu, name: str) -> dict:
    job = await wait_for(lambda: job_of(emu, name))
    await finish(emu, job, 0, {"status": "Succeeded", "steps": 10, "adapterPath": "adapter", "serving": SERVING})
    return await wait_for(lambda: status_of(emu, name).get("phase") == "Succeeded" and status_of(emu, name))


async def test_warm_start_from_another_sftjob_waits_for_it_and_continues_its_adapter(apiserver, operator):
    await apply(apiserver, sftjob("second", warmStart={"sftJob": "first"}))
    status = await wait_for(lambda: status_of(apiserver, "second").get("message") and status_of(apiserver, "second"))
    assert status["phase"] == "Pending" and "SFTJob first does not exist" in status["message"]
    assert job_of(apiserver, "second") is None

    await apply(apiserver, sftjob("first"))
    status = await wait_for(lambda: "waiting for run" in status_of(apiserver, "second").get("message", "")
                            and status_of(apiserver, "second"), timeout=30)
    assert condition(status, "Reconciling")["reason"] == "WaitingForWarmStart"
    first = await succeed(apiserver, "first")
    second = await wait_for(lambda: job_of(apiserver, "second"), timeout=10)  # at once: first's change wakes it
    claim, folder = first["run"]["outputPath"].split(":")
    status = await wait_for(lambda: status_of(apiserver, "second").get("run", {}).get("warmStart")
                            and status_of(apiserver, "second"))
    assert status["run"]["warmStart"] == f"{claim}:{folder}/adapter"
    cfg = config_of(apiserver, "second")
    assert cfg["warmStart"] == {"path": f"/output/{folder}/adapter", "origin": f"{claim}:{folder}/adapter"}
    mounts = second["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert [m["mountPath"] for m in mounts].count("/output") == 1, "the output claim is mounted once, read-write"


async def test_warm_start_from_this_sftjobs_earlier_run_or_a_checkpoint_on_another_claim(apiserver, operator):
    await apply(apiserver, sftjob())
    first = await succeed(apiserver, "chat")
    # The next version of the spec continues the run before it.
    await patch(apiserver, f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/chat", {"spec": {
        "training": {"maxSteps": 20}, "warmStart": {"sftJob": "chat"}}})
    status = await wait_for(lambda: status_of(apiserver)["run"]["id"] != first["run"]["id"]
                            and status_of(apiserver).get("run", {}).get("warmStart") and status_of(apiserver))
    assert status["run"]["warmStart"] == first["run"]["outputPath"] + "/adapter"

    await apply(apiserver, sftjob("from-ckpt", warmStart={"sftJob": "chat", "runId": first["run"]["id"],
                                                          "checkpoint": 40}))
    await wait_for(lambda: job_of(apiserver, "from-ckpt"))
    assert config_of(apiserver, "from-ckpt")["warmStart"]["origin"] == \
        first["run"]["outputPath"] + "/checkpoints/checkpoint-40"

    await apply(apiserver, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "metadata": {"name": "shared", "namespace": NS},
                            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}})
    await apply(apiserver, sftjob("from-claim", warmStart={"pvc": {"claimName": "shared", "path": "adapters/v3"}}))
    job = await wait_for(lambda: job_of(apiserver, "from-claim"))
    assert config_of(apiserver, "from-claim")["warmStart"]["path"] == "/mnt/pvc/shared/adapters/v3"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/pvc/shared"]["readOnly"] is True
    assert volumes[mounts["/mnt/pvc/shared"]["name"]]["persistentVolumeClaim"] == {"claimName": "shared",
                                                                                 "readOnly": True}


async def test_warm_start_that_can_never_resolve_fails_with_its_reason(apiserver, operator):
    await apply(apiserver, sftjob("first"))
    await succeed(apiserver, "first")
    await apply(apiserver, sftjob("unknown-run", warmStart={"sftJob": "first", "runId": "0123abcd"}))
    status = await wait_for(lambda: status_of(apiserver, "unknown-run").get("phase") == "Failed"
                            and status_of(apiserver, "unknown-run"))
    assert condition(status, "Stalled")["reason"] == "WarmStartNotFound" and "0123abcd" in status["message"]
    other = sftjob("other-base", warmStart={"sftJob": "first"})
    other["spec"]["model"] = {"hub": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct"}}
    await apply(apiserver, other)
    status = await wait_for(lambda: status_of(apiserver, "other-base").get("phase") == "Failed"
                            and status_of(apiserver, "other-base"))
    assert condition(status, "Stalled")["reason"] == "WarmStartMismatch"
    assert job_of(apiserver, "unknown-run") is None and job_of(apiserver, "other-base") is None


async def test_tracking_credentials_reach_the_pod_from_secrets_and_tracking_starts_no_new_run(apiserver, operator):
    tracking = {"mlflow": {"trackingUri": "http://mlflow.mlops:5000", "experiment": "chat",
                           "tokenSecret": {"name": "mlflow", "key": "token"}},
                "wandb": {"project": "chat", "entity": "ml", "apiKeySecret": {"name": "wandb", "key": "key"}}}
    await apply(apiserver, sftjob(tracking=tracking))
    job = await wait_for(lambda: job_of(apiserver))
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "mlflow", "key": "token"}}
    assert env["WANDB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "wandb", "key": "key"}}
    cfg = config_of(apiserver, "chat")
    rid = job["metadata"]["labels"][render.RUN_LABEL]
    assert cfg["tracking"] == {"runName": f"chat-{rid}", "mlflow": {"trackingUri": "http://mlflow.mlops:5000",
                                                                    "experiment": "chat"},
                               "wandb": {"project": "chat", "entity": "ml"}}
    assert "Secret" not in json.dumps(cfg) and "token" not in json.dumps(cfg["tracking"])
    await patch(apiserver, f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/chat", {"spec": {"tracking": {
        "mlflow": {"trackingUri": "http://mlflow.other:5000"}}}})
    await wait_for(lambda: status_of(apiserver).get("observedGeneration") == 2)
    assert status_of(apiserver)["run"]["id"] == rid and len(objs(apiserver, "batch/v1/jobs")) == 1
