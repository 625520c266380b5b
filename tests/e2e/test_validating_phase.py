"""The Validating phase with the real trainer in its pod: each mistake a GPU pod used to find after queueing and
loading the model ends the run during validation, with the trainer's reason, and no training Job ever exists."""

import json

import pytest

from harness.cluster import apply, condition, requests, status_of
from test_end_to_end import manifest, phase, trainer_pods, training_jobs, until


def rows_without_assistant(node):
    rows = [{"messages": [{"role": "user", "content": f"hello {i}"}]} for i in range(20)]
    (node.volume("data") / "questions.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    return manifest(data="questions.jsonl")


def unknown_columns(node):
    rows = [{"question": f"q{i}", "reply": f"a{i}"} for i in range(20)]
    (node.volume("data") / "odd.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    return manifest(data="odd.jsonl")


def bad_target_module(node):
    job = manifest()
    job["spec"]["lora"] = {"targetModules": ["q_proj", "query_key_value"]}
    return job


def missing_template(node):
    import shutil

    folder = node.volume("models") / "plain"
    shutil.copytree(node.volume("models") / "tiny", folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    job = manifest()
    job["spec"]["model"]["pvc"]["path"] = "plain"
    return job


def cannot_fit(node):
    job = manifest()
    job["spec"]["resources"].update(gpus=1, gpuMemory="64Mi")
    return job


def evaluation_copied_from_training(node):
    """An evaluation file whose rows are training rows: its scores would measure memory (leakage fails by default)."""
    from sftop_trainer import taskapi

    rows = taskapi.rows(60, seed=4)
    (node.volume("data") / "copied.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    (node.volume("data") / "copied-test.jsonl").write_text("\n".join(map(json.dumps, rows[10:18])) + "\n")
    return manifest(data="copied.jsonl", eval_file="copied-test.jsonl")


CASES = {
    "evaluation copied from training": (evaluation_copied_from_training, "DataQuality",
                                        "leakage in eval (copied-test.jsonl): 8 of 8 evaluation row(s) repeat a "
                                        "training prompt or row exactly"),
    "no assistant turn": (rows_without_assistant, "InvalidData", "no assistant turn"),
    "unknown columns": (unknown_columns, "InvalidData", "question"),
    "bad target module": (bad_target_module, "InvalidConfig", "query_key_value"),
    "missing chat template": (missing_template, "InvalidConfig", "chatTemplate"),
    "cannot fit the GPU": (cannot_fit, "InsufficientGPUMemory", "would fit"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_mistakes_fail_during_validation_before_any_gpu_job(cluster, case):
    emu, node, _ = cluster
    make, reason, words = CASES[case]
    await apply(emu, make(node))
    status = await until(emu, lambda: phase(emu) == "Failed" and status_of(emu, "tiny"), node)
    failed = condition(status, "Failed")
    assert failed["reason"] == reason, status
    assert words in failed["message"] and status["message"] == failed["message"]
    assert condition(status, "Validated")["status"] == "False"
    assert not training_jobs(emu) and len(requests(emu, "POST", "/jobs")) == 1, "only the validation Job exists"
    assert len(trainer_pods(emu, "validation")) == 1


@pytest.mark.parametrize("cluster", [{"policy": "default"}], indirect=True)
async def test_a_gpu_profile_places_the_run_and_its_plan_checks_the_profiles_gpu_memory(cluster):
    """`resources: {profile: ...}`: the validation pod plans against the profile's GPU memory, and a run that does
    not fit it fails there, naming the profile, before any GPU is asked for."""
    from sftop import policy

    emu, node, _ = cluster
    resp = await emu.post("/apis/sftop.dev/v1alpha1/sftpolicies", json=policy.policy_object({"profiles": {
        "small-gpu": {"gpuMemory": "64Mi", "nodeSelector": {"pool": "small"}}}}))
    assert resp.status == 201, await resp.text()
    job = manifest()
    job["spec"]["resources"].update(gpus=1, profile="small-gpu")
    await apply(emu, job)
    status = await until(emu, lambda: phase(emu) == "Failed" and status_of(emu, "tiny"), node)
    failed = condition(status, "Failed")
    assert failed["reason"] == "InsufficientGPUMemory" and "GPU profile small-gpu: 64Mi" in failed["message"], status
    assert status["plan"]["memory"]["gpuMemory"] < 1, status["plan"]["memory"]
    assert not training_jobs(emu)


async def test_data_quality_warnings_let_the_run_train_and_are_said_once(cluster):
    """Exact duplicates warn by default: the run goes on to train, its plan names the rows, the DataQuality
    condition says what was found and one Warning event tells `kubectl describe`."""
    from harness.cluster import objs
    from sftop_trainer import taskapi

    emu, node, _ = cluster
    rows = taskapi.rows(60, seed=4)
    rows += rows[:3]
    (node.volume("data") / "repeated.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    await apply(emu, manifest(steps=4, save=4, data="repeated.jsonl"))
    status = await until(emu, lambda: phase(emu) == "Succeeded" and status_of(emu, "tiny"), node)
    data = status["plan"]["data"]
    copies = next(f for f in data["findings"] if f["check"] == "duplicates")
    assert copies["rows"] == [61, 62, 63] and copies["action"] == "warn"
    quality = condition(status, "DataQuality")
    assert quality["status"] == "False" and quality["reason"] == "Warnings"
    assert "duplicates (3 train rows" in quality["message"]
    warnings = [e for e in objs(emu, "v1/events") if e["reason"] == "DataQuality"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert status["plan"]["rows"]["train"] == 63  # warned about, not dropped
