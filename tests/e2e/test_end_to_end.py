"""From an applied SFTJob to an adapter on the volume and a Succeeded status: the operator, the real trainer on
the CPU, and a node that runs its pods (tests/harness/node.py)."""

import asyncio
import json

import yaml

from harness.cluster import NS, apply, condition, kubectl, objs, patch, requests, status_of, wait_for
from sftop.render import COMPONENT_LABEL

PATH = f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/tiny"


def manifest(steps=40, save=10, data="tasks.jsonl", eval_file=None, validation=True, **training):
    dataset = {"pvc": {"claimName": "data", "path": data}}
    if eval_file:
        dataset["evalSplit"] = {"file": eval_file}
    return {"apiVersion": "sftop.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "tiny", "namespace": NS},
            "spec": {"model": {"pvc": {"claimName": "models", "path": "tiny"}},
                     "dataset": dataset,
                     "evaluation": {"prompts": 4, "maxNewTokens": 24},
                     "training": {"maxSteps": steps, "learningRate": 3.0e-3, "loggingSteps": 1, "saveSteps": save,
                                  "perDeviceTrainBatchSize": 4, **training},
                     "resources": {"gpus": 0, "cpu": 1, "memory": "2Gi"},
                     "runPolicy": {"backoffLimit": 2},
                     "validation": {"enabled": validation},
                     "output": {"pvc": {"claimName": "adapters", "create": {"size": "1Gi"}}}}}


# Generous limits: a shared CI machine may be several times slower than a laptop; a hang still fails.
LIMIT = 240


async def until(emu, condition, node=None):
    def explain():
        logs = ""
        if node is not None:
            logs = " | ".join(f"{p.name}: {(p / 'log').read_text(errors='replace')[-600:]}"
                              for p in sorted((node.root / "pods").glob("*")) if (p / "log").exists())
        return f"status {json.dumps(status_of(emu, 'tiny'))[:1500]} pods {[q['metadata']['name'] for q in objs(emu, 'v1/pods')]} {logs}"

    return await wait_for(condition, timeout=LIMIT, interval=0.2, explain=explain)


def phase(emu):
    return status_of(emu, "tiny").get("phase")


def trainer_pods(emu, component="trainer"):
    return sorted((p for p in objs(emu, "v1/pods") if p["metadata"]["labels"][COMPONENT_LABEL] == component),
                  key=lambda p: p["metadata"]["name"])


def logged_step(emu, node, name="tiny") -> int:
    """The latest step a training pod of the run logged."""
    return max((node.logged_step(p["metadata"]["name"]) for p in trainer_pods(emu)
                if p["metadata"]["labels"]["sftop.dev/sftjob"] == name), default=0)


def training_jobs(emu):
    return [j for j in objs(emu, "batch/v1/jobs") if j["metadata"]["labels"][COMPONENT_LABEL] == "trainer"]


