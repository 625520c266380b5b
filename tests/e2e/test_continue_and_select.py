"""With the real trainer in its pods: checkpoints in status while a run trains, the best one as the result with a
serving handoff, and a second SFTJob that continues the first one's adapter, checked before it trains."""

import json

from harness.cluster import apply, condition, status_of, wait_for
from test_end_to_end import LIMIT, manifest, trainer_pods, training_jobs


def variant(name, steps, **spec):
    job = manifest(steps=steps, save=10)
    job["metadata"]["name"] = name
    job["spec"].update(spec)
    return job


async def until(emu, name, predicate):
    return await wait_for(lambda: predicate(status_of(emu, name)) and status_of(emu, name), timeout=LIMIT,
                          interval=0.2, explain=lambda: json.dumps(status_of(emu, name))[:1500])


async def test_checkpoints_best_result_serving_and_a_warm_started_successor(cluster):
    emu, node, _ = cluster
    await apply(emu, manifest(steps=40, save=10, eval_file="tasks-test.jsonl", evalSteps=10, resultCheckpoint="best",
                              saveTotalLimit=2))
    live = await until(emu, "tiny", lambda s: s.get("phase") == "Running" and s.get("checkpoints"))
    assert live["checkpoints"][0]["step"] == 10 and live["checkpoints"][0]["evalLoss"] > 0
    done = await until(emu, "tiny", lambda s: s.get("phase") in ("Succeeded", "Failed"))
    assert done["phase"] == "Succeeded", done.get("message")
    run, result = done["run"], done["result"]
    steps = [c["step"] for c in done["checkpoints"]]
    best = next(c for c in done["checkpoints"] if c.get("best"))
    assert steps[-2:] == [30, 40] and result["resultStep"] == best["step"]
    assert best["evalLoss"] == min(c["evalLoss"] for c in done["checkpoints"])
    claim, folder = run["outputPath"].split(":")
    serving = result["serving"]
    assert serving["path"] == f"{folder}/adapter" and serving["storageUri"] == f"pvc://{claim}/{folder}/adapter"
    assert serving["baseModel"] == "pvc://models/tiny" and serving["loraRank"] == 16
    assert json.loads(serving["vllmLoraModules"])["path"] == f"/adapters/{folder}/adapter"
    adapter = node.volume(claim) / folder / "adapter"
    assert json.loads((adapter / "provenance.json").read_text())["runId"] == run["id"]
    first = json.loads((node.volume(claim) / folder / "result.json").read_text())

    await apply(emu, variant("tiny-v2", 10, warmStart={"sftJob": "tiny"}))
    second = await until(emu, "tiny-v2", lambda s: s.get("phase") in ("Succeeded", "Failed"))
    assert second["phase"] == "Succeeded", second.get("message")
    assert second["run"]["warmStart"] == second["result"]["warmStart"] == f"{claim}:{folder}/adapter"
    claim2, folder2 = second["run"]["outputPath"].split(":")
    continued = json.loads((node.volume(claim2) / folder2 / "result.json").read_text())
    assert continued["firstLoss"] < first["firstLoss"] - 0.5 * (first["firstLoss"] - first["finalLoss"])

    await apply(emu, variant("tiny-r8", 10, warmStart={"sftJob": "tiny"}, lora={"r": 8}))
    refused = await until(emu, "tiny-r8", lambda s: s.get("phase") == "Failed")
    assert condition(refused, "Validated")["reason"] == "InvalidConfig"
    assert "lora.r is 8" in refused["message"]
    assert not [j for j in training_jobs(emu) if j["metadata"]["labels"]["sftop.dev/sftjob"] == "tiny-r8"]
    assert not [p for p in trainer_pods(emu) if p["metadata"]["labels"]["sftop.dev/sftjob"] == "tiny-r8"]
