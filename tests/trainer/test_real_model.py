"""The trainer on a real pretrained chat model, SmolLM2-135M-Instruct (installed from PyPI, nothing downloaded):
the loss falls on the answers only, and the model's Hub id works the same way as its folder. The evaluation on the
real model (held-out answers before, few-shot and after) is asserted on the demo's run
(tests/trainer/test_local_run.py), which trains it further than a test here would."""

import json
import os
import subprocess
import sys

from sftop_trainer import taskapi
from sftop_trainer.config import TrainerConfig
from sftop_trainer.progress import Progress
from sftop_trainer.train import build_trainer


def config(smollm2, tmp_path, **over) -> dict:
    train, test = taskapi.split(400, 16, seed=3)
    data = taskapi.write_jsonl(train, tmp_path / "data" / "train.jsonl")
    held_out = taskapi.write_jsonl(test, tmp_path / "data" / "test.jsonl")
    cfg = {"model": {"name": str(smollm2)}, "dataset": {"path": str(data), "evalPath": str(held_out)},
           "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
           "training": {"maxSteps": 12, "learningRate": 3e-3, "perDeviceTrainBatchSize": 8,
                        "perDeviceEvalBatchSize": 16, "loggingSteps": 4, "saveSteps": 12,
                        "gradientCheckpointing": False},
           "evaluation": {"prompts": 16, "samples": 3},
           "output": {"dir": str(tmp_path / "out")}, "progress": {"port": 0}}
    cfg.update(over)
    return cfg


def test_the_real_template_trains_on_the_answer_after_the_inference_prompt(smollm2, smollm2_tokenizer, tmp_path):
    cfg = TrainerConfig.model_validate(config(smollm2, tmp_path))
    trainer, tokenizer, data = build_trainer(cfg, Progress())
    report, eval_rows = data.report, data.eval_rows
    assert report.loss == "assistant turns, found by rendering each turn with the chat template"
    row, raw = trainer.eval_dataset[0], eval_rows[0]["messages"]
    trained = [i for i, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert tokenizer.decode(trained) == raw[-1]["content"] + "<|im_end|>"
    prompt = smollm2_tokenizer.apply_chat_template(raw[:-1], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
    assert row["input_ids"] == list(prompt) + trained


def test_the_hub_id_works_like_the_folder(smollm2, tmp_path):
    """Where the Hub is reachable the model is `HuggingFaceTB/SmolLM2-135M-Instruct`: the same run by that id, from a
    Hub cache holding the packaged files, trains exactly as from the folder."""
    from sftop_trainer import packaged

    hub_cache = tmp_path / "hub"
    packaged.seed_hub_cache(hub_cache, smollm2)
    losses = {}
    for name in (str(smollm2), packaged.HUB_ID):
        folder = tmp_path / name.replace("/", "_")
        cfg = config(smollm2, folder, model={"name": name, "revision": "main"} if "/" in name and name[0] != "/"
                     else {"name": name})
        cfg["training"].update(maxSteps=2, loggingSteps=1, saveSteps=2)
        cfg["evaluation"] = {"answers": False, "baseline": False}
        path = folder / "config.json"
        path.write_text(json.dumps(cfg))
        env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2",
               "SFTOP_TERMINATION_LOG": str(folder / "term")}
        proc = subprocess.run([sys.executable, "-m", "sftop_trainer", "--config", str(path), "--no-progress-bar"],
                              env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:]
        result = json.loads((folder / "out" / "result.json").read_text())
        assert result["model"]["name"] == name
        losses[name] = (result["firstLoss"], result["finalLoss"])
    assert losses[str(smollm2)] == losses[packaged.HUB_ID]
