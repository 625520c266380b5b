"""Each bad input ends the run with its exit code and a message that names the problem."""

import json
import subprocess
import sys

import pytest

from sftop_trainer.config import TrainerConfig, load_config
from sftop_trainer.errors import EXIT_CLASSES, ExitCode
from sftop_trainer import taskapi


def expect_failure(run, code, *words):
    assert run.code == code, run.message
    assert run.message["status"] == "Failed" and run.message["exitCode"] == code
    assert run.message["reason"] == EXIT_CLASSES[code].reason
    for w in words:
        assert w in run.message["message"], run.message["message"]


def test_invalid_config_field(train_config, train):
    expect_failure(train(train_config(training={"learningRate": -1})), ExitCode.INVALID_CONFIG,
                   "training.learningRate", "greater than 0")


def test_unreadable_config(tmp_path, train):
    path = tmp_path / "config.json"
    path.write_text("model: [unclosed")
    expect_failure(train(path), ExitCode.INVALID_CONFIG, "neither JSON nor YAML")


def test_unknown_passthrough_sftconfig_key(train_config, train):
    expect_failure(train(train_config(training={"sftConfig": {"neftune_noise_alfa": 5}})), ExitCode.INVALID_CONFIG,
                   "'neftune_noise_alfa' is not an SFTConfig field", "neftune_noise_alpha")


def test_passthrough_sftconfig_key_reaches_sftconfig(train_config, train):
    run = train(train_config(training={"sftConfig": {"max_grad_norm": 0.5, "neftune_noise_alpha": 5}}))
    assert run.code == 0, run.message


def test_lora_target_modules_that_the_model_lacks(train_config, train):
    expect_failure(train(train_config(lora={"targetModules": ["q_proj", "query_key_value"]})),
                   ExitCode.INVALID_CONFIG, "['query_key_value']", "q_proj", "down_proj")


def test_malformed_json_line_is_named_by_number(train_config, train, tmp_path):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(r) for r in taskapi.rows(5)]
    lines[2] = lines[2][:-3]  # cut off the end of line 3
    path.write_text("\n".join(lines) + "\n")
    expect_failure(train(train_config(dataset={"path": str(path)})), ExitCode.INVALID_DATA, "broken.jsonl",
                   "line 3", "not valid JSON")


def test_unknown_format_lists_columns_and_accepted_formats(train_config, train, tmp_path):
    path = taskapi.write_jsonl([{"question": "q", "answer": "a"}] * 4, tmp_path / "qa.jsonl")
    expect_failure(train(train_config(dataset={"path": str(path)})), ExitCode.INVALID_DATA,
                   "['answer', 'question']", "messages (messages)", "instruction (instruction, output)")


def test_declared_format_with_missing_columns(train_config, train, tmp_path):
    path = taskapi.write_jsonl(taskapi.rows(4, fmt="text"), tmp_path / "t.jsonl")
    expect_failure(train(train_config(dataset={"path": str(path), "format": "instruction"})),
                   ExitCode.INVALID_DATA, "missing instruction, output", "columns found: text")


def test_rows_without_an_assistant_turn_are_counted_and_named(train_config, train, tmp_path):
    rows = taskapi.rows(20)
    for i in (3, 7):  # rows 4 and 8, counting from 1
        rows[i]["messages"] = rows[i]["messages"][:1]
    path = taskapi.write_jsonl(rows, tmp_path / "d.jsonl")
    run = train(train_config(dataset={"path": str(path)}, training={"maxSteps": 2}))
    assert run.code == 0, run.message
    assert run.result["data"]["skipped"] == {"no assistant turn": {"count": 2, "rows": [4, 8]}}
    assert run.result["data"]["rowsTrain"] == 18


def test_nothing_left_after_filtering_is_an_error(train_config, train, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}]}] * 3
    expect_failure(train(train_config(dataset={"rows": rows})), ExitCode.INVALID_DATA, "no usable rows",
                   "no assistant turn: 3 (rows 1, 2, 3)")


def test_samples_longer_than_max_length_are_counted_and_dropped(train_config, train):
    rows = taskapi.rows(30, fmt="text")
    rows[0]["text"] = rows[1]["text"] = " ".join(["water the plants"] * 80)
    run = train(train_config(dataset={"rows": rows}, training={"maxLength": 128, "longSamples": "drop",
                                                               "maxSteps": 2}))
    assert run.code == 0, run.message
    data = run.result["data"]
    assert (data["overlong"], data["overlongAction"]) == (2, "drop")


def test_samples_longer_than_max_length_are_counted_when_truncated(train_config, train):
    rows = taskapi.rows(30, fmt="text")
    rows[5]["text"] = " ".join(["water the plants"] * 80)
    run = train(train_config(dataset={"rows": rows}, training={"maxLength": 128, "maxSteps": 2}))
    assert run.code == 0, run.message
    assert (run.result["data"]["overlong"], run.result["data"]["overlongAction"]) == (1, "truncate")


def test_model_folder_that_does_not_exist_is_named(train_config, train, tmp_path):
    (tmp_path / "models" / "smollm2").mkdir(parents=True)
    expect_failure(train(train_config(model={"name": str(tmp_path / "models" / "no-such-model")})),
                   ExitCode.MODEL_LOAD_FAILED, "model folder", "no-such-model does not exist", "holds: smollm2")


def test_model_folder_without_a_model_is_named(train_config, train, tmp_path):
    (tmp_path / "empty").mkdir()
    expect_failure(train(train_config(model={"name": str(tmp_path / "empty")})),
                   ExitCode.MODEL_LOAD_FAILED, "has no config.json")


