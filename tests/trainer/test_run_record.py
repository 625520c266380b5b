"""What a run leaves behind: checkpoints with their metrics, the best one as the result, early stopping, the loss
watchdog, failed runs' results, the metric history and its plot, provenance and a portable adapter."""

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftop_trainer import history, taskapi


WORDS = "alpha beta gamma delta tidy garage invoice lunch report review plan call write read".split()


def chat_rows(n: int, answer: str, seed: int) -> list[dict]:
    r = random.Random(seed)
    return [{"messages": [{"role": "user", "content": " ".join(r.choice(WORDS) for _ in range(6))},
                          {"role": "assistant", "content": answer}]} for _ in range(n)]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def diverging_eval(tmp_path) -> dict:
    """Training answers "yes indeed", held-out answers "no way" to the same kind of prompt: the more the model
    learns its training answer, the worse the eval loss gets after the first steps, so the best checkpoint is an
    early one and early stopping fires."""
    return {"path": str(write_rows(tmp_path / "data" / "yes.jsonl", chat_rows(64, "yes indeed", 1))),
            "evalPath": str(write_rows(tmp_path / "data" / "no.jsonl", chat_rows(16, "no way", 2)))}


def test_each_kept_checkpoint_is_listed_with_the_metrics_of_its_step(train_config, train, tmp_path):
    evals = write_rows(tmp_path / "data" / "eval.jsonl", [r for r in taskapi.rows(16, seed=7)])
    data = tmp_path / "data" / "train.jsonl"
    taskapi.write_jsonl(taskapi.rows(64), data)
    run = train(train_config(dataset={"path": str(data), "evalPath": str(evals)},
                             training={"maxSteps": 12, "saveSteps": 4, "saveTotalLimit": 2},
                             evaluation={"prompts": 2}))
    assert run.code == 0
    listed = run.result["checkpoints"]
    assert [c["step"] for c in listed] == [8, 12], "the newest saveTotalLimit checkpoints, oldest first"
    logged = {e["step"]: e for e in history.read_history(run.out) if "loss" in e}
    evaluated = {h["step"]: h["evalLoss"] for h in run.result["evaluation"]["history"]}
    for c in listed:
        assert c["complete"] is True and (run.out / c["path"] / "adapter_model.safetensors").is_file()
        assert c["trainLoss"] == pytest.approx(logged[c["step"]]["loss"], rel=1e-6)
        assert c["evalLoss"] == pytest.approx(evaluated[c["step"]], rel=1e-5)
        assert c["epoch"] > 0
    assert run.message["checkpoints"] == listed, "the termination message carries the inventory to the status"


def test_the_best_checkpoint_is_the_result_and_early_stopping_ends_the_run(train_config, train, diverging_eval):
    run = train(train_config(dataset=diverging_eval, evaluation={"prompts": 2},
                             training={"maxSteps": 40, "saveSteps": 4, "evalSteps": 4, "resultCheckpoint": "best",
                                       "earlyStopping": {"patience": 2}}))
    assert run.code == 0, run.message
    r = run.result
    evals = {h["step"]: h["evalLoss"] for h in r["evaluation"]["history"]}
    best = min(evals, key=evals.get)
    assert r["steps"] < 40 and r["steps"] == best + 2 * 4, "stopped two evaluations after the best one"
    assert r["stopReason"].startswith("EarlyStopping") and f"step {best}" in r["stopReason"]
    assert r["resultStep"] == best < r["steps"]
    assert r["evalLoss"] == pytest.approx(evals[best], rel=1e-5) and r["evaluation"]["after"]["step"] == best
    best_entry = next(c for c in r["checkpoints"] if c.get("best"))
    assert best_entry["step"] == best, "the best checkpoint is kept, whatever saveTotalLimit rotates away"
    result = load_file(str(run.out / "adapter" / "adapter_model.safetensors"))
    chosen = load_file(str(run.out / best_entry["path"] / "adapter_model.safetensors"))
    last = load_file(str(run.out / "checkpoints" / f"checkpoint-{r['steps']}" / "adapter_model.safetensors"))
    assert result.keys() == chosen.keys()
    assert all(torch.equal(result[k], chosen[k]) for k in result), "the adapter is the best checkpoint's weights"
    assert not all(torch.equal(result[k], last[k]) for k in result)


