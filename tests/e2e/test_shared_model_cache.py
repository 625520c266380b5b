"""Weights arrive before the GPUs do: with the SFTPolicy's cacheClaim, the Validating phase fills the shared model
cache on a CPU from the Hub (a stand-in huggingface_hub's own client downloads from), the training pod reads the
cache offline at the commit validation resolved, and a second run of the same model downloads nothing."""

import copy

import pytest

from harness.cluster import NS, apply, objs, status_of
from sftop import policy
from test_end_to_end import manifest, phase, until


@pytest.mark.parametrize("cluster", [{"policy": "default", "hub": True}], indirect=True)
async def test_two_runs_of_one_model_fill_the_cache_once_on_a_cpu_and_train_from_it_offline(cluster, tiny_model):
    emu, node, operator = cluster
    hub = operator.hub
    node.hub_offline = False  # the pods reach the stand-in (and nothing else)
    commit = hub.add("acme/tiny", tiny_model)
    size = sum(len(d) for d in hub.repos["acme/tiny"].files.values())
    resp = await emu.post(f"/api/v1/namespaces/{NS}/persistentvolumeclaims", json={
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "hf-cache"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "100Gi"}}}})
    assert resp.status == 201, await resp.text()
    resp = await emu.post("/apis/sftop.dev/v1alpha1/sftpolicies", json=policy.policy_object({"cacheClaim": "hf-cache"}))
    assert resp.status == 201, await resp.text()

    first = manifest(steps=4, save=4)
    first["spec"]["model"] = {"hub": {"id": "acme/tiny"}}
    await apply(emu, first)
    status = await until(emu, lambda: phase(emu) == "Succeeded" and status_of(emu, "tiny"), node)
    cache = status["plan"]["cache"]
    assert cache["revision"] == commit and cache["downloadedBytes"] == cache["bytes"] == size and not cache["cached"]
    assert status["run"]["downloadSeconds"] == cache["downloadSeconds"]
    assert status["model"] == f"acme/tiny@{commit[:12]}"
    assert hub.served["acme/tiny"] == size, "validation downloaded the model once; the training pod nothing"
    pods = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"] for p in objs(emu, "v1/pods")
            if p["metadata"]["labels"].get("sftop.dev/sftjob") == "tiny"}
    mount = next(m for m in pods["trainer"]["containers"][0]["volumeMounts"] if m["name"] == "model-cache")
    env = {e["name"]: e.get("value") for e in pods["trainer"]["containers"][0]["env"]}
    assert mount["readOnly"] is True and env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_CACHE"] == mount["mountPath"]
    validation_mount = next(m for m in pods["validation"]["containers"][0]["volumeMounts"] if m["name"] == "model-cache")
    assert not validation_mount.get("readOnly")
    assert (node.volume("hf-cache") / "models--acme--tiny" / "snapshots" / commit / "config.json").exists()

    second = copy.deepcopy(first)
    second["metadata"]["name"] = "again"
    await apply(emu, second)
    again = await until(emu, lambda: status_of(emu, "again").get("phase") == "Succeeded" and status_of(emu, "again"),
                        node)
    assert again["plan"]["cache"]["downloadedBytes"] == 0 and again["plan"]["cache"]["cached"] is True
    assert hub.served["acme/tiny"] == size, "the second run downloaded nothing"