def test_hub_model_that_cannot_be_reached(train_config, train):
    # HF_HUB_OFFLINE is set for the tests: a Hub id that is not in the cache cannot be loaded
    run = train(train_config(model={"name": "no-such-org/no-such-model"}))
    expect_failure(run, ExitCode.MODEL_LOAD_FAILED, "no-such-org/no-such-model", "Hub cannot be reached",
                   "spec.model.pvc", "spec.hubTokenSecret")
    assert ".." not in run.message["message"]


def test_hub_dataset_that_cannot_be_reached(train_config, train):
    run = train(train_config(dataset={"hub": {"name": "no-such-org/no-such-data"}}))
    expect_failure(run, ExitCode.INVALID_DATA, "no-such-org/no-such-data", "Hub cannot be reached",
                   "spec.dataset.pvc", "ConfigMap")
    assert ".." not in run.message["message"]


def test_hub_warnings_are_logged_once():
    """huggingface_hub has a log handler of its own; the trainer's logging must not print its lines twice."""
    code = ("import logging; import sftop_trainer.__main__ as m; "
            "logging.basicConfig(format='%(name)s: %(message)s'); m.quiet_known_noise(); "
            "logging.getLogger('huggingface_hub.utils._http').warning('cannot reach the Hub')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("cannot reach the Hub") == 1, proc.stderr


def test_conversational_data_on_a_model_without_chat_template(train_config, train, tiny_model_without_template):
    expect_failure(train(train_config(model={"name": str(tiny_model_without_template)})),
                   ExitCode.INVALID_CONFIG, "no chat template", "chatTemplate")


def test_chat_template_override_makes_it_train(train_config, train, tiny_model_without_template):
    from sftop_trainer.tiny import CHAT_TEMPLATE

    run = train(train_config(model={"name": str(tiny_model_without_template)}, chatTemplate=CHAT_TEMPLATE,
                             training={"maxSteps": 2}))
    assert run.code == 0, run.message


def test_assistant_only_loss_works_on_a_template_without_markers(train_config, train):
    plain = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    run = train(train_config(chatTemplate=plain, training={"maxSteps": 2}))
    assert run.code == 0, run.message
    assert run.result["data"]["loss"] == "assistant turns, found by rendering each turn with the chat template"


def test_a_template_that_cannot_be_split_into_turns_says_what_to_do(train_config, train):
    # the last assistant turn renders differently from the same turn followed by another message
    odd = ("{% for m in messages %}{% if loop.last and m['role'] == 'assistant' %}FINAL {% endif %}"
           "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    expect_failure(train(train_config(chatTemplate=odd)), ExitCode.INVALID_CONFIG,
                   "assistantOnlyLoss: false", "spec.chatTemplate")
    run = train(train_config(chatTemplate=odd, training={"maxSteps": 2, "assistantOnlyLoss": False}))
    assert run.code == 0, run.message
    assert run.result["data"]["loss"] == "every token"


def test_loss_that_becomes_nan_fails_fast(train_config, train):
    # plain SGD at an absurd learning rate, without clipping: the weights blow up within a few steps
    run = train(train_config(method="full", training={"optim": "sgd", "maxGradNorm": 0, "maxSteps": 50,
                                                      "loggingSteps": 1, "sftConfig": {"learning_rate": 1e12}}))
    expect_failure(run, ExitCode.LOSS_NOT_FINITE, "loss became", "learningRate")


def test_output_folder_that_cannot_be_written(train_config, train, tmp_path):
    (tmp_path / "a-file").write_text("")
    expect_failure(train(train_config(output={"dir": str(tmp_path / "a-file" / "out")})), ExitCode.INVALID_CONFIG,
                   "output.dir", "not writable")


def test_exit_codes_are_distinct_and_documented():
    codes = [c for c in ExitCode if c != ExitCode.OK]
    assert len({int(c) for c in codes}) == len(codes)
    assert set(EXIT_CLASSES) == set(codes)
    assert not EXIT_CLASSES[ExitCode.INVALID_DATA].retryable and EXIT_CLASSES[ExitCode.INTERRUPTED].retryable


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_contract_round_trips(tmp_path, suffix):
    import yaml

    cfg = TrainerConfig.model_validate({
        "run": {"id": "abc12345", "sftjob": "chat", "namespace": "team-a"},
        "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "7ae557604adf67be50417f59c2c2f167def9a775"},
        "dataset": {"path": "/data/train.jsonl", "format": "messages", "evalSplit": {"fraction": 0.1}},
        "method": "qlora", "quantization": {"quantType": "fp4"}, "lora": {"r": 8, "targetModules": ["q_proj"]},
        "training": {"epochs": 2, "sftConfig": {"neftune_noise_alpha": 5}},
        "output": {"dir": "/output/run", "mergeAdapter": True}})
    wire = cfg.dump()
    assert wire["apiVersion"] == "trainer.sftop.dev/v1" and "perDeviceTrainBatchSize" in wire["training"]
    path = tmp_path / f"config{suffix}"
    path.write_text(json.dumps(wire) if suffix == ".json" else yaml.safe_dump(wire))
    assert load_config(path) == cfg


def test_exit_code_table_in_the_docs_matches_the_code():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "trainer.md").read_text()
    for code, cls in EXIT_CLASSES.items():
        assert f"| {int(code)} | {cls.reason} |" in doc