async def test_kubectl_apply_runs_to_succeeded_with_progress_result_and_adapter(cluster, tmp_path):
    emu, node, _ = cluster
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(manifest(steps=60, eval_file="tasks-test.jsonl")))
    # kubectl cannot download OpenAPI from the emulated server: client-side validation off (the server validates)
    assert "sftjob.sftop.dev/tiny created" in await kubectl(emu, "apply", "--validate=false", "-f", str(path))

    def mid_run_progress():
        p = status_of(emu, "tiny").get("progress") or {}
        return p if p and 0 < p.get("percent", 0) < 100 and p.get("loss") is not None and p.get("eta") else None

    validating = await until(emu, lambda: phase(emu) == "Validating" and status_of(emu, "tiny"), node)
    assert condition(validating, "Validated")["status"] == "Unknown" and not training_jobs(emu)
    progress = await until(emu, mid_run_progress, node)
    table = await kubectl(emu, "get", "sftjobs")
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "MODEL", "METHOD", "PROGRESS", "LOSS", "ETA", "PROFILE", "AGE"]
    cells = row.split()
    assert cells[:4] == ["tiny", "Running", "pvc:models/tiny", "lora"] and 0 < int(cells[4]) < 100
    assert float(cells[5]) > 0 and cells[6].endswith("s") and progress["step"] > 0
    status = await until(emu, lambda: phase(emu) == "Succeeded" and status_of(emu, "tiny"), node)
    result = status["result"]
    run = status["run"]
    assert result["steps"] == 60 and result["trainLoss"] > 0
    # the trainer's evaluation on the held-out file reaches the status through the termination message
    evaluation = result["evaluation"]
    assert evaluation["prompts"] == 4 and evaluation["after"]["step"] == 60
    assert evaluation["after"]["evalLoss"] < evaluation["before"]["evalLoss"]
    assert 0 <= evaluation["after"]["exactMatch"] <= 1 and 0 <= evaluation["after"]["validJson"] <= 1
    assert len(evaluation["samples"]) == 3 and all(s["expected"].startswith("{") for s in evaluation["samples"])
    assert result["adapterPath"] == f"adapters:{NS}/tiny/{run['id']}/adapter"
    folder = node.volume("adapters") / NS / "tiny" / run["id"]
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    saved = json.loads((folder / "result.json").read_text())
    assert saved["steps"] == 60
    # the plan, made before any GPU was asked for, said what the run then did
    plan = status["plan"]
    assert plan["totalSteps"] == saved["steps"] and plan["samples"] == saved["data"]["rowsTrain"] == 96
    assert plan["rows"] == {"read": 96, "train": 96, "eval": 8, "skipped": 0}
    assert plan["trainableParameters"] == saved["trainableParameters"]
    assert plan["totalParameters"] == saved["totalParameters"]
    assert plan["memory"]["perGpu"] > 0 and "fits" not in plan["memory"]
    assert condition(status, "Validated")["status"] == "True"
    assert not (folder / "prepared").exists(), "the prepared data is removed once the run succeeded"
    assert status["progress"]["percent"] == 100 and run["attempts"] == 1
    assert condition(status, "Succeeded")["status"] == "True"
    described = await kubectl(emu, "describe", "sftjob", "tiny")
    events = described.split("Events:", 1)[1]
    for reason in ("Validating", "Validated", "Training", "Succeeded"):
        assert reason in events, described
    # the wait for the pod: its container starting, unless the pod was already running at the operator's next
    # look (a busy machine, or a cached image), as on any cluster
    assert "PodStarting" in events or "WaitingForPod" in events, described
    assert "Succeeded" in (await kubectl(emu, "get", "sft", "tiny")).splitlines()[1]


async def test_killed_pod_is_retried_and_resumes_from_its_checkpoint(cluster):
    emu, node, _ = cluster
    await apply(emu, manifest(steps=60, save=10))
    await until(emu, lambda: logged_step(emu, node) >= 12, node)  # past the checkpoint of step 10
    first = trainer_pods(emu)[0]["metadata"]["name"]
    node.kill(NS, first)
    status = await until(emu, lambda: phase(emu) == "Succeeded" and status_of(emu, "tiny"), node)
    assert status["run"]["attempts"] == 2
    folder = node.volume("adapters") / NS / "tiny" / status["run"]["id"]
    result = json.loads((folder / "result.json").read_text())
    assert result["resumedFromStep"] >= 10, "the retry started over instead of resuming"
    assert result["steps"] == 60


