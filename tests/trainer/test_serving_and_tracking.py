"""The adapter a serving stack loads without editing, and the run a tracking server receives."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from harness.vllm import LoRALoadError, check_adapter
from sftop_trainer import packaged, taskapi


LOAD_BY_ID = """
import json, sys, torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
adapter, folder = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(adapter)
ids = tokenizer.apply_chat_template([{"role": "user", "content": "Add a task to call Sam tomorrow"}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
by_id = AutoPeftModelForCausalLM.from_pretrained(adapter)  # the base comes from base_model_name_or_path
base = AutoModelForCausalLM.from_pretrained(folder)
with torch.no_grad():
    plain = base(ids).logits
    by_folder = PeftModel.from_pretrained(base, adapter)(ids).logits
    loaded = by_id(ids).logits
print(json.dumps({"base": by_id.peft_config["default"].base_model_name_or_path,
                  "same": (loaded - by_folder).abs().max().item(), "changed": (by_folder - plain).abs().max().item()}))
"""


def test_a_real_models_adapter_loads_by_hub_id_and_passes_vllms_checks(smollm2, train_config, train, tmp_path):
    """SmolLM2 from its folder, declared as the copy of HuggingFaceTB/SmolLM2-135M-Instruct: the adapter names the
    Hub id as its base, PEFT loads it by that id (the folder seeds the Hub cache), and vLLM's loader would take it."""
    data = tmp_path / "data" / "train.jsonl"
    taskapi.write_jsonl(taskapi.rows(16), data)
    run = train(train_config(model={"name": str(smollm2), "hubId": packaged.HUB_ID}, dataset={"path": str(data)},
                             lora={"r": 8, "alpha": 16}, evaluation={"baseline": False},
                             training={"maxSteps": 2, "perDeviceTrainBatchSize": 2, "learningRate": 1e-3,
                                       "maxLength": 256}))
    assert run.code == 0, run.message
    adapter = run.out / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == packaged.HUB_ID
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    serving = run.result["serving"]
    assert serving["loraRank"] == 8 and serving["vllmMaxLoraRank"] == 8 and serving["baseModel"] == packaged.HUB_ID

    hub = tmp_path / "hub"
    packaged.seed_hub_cache(hub, smollm2)
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", LOAD_BY_ID, str(adapter), str(smollm2)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["base"] == packaged.HUB_ID
    assert loaded["same"] < 1e-4 and loaded["changed"] > 1e-3, "by id, the same adapted model as from the folder"

    assert check_adapter(adapter, max_lora_rank=serving["vllmMaxLoraRank"])["r"] == 8
    with pytest.raises(LoRALoadError, match="LoRA rank 8 is greater than max_lora_rank 1"):
        check_adapter(adapter, max_lora_rank=1)


def test_the_vllm_checks_refuse_what_vllm_refuses(train_config, train, tmp_path):
    run = train(train_config(lora={"r": 32, "modulesToSave": ["lm_head"]}))
    assert run.code == 0
    adapter = run.out / "adapter"
    with pytest.raises(LoRALoadError) as refused:
        check_adapter(adapter, max_lora_rank=16)
    assert "modules_to_save" in str(refused.value) and "LoRA rank 32 is greater than max_lora_rank 16" in str(
        refused.value)
    assert run.result["serving"]["vllmMaxLoraRank"] == 32


# ------------------------------------------------------------------------------------------- MLflow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server (`mlflow server`, SQLite backend) on a loopback port."""
    port = free_port()
    root = tmp_path / "mlflow"
    root.mkdir()
    log = (root / "server.log").open("w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root",
                             str(root / "artifacts"), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=root, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("mlflow server did not start: " + (root / "server.log").read_text()[-2000:])
        time.sleep(0.5)
    try:
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def test_mlflow_receives_the_runs_parameters_and_metrics(mlflow_server, train_config, train, tmp_path):
    evals = tmp_path / "data" / "eval.jsonl"
    taskapi.write_jsonl(taskapi.rows(8, seed=5), evals)
    data = tmp_path / "data" / "train.jsonl"
    taskapi.write_jsonl(taskapi.rows(64), data)
    run = train(train_config(dataset={"path": str(data), "evalPath": str(evals)}, evaluation={"prompts": 2},
                             run={"id": "5e5e5e5e", "sftjob": "chat", "namespace": "team-a"},
                             tracking={"runName": "chat-5e5e5e5e",
                                       "mlflow": {"trackingUri": mlflow_server, "experiment": "task-api"}}))
    assert run.code == 0, run.message
    assert "MLFLOW_TRACKING_URI" not in os.environ, "the run's settings do not outlive it"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("task-api")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    tracked = runs[0]
    assert tracked.info.run_name == "chat-5e5e5e5e" and tracked.info.status == "FINISHED"
    assert tracked.data.tags["sftop.run"] == "5e5e5e5e" and tracked.data.tags["sftop.sftjob"] == "team-a/chat"
    assert float(tracked.data.params["learning_rate"]) == pytest.approx(3e-3)
    assert tracked.data.params["max_steps"] == "8"
    losses = client.get_metric_history(tracked.info.run_id, "loss")
    logged = [e for e in json.loads((run.out / "checkpoints" / "checkpoint-8" / "trainer_state.json")
                                    .read_text())["log_history"] if "loss" in e]
    assert [m.step for m in losses] == [e["step"] for e in logged]
    assert [m.value for m in losses] == pytest.approx([e["loss"] for e in logged], rel=1e-5)
    evaluated = client.get_metric_history(tracked.info.run_id, "eval_loss")
    assert evaluated and evaluated[-1].value == pytest.approx(run.result["evalLoss"], rel=1e-4)


def test_weights_and_biases_receives_the_runs_losses(train_config, train, tmp_path, monkeypatch):
    """W&B in offline mode (no server can be reached here): the run's record file holds its project, name and
    every logged loss, as `wandb sync` would upload them."""
    import re

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = train(train_config(run={"id": "77aa77aa", "sftjob": "chat", "namespace": "team-a"},
                             tracking={"runName": "chat-77aa77aa", "wandb": {"project": "task-api"}}))
    assert run.code == 0, run.message
    records = list((tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(records) == 1
    logged = [e["loss"] for e in json.loads((run.out / "checkpoints" / "checkpoint-8" / "trainer_state.json")
                                            .read_text())["log_history"] if "loss" in e]

    def sent() -> set[float]:
        return {float(v) for v in re.findall(rb"train/loss\x82\x01.([0-9.e+-]+)", records[0].read_bytes())}

    # W&B's own service process writes the record file: it may still be flushing when the run has finished.
    deadline = time.monotonic() + 60
    while sent() != set(logged) and time.monotonic() < deadline:
        time.sleep(0.5)
    data = records[0].read_bytes()
    assert b"task-api" in data and b"chat-77aa77aa" in data
    assert sent() == set(logged), "every logged training loss, as W&B received it"