def test_best_and_early_stopping_need_evaluation_data(train_config, train):
    run = train(train_config(training={"earlyStopping": {"patience": 1}}))
    assert run.code == 64
    assert "training.earlyStopping" in run.message["message"] and "evaluation data, so set dataset.evalSplit" in run.message["message"]


def test_the_loss_watchdog_fails_a_spiking_run_and_its_result_keeps_what_it_reached(train_config, train):
    run = train(train_config(method="full", training={"maxSteps": 30, "learningRate": 1.0, "maxGradNorm": 0,
                                                      "warmupSteps": 0, "loggingSteps": 1, "saveSteps": 1,
                                                      "lossWatchdog": {"factor": 1.5, "logs": 2}}))
    assert run.code == 70 and run.message["reason"] == "LossSpike"
    assert "checkpoint-1, saved before the spike, is kept" in run.message["message"]
    assert run.message["steps"] < 30 and run.message["checkpoints"][0]["step"] == 1
    failed = run.result
    assert failed["status"] == "Failed" and failed["reason"] == "LossSpike"
    assert failed["firstLoss"] < failed["finalLoss"] and failed["checkpoints"] == run.message["checkpoints"]
    assert (run.out / "metrics.jsonl").is_file() and (run.out / "loss.png").is_file()


def test_a_failed_run_never_replaces_a_finished_result(train_config, train):
    first = train(train_config())
    assert first.code == 0
    finished = (first.out / "result.json").read_text()
    other = train(train_config(training={"maxSteps": 9}))  # another config, same folder: refused
    assert other.code == 64
    assert (first.out / "result.json").read_text() == finished


