"""Retraining as a GitOps pipeline drives it, with a promotion gate (spec.promotion): each commit changes the
manifest, the run trains in its pod, and the stable path `<claim>/team-a/tiny/promoted` holds the adapter serving
reads. v1 is promoted; v2 (a fifth of its answers corrupted) trains, fails its gate and leaves v1 promoted, unhealthy
for Argo CD, Flux and kstatus; v3 (clean data, more steps) is promoted; a pin rolls back to v1 without training."""

import copy
import json
import os
import random
from pathlib import Path

import yaml

from harness import argocd, flux, kstatus
from harness.cluster import NS, condition, objs, status_of
from sftop_trainer import taskapi
from test_end_to_end import kubectl, manifest, until

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "examples/argocd/resource_customizations/sftop.dev/SFTJob/health.lua").read_text()
FLUX = yaml.safe_load((ROOT / "examples/flux/kustomization.yaml").read_text())


def gitops(version: dict) -> dict:
    """The manifest as a commit leaves it."""
    doc = manifest(steps=version.get("steps", 12), save=100, data=version.get("data", "tasks.jsonl"),
                   eval_file="tasks-test.jsonl", validation=False)
    doc["spec"]["promotion"] = {"maximum": {"evalLoss": 50.0}, "tolerance": {"meanTokenAccuracy": 0.05},
                                **version.get("promotion", {})}
    return doc


def corrupted(rows: list[dict], share: float = 0.2) -> list[dict]:
    """A fifth of the rows with their answers replaced by another row's: the kind of bad commit a gate must stop."""
    out = copy.deepcopy(rows)
    rng = random.Random(5)
    for i in rng.sample(range(len(out)), int(len(out) * share)):
        other = rows[(i + len(rows) // 2) % len(rows)]
        out[i]["messages"][-1]["content"] = other["messages"][-1]["content"][::-1]
    return out


def health(emu, name="tiny"):
    obj = next(o for o in objs(emu, "sftop.dev/v1alpha1/sftjobs") if o["metadata"]["name"] == name)
    return (argocd.health(SCRIPT, obj)["status"], kstatus.compute(obj).status,
            flux.evaluate(FLUX["spec"]["healthCheckExprs"][0], obj))


def served(node, folder):
    """What a serving process that resolves the stable path sees: the run whose adapter it is."""
    real = os.path.realpath(node.volume("adapters") / folder)
    return json.loads(open(os.path.join(real, "provenance.json")).read())["runId"]


async def settled(emu, node, before=()):
    """The status once a run not in `before` has ended and its gate has decided."""
    def done():
        s = status_of(emu, "tiny")
        if (s.get("run") or {}).get("id") in before or s.get("phase") not in ("Succeeded", "Failed"):
            return None
        return (s.get("phase") == "Failed" or (condition(s, "Promoted") or {}).get("status") in ("True", "False")) and s
    return await until(emu, done, node)


async def test_a_gated_gitops_pipeline_promotes_refuses_a_worse_run_promotes_a_better_one_and_rolls_back(cluster,
                                                                                                         tmp_path):
    emu, node, _ = cluster

    async def commit(version: dict) -> None:
        """The pipeline: the manifest in git, applied as `kubectl apply` applies it."""
        path = tmp_path / "sftjob.yaml"
        path.write_text(yaml.safe_dump(gitops(version)))
        said = await kubectl(emu, "apply", "--validate=false", "-f", str(path))
        assert "sftjob.sftop.dev/tiny" in said, said

    rows = [json.loads(line) for line in (node.volume("data") / "tasks.jsonl").read_text().splitlines()]
    taskapi.write_jsonl(corrupted(rows), node.volume("data") / "tasks-corrupt.jsonl")
    stable = f"{NS}/tiny/promoted"

    await commit({})
    v1 = await settled(emu, node)
    assert v1["phase"] == "Succeeded", v1.get("message")
    assert condition(v1, "Promoted")["status"] == "True", condition(v1, "Promoted")
    v1_id = v1["run"]["id"]
    assert v1["promoted"]["runId"] == v1_id and v1["promoted"]["path"] == f"adapters:{stable}"
    assert v1["result"]["evaluation"]["parity"]["differing"] == 0
    assert served(node, stable) == v1_id
    assert json.loads(v1["promoted"]["serving"]["vllmLoraModules"])["path"] == f"/adapters/{stable}"
    assert v1["result"]["serving"]["path"] == stable  # the serving config names the stable path, never a run
    assert health(emu) == ("Healthy", "Current", "Current")

    await commit({"data": "tasks-corrupt.jsonl"})
    v2 = await settled(emu, node, before=(v1_id,))
    assert v2["phase"] == "Succeeded", v2.get("message")
    gate = condition(v2, "Promoted")
    assert gate["status"] == "False" and gate["reason"] == "Regressed", gate
    assert "evalLoss" in gate["message"] and f"the promoted adapter is still run {v1_id}'s" in gate["message"]
    assert v2["result"]["evalLoss"] > v1["result"]["evalLoss"]
    assert v2["promoted"]["runId"] == v1_id and served(node, stable) == v1_id
    assert health(emu) == ("Degraded", "Failed", "Failed")
    assert condition(v2, "Ready")["status"] == "False" and condition(v2, "Ready")["reason"] == "Regressed"

    await commit({"steps": 40})
    v3 = await until(emu, lambda: (s := status_of(emu, "tiny"))["run"]["id"] not in (v1_id, v2["run"]["id"])
                     and (s.get("promoted") or {}).get("runId") == s["run"]["id"] and s, node)
    v3_id = v3["run"]["id"]
    assert v3["result"]["evalLoss"] < v1["result"]["evalLoss"]
    assert v3["promoted"]["replaced"] == v1_id and served(node, stable) == v3_id
    assert health(emu) == ("Healthy", "Current", "Current")

    await commit({"steps": 40, "promotion": {"pin": v1_id}})
    back = await until(emu, lambda: (s := status_of(emu, "tiny")).get("promoted", {}).get("runId") == v1_id and s,
                       node)
    assert back["run"]["id"] == v3_id, "a pin trains nothing"
    assert back["promoted"]["pinned"] is True and back["promoted"]["replaced"] == v3_id
    assert condition(back, "Promoted")["reason"] == "Pinned" and served(node, stable) == v1_id
    # every run's own folder is where it was
    for rid in (v1_id, v2["run"]["id"], v3_id):
        assert (node.volume("adapters") / NS / "tiny" / rid / "adapter" / "adapter_model.safetensors").is_file()
    promotions = [j for j in objs(emu, "batch/v1/jobs")
                  if j["metadata"]["labels"]["app.kubernetes.io/component"] == "promotion"]
    assert len(promotions) == 3  # v1, v3, the pin: one Job per switch

    await commit({"steps": 40})  # the pin reverted in git: the gate decides again
    forward = await until(emu, lambda: (s := status_of(emu, "tiny")).get("promoted", {}).get("runId") == v3_id and s,
                          node)
    assert served(node, stable) == v3_id and not forward["promoted"].get("pinned")