async def test_suspend_checkpoints_and_resume_continues_from_that_step(cluster):
    emu, node, _ = cluster
    # long enough to be suspended mid-run: the suspension reaches the trainer within a second or two, a few dozen
    # steps of the tiny model on an idle machine
    await apply(emu, manifest(steps=300, save=1000))
    await until(emu, lambda: logged_step(emu, node) >= 3, node)
    await patch(emu, PATH, {"spec": {"suspend": True}})
    await until(emu, lambda: phase(emu) == "Suspended" and not trainer_pods(emu), node)
    run = status_of(emu, "tiny")["run"]
    checkpoints = list((node.volume("adapters") / NS / "tiny" / run["id"] / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1, "saveSteps is 1000: the checkpoint is the one the suspension asked for"
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert stopped_at < 300, "suspended mid-run"
    await patch(emu, PATH, {"spec": {"suspend": False}})
    status = await until(emu, lambda: phase(emu) == "Succeeded" and status_of(emu, "tiny"), node)
    result = json.loads((node.volume("adapters") / NS / "tiny" / run["id"] / "result.json").read_text())
    assert result["resumedFromStep"] == stopped_at > 0 and result["steps"] == 300
    assert status["run"]["id"] == run["id"] and len(training_jobs(emu)) == 1


async def test_operator_restarted_mid_run_finishes_without_a_duplicate_job(cluster):
    emu, node, operator = cluster
    await apply(emu, manifest(steps=80))
    await until(emu, lambda: phase(emu) == "Running", node)
    await operator.stop()
    await asyncio.sleep(2)
    await operator.start()
    await until(emu, lambda: phase(emu) == "Succeeded", node)
    # one validation Job, one training Job, each created once
    assert len(training_jobs(emu)) == 1 and len(requests(emu, "POST", "/jobs")) == 2
    assert len(trainer_pods(emu)) == 1 and len(trainer_pods(emu, "validation")) == 1


def broken_data(node):
    lines = (node.volume("data") / "tasks.jsonl").read_text().splitlines()
    lines[6] = lines[6][:20]
    (node.volume("data") / "broken.jsonl").write_text("\n".join(lines) + "\n")


async def test_data_error_fails_during_validation_with_the_line_and_no_gpu_job(cluster):
    emu, node, _ = cluster
    broken_data(node)
    await apply(emu, manifest(data="broken.jsonl"))
    status = await until(emu, lambda: phase(emu) == "Failed" and status_of(emu, "tiny"), node)
    failed = condition(status, "Failed")
    assert failed["reason"] == "InvalidData" and "line 7" in failed["message"]
    assert condition(status, "Validated")["status"] == "False"
    await asyncio.sleep(1)
    assert not training_jobs(emu) and len(requests(emu, "POST", "/jobs")) == 1, "no training Job was ever created"
    assert len(trainer_pods(emu, "validation")) == 1, "a data error is not retried"


async def test_without_validation_the_gpu_pod_finds_the_data_error_and_does_not_retry(cluster):
    emu, node, _ = cluster
    broken_data(node)
    await apply(emu, manifest(data="broken.jsonl", validation=False))
    status = await until(emu, lambda: phase(emu) == "Failed" and status_of(emu, "tiny"), node)
    failed = condition(status, "Failed")
    assert failed["reason"] == "InvalidData" and "line 7" in failed["message"]
    await asyncio.sleep(1)
    assert len(trainer_pods(emu)) == 1, "a data error is not retried"
    assert status["run"]["attempts"] == 1 and not trainer_pods(emu, "validation")


async def test_kueue_preemption_mid_run_checkpoints_requeues_and_resumes_from_that_step(cluster, kueue):
    """A platform's queue holds one run at a time. A nightly run trains; an urgent run with a higher Kueue priority
    arrives; Kueue preempts the nightly one (its trainer checkpoints on SIGTERM), runs the urgent one, then admits the
    nightly one again, which resumes from the checkpoint and succeeds. The preemption is counted, never a failure."""
    emu, node, _ = cluster
    await kueue.queue("cpus", {"default": {"cpu": "1", "memory": "8Gi"}}, [(NS, "team-a")])
    await kueue.priority_class("nightly", 10)
    await kueue.priority_class("urgent", 1000)
    nightly = manifest(steps=300, save=1000)  # long enough to be preempted mid-run (as the suspended run above)
    nightly["spec"].update(queueName="team-a", workloadPriorityClassName="nightly")
    await apply(emu, nightly)
    await until(emu, lambda: logged_step(emu, node) >= 3, node)
    urgent = manifest(steps=20)
    urgent["metadata"]["name"] = "urgent"
    urgent["spec"].update(queueName="team-a", workloadPriorityClassName="urgent")
    await apply(emu, urgent)

    def preempted():
        s = status_of(emu, "tiny")
        held = condition(s, "Queued") or {}
        return s.get("phase") == "Queued" and held.get("reason") == "Preempted" and not [
            p for p in trainer_pods(emu) if p["metadata"]["labels"]["sftop.dev/sftjob"] == "tiny"] and s

    status = await until(emu, preempted, node)
    assert f"preempted by Kueue for SFTJob {NS}/urgent" in status["message"]
    assert status["run"]["preemptions"] == 1 and condition(status, "Failed") is None
    run = status["run"]
    checkpoints = list((node.volume("adapters") / NS / "tiny" / run["id"] / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1, "saveSteps is 1000: the checkpoint is the one the preemption's SIGTERM asked for"
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert stopped_at < 300, "preempted mid-run"

    await until(emu, lambda: status_of(emu, "urgent").get("phase") == "Succeeded", node)
    status = await until(emu, lambda: phase(emu) == "Succeeded" and status_of(emu, "tiny"), node)
    result = json.loads((node.volume("adapters") / NS / "tiny" / run["id"] / "result.json").read_text())
    assert result["resumedFromStep"] == stopped_at and result["steps"] == 300
    assert status["run"]["preemptions"] == 1 and status["run"]["attempts"] == 2
    assert status["run"]["id"] == run["id"]
    assert len([j for j in training_jobs(emu) if j["metadata"]["labels"]["sftop.dev/sftjob"] == "tiny"]) == 1
    workload = next(w for w in objs(emu, "kueue.x-k8s.io/v1beta2/workloads")
                    if w["metadata"]["name"] == status["run"]["workloadName"])
    assert workload["spec"]["priority"] == 10