def test_the_metric_history_and_its_plot(train_config, train, capsys):
    run = train(train_config(training={"maxSteps": 8, "loggingSteps": 2}))
    assert run.code == 0
    entries = history.read_history(run.out)
    assert [e["step"] for e in entries] == [1, 2, 4, 6, 8]
    losses = [h["loss"] for h in json.loads((run.out / "checkpoints" / "checkpoint-8" / "trainer_state.json")
                                            .read_text())["log_history"] if "loss" in h]
    assert [e["loss"] for e in entries] == pytest.approx(losses)
    assert all(e["learningRate"] > 0 for e in entries[1:])
    assert all(e["tokensPerSecond"] > 0 for e in entries[1:]), "tokens per second between logged steps"
    png = (run.out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    from sftop.cli import main as cli

    assert cli(["history", str(run.out), "--width", "80", "--height", "20"]) == 0
    text = capsys.readouterr().out
    assert "train loss" in text and "step" in text and len(text.splitlines()) >= 18
    out_png = run.out / "again.png"
    assert cli(["history", str(run.out / "metrics.jsonl"), "--png", str(out_png)]) == 0
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert cli(["history", str(run.out / "nothing-here")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_provenance_and_model_card_describe_the_run(train_config, train, tmp_path):
    data = tmp_path / "data" / "train.jsonl"
    taskapi.write_jsonl(taskapi.rows(64), data)
    run = train(train_config(run={"id": "0a1b2c3d", "sftjob": "chat", "namespace": "team-a"},
                             model={"hubId": "example/tiny-chat"}))
    assert run.code == 0
    adapter = run.out / "adapter"
    prov = json.loads((adapter / "provenance.json").read_text())
    import hashlib

    assert prov["sftjob"] == {"namespace": "team-a", "name": "chat"} and prov["runId"] == "0a1b2c3d"
    assert prov["baseModel"]["id"] == "example/tiny-chat" and prov["baseModel"]["path"].endswith("tiny-model0")
    assert prov["data"]["files"] == {str(data): hashlib.sha256(data.read_bytes()).hexdigest()}
    assert prov["data"]["sha256"] == run.result["data"]["sha256"], "and the rows as trained, whatever the source"
    assert prov["data"]["rowsTrain"] == 64
    assert prov["config"]["training"]["maxSteps"] == 8 and prov["config"]["lora"]["r"] == 16
    assert prov["metrics"]["steps"] == 8 and prov["metrics"]["trainLoss"] == run.result["trainLoss"]
    assert {"torch", "transformers", "trl", "peft"} <= set(prov["versions"])
    assert prov["startTime"] <= prov["endTime"] and prov["endTime"].endswith("Z")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "example/tiny-chat"
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                "v_proj"]
    card = (adapter / "README.md").read_text()
    assert "base_model: example/tiny-chat" in card and "team-a/chat" in card and "0a1b2c3d" in card
    assert "64 training rows" in card and "Steps: 8" in card
    assert run.result["serving"] == {"baseModel": "example/tiny-chat", "loraRank": 16, "loraAlpha": 32,
                                     "targetModules": config["target_modules"], "vllmMaxLoraRank": 16}


def test_warm_start_continues_an_earlier_adapter(train_config, train, tmp_path):
    first = train(train_config(training={"maxSteps": 16, "loggingSteps": 1},
                               output={"dir": str(tmp_path / "first")}))
    assert first.code == 0
    a = first.result
    second = train(train_config(training={"maxSteps": 4, "loggingSteps": 1}, output={"dir": str(tmp_path / "second")},
                                warmStart={"path": str(first.out / "adapter"), "origin": "out:first/adapter"}))
    assert second.code == 0, second.message
    b = second.result
    # The second run starts where the first one ended, not where the first one started.
    assert abs(b["firstLoss"] - a["finalLoss"]) < 0.25 * (a["firstLoss"] - a["finalLoss"])
    assert b["warmStart"] == "out:first/adapter"
    assert json.loads((second.out / "adapter" / "provenance.json").read_text())["warmStart"] == "out:first/adapter"
    from_checkpoint = train(train_config(output={"dir": str(tmp_path / "third")},
                                         warmStart={"path": str(first.out / "checkpoints" / "checkpoint-16")}))
    assert from_checkpoint.code == 0


def test_warm_start_from_an_adapter_that_does_not_fit_fails_before_loading_weights(train_config, train, tmp_path,
                                                                                     tiny_model_without_template):
    first = train(train_config(output={"dir": str(tmp_path / "first")}))
    assert first.code == 0
    adapter = str(first.out / "adapter")
    rank = train(train_config(output={"dir": str(tmp_path / "r8")}, lora={"r": 8}, warmStart={"path": adapter}))
    assert rank.code == 64 and "its rank is 16 and lora.r is 8: set lora.r: 16" in rank.message["message"]
    other_base = train(train_config(output={"dir": str(tmp_path / "base")}, warmStart={"path": adapter},
                                    model={"name": str(tiny_model_without_template)},
                                    chatTemplate=(Path(first.out / "adapter" / "chat_template.jinja").read_text())))
    assert other_base.code == 64 and "it was trained on" in other_base.message["message"]
    missing = train(train_config(output={"dir": str(tmp_path / "missing")}, warmStart={"path": str(tmp_path)}))
    assert missing.code == 64 and "holds no LoRA adapter" in missing.message["message"]


def test_a_pod_retried_after_the_last_checkpoint_still_reports_the_best_one(train_config, train, diverging_eval):
    """The pod died after saving its last checkpoint, before its result: the retry trains nothing and the result is
    still the best checkpoint, not the last step."""
    config = train_config(dataset=diverging_eval, evaluation={"prompts": 2},
                          training={"maxSteps": 16, "saveSteps": 4, "evalSteps": 4, "resultCheckpoint": "best",
                                    "saveTotalLimit": 5})
    first = train(config)
    assert first.code == 0
    expected = first.result
    assert expected["resultStep"] < 16
    import shutil

    shutil.rmtree(first.out / "adapter")
    (first.out / "result.json").unlink()
    again = train(config)
    assert again.code == 0
    r = again.result
    assert (r["steps"], r["resultStep"]) == (16, expected["resultStep"])
    assert r["trainLoss"] == pytest.approx(expected["trainLoss"]) and r["resumedFromStep"] == 16
    assert r["evalLoss"] == pytest.approx(expected["evalLoss"], rel=1e-5)
    best = load_file(str(first.out / "checkpoints" / f"checkpoint-{expected['resultStep']}" /
                         "adapter_model.safetensors"))
    result = load_file(str(again.out / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(result[k], best[k]) for k in result)
