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


CASES = {
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
