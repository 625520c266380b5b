"""A run over two nodes: an Indexed Job of two pods (each a local process on this machine, data parallel over gloo)
that meet through torchrun's c10d rendezvous on pod 0, through the headless Service's DNS names (the node maps them
to the pods' loopback addresses: tests/harness/node.py)."""

import asyncio
import json

import kubernetes_validate
import pytest

from harness.cluster import NS, apply, condition, objs
from sftop_trainer.errors import ExitCode
from test_end_to_end import logged_step, manifest, phase, status_of, trainer_pods, training_jobs, until


def two_nodes(steps=40, save=10, **kw):
    doc = manifest(steps=steps, save=save, **kw)
    doc["spec"]["distribution"] = {"nodes": 2}
    doc["spec"]["output"]["pvc"]["create"]["accessModes"] = ["ReadWriteMany"]
    return doc


def both_running(emu):
    s = status_of(emu, "tiny")
    pods = (s.get("run") or {}).get("pods") or []
    return s.get("phase") == "Running" and [p.get("phase") for p in pods] == ["Running", "Running"] and s


async def test_two_pods_train_one_run_to_one_adapter_like_a_single_node_run(cluster):
    emu, node, _ = cluster
    node.node_names = ("node-a", "node-b")
    await apply(emu, two_nodes(steps=40, validation=True))
    running = await until(emu, lambda: both_running(emu), node)
    pods = running["run"]["pods"]
    assert [(p["index"], p["node"]) for p in pods] == [(0, "node-a"), (1, "node-b")]
    job, = training_jobs(emu)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    service, = [s for s in objs(emu, "v1/services")]
    assert spec["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["metadata"]["ownerReferences"][0]["kind"] == "SFTJob"
    for obj in (job, service):
        kubernetes_validate.validate({k: v for k, v in obj.items() if k != "status"}, "1.32.0", strict=True)
    status = await until(emu, lambda: phase(emu) == "Succeeded" and status_of(emu, "tiny"), node)
    folder = node.volume("adapters") / NS / "tiny" / status["run"]["id"]
    result = json.loads((folder / "result.json").read_text())
    # 96 rows, 4 per process and step, 2 processes: 12 steps an epoch
    assert result["steps"] == 40 and result["epochs"] == round(40 / 12, 4)
    assert status["result"]["steps"] == 40 and status["result"]["adapterPath"].endswith("/adapter")
    assert sorted(p.name for p in (folder / "adapter").iterdir()) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "provenance.json", "README.md",
         "tokenizer.json", "tokenizer_config.json", "training_args.bin"])
    assert status["plan"]["gpus"] == 0 and status["plan"]["nodes"] == 2 and status["plan"]["totalSteps"] == 40
    assert condition(status, "Succeeded")["status"] == "True" and len(trainer_pods(emu)) == 2
    assert result["distribution"] == {"nodes": 2, "processes": 2, "strategy": "DataParallel"}


@pytest.mark.parametrize("index", [1, 0], ids=["worker", "rendezvous-host"])
async def test_a_pod_killed_mid_run_is_replaced_and_the_group_resumes_from_its_checkpoint(cluster, index):
    """Pod 1 lost: pod 0 keeps the rendezvous and restarts its processes in place (torchrun), the Job replaces
    pod 1, the group meets again. Pod 0 lost: the rendezvous goes with it, pod 1 stops as PeerLost (not counted),
    the Job replaces both. Either way one failure counts and training resumes from the latest checkpoint."""
    emu, node, _ = cluster
    await apply(emu, two_nodes(steps=60, save=10, validation=False))
    await until(emu, lambda: logged_step(emu, node) >= 12, node)  # past the checkpoint of step 10
    victim = [p for p in trainer_pods(emu) if p["metadata"]["annotations"][
        "batch.kubernetes.io/job-completion-index"] == str(index)][0]["metadata"]["name"]
    node.kill(NS, victim)
    status = await until(emu, lambda: phase(emu) == "Succeeded" and status_of(emu, "tiny"), node)
    folder = node.volume("adapters") / NS / "tiny" / status["run"]["id"]
    result = json.loads((folder / "result.json").read_text())
    assert result["resumedFromStep"] >= 10, "the group started over instead of resuming"
    assert result["steps"] == 60
    job, = training_jobs(emu)
    assert job["status"]["failed"] == 1, "one pod was lost: one failure counts against backoffLimit"
    failed = [p for p in trainer_pods(emu) if p["status"]["phase"] == "Failed"]
    assert victim in [p["metadata"]["name"] for p in failed]
    assert all(p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == ExitCode.PEER_LOST
               for p in failed if p["metadata"]["name"] != victim), "the survivor stopped only for its lost peer"


async def test_kueue_admits_both_pods_at_once_or_neither(cluster, kueue):
    """Gang admission: a queue with CPU for one pod holds the two-node run whole (no pod starts alone); with CPU for
    two, both start together and the run trains."""
    emu, node, _ = cluster
    await kueue.queue("cpus", {"default": {"cpu": "1", "memory": "8Gi"}}, [(NS, "team-a")])
    doc = two_nodes(steps=8, validation=False)
    doc["spec"]["queueName"] = "team-a"
    await apply(emu, doc)
    queued = await until(emu, lambda: phase(emu) == "Queued" and "maximum capacity" in status_of(emu, "tiny").get(
        "message", "") and status_of(emu, "tiny"), node)
    # Kueue counts the group: two pods of 1 CPU
    assert "insufficient quota for cpu in flavor default, request > maximum capacity (2 > 1)" in queued["message"]
    assert trainer_pods(emu) == []
    await asyncio.sleep(3)
    assert trainer_pods(emu) == [] and phase(emu) == "Queued", "never half a group"
    workload = objs(emu, "kueue.x-k8s.io/v1beta2/workloads")[0]
    assert workload["spec"]["podSets"][0]["count"] == 2
    resp = await emu.patch("/apis/kueue.x-k8s.io/v1beta2/clusterqueues/cpus", json={"spec": {"resourceGroups": [
        {"coveredResources": ["cpu", "memory"], "flavors": [{"name": "default", "resources": [
            {"name": "cpu", "nominalQuota": "2"}, {"name": "memory", "nominalQuota": "8Gi"}]}]}]}},
        headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status == 200, await resp.text()
    await until(emu, lambda: both_running(emu) or phase(emu) == "Succeeded", node)
    status = await until(emu, lambda: phase(emu) == "Succeeded" and status_of(emu, "tiny"), node)
    assert status["result"]["steps"] == 8 and len(trainer_pods(emu)) == 2
