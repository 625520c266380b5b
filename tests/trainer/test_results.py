"""A finished run's result is the truth and stays it: a retried pod or a re-run reports it instead of training
over it, and the losses it reports are the run's own."""

import json

from sftop_trainer.errors import ExitCode


def test_running_a_finished_run_again_reports_its_result_without_training(train_config, train):
    config = train_config(training={"maxSteps": 6, "saveSteps": 3})
    first = train(config)
    assert first.code == 0, first.message
    result = first.result
    adapter = (first.out / "adapter" / "adapter_model.safetensors").read_bytes()

    again = train(config)
    assert again.code == 0, again.message
    assert again.result == result  # result.json untouched: same losses, same runtime
    assert again.message["trainLoss"] == result["trainLoss"] > 0
    assert again.message["steps"] == 6 and again.message["runtimeSeconds"] == result["runtimeSeconds"]
    assert (first.out / "adapter" / "adapter_model.safetensors").read_bytes() == adapter


def test_a_pod_retried_after_its_last_checkpoint_reports_the_true_losses(train_config, train):
    """The pod saved the final checkpoint and died before writing its result: the retry resumes at the end and
    reports the run's losses from its history, not the zero loss of an attempt that trained no step."""
    config = train_config(training={"maxSteps": 6, "saveSteps": 3, "loggingSteps": 1})
    first = train(config)
    truth = first.result
    (first.out / "result.json").unlink()
    (first.out / "adapter").rename(first.out / "adapter-of-first-attempt")

    retry = train(config)
    assert retry.code == 0, retry.message
    result = retry.result
    assert result["resumedFromStep"] == 6 and result["steps"] == 6
    assert abs(result["trainLoss"] - truth["trainLoss"]) < 1e-6
    assert result["firstLoss"] == truth["firstLoss"] and result["finalLoss"] == truth["finalLoss"]
    assert (first.out / "adapter" / "adapter_model.safetensors").exists()


def test_another_config_never_trains_over_a_finished_result(train_config, train):
    first = train(train_config(training={"maxSteps": 4}))
    assert first.code == 0
    before = (first.out / "result.json").read_text()
    other = train(train_config(training={"maxSteps": 5}))
    assert other.code == ExitCode.INVALID_CONFIG
    assert "holds the finished result of another config" in other.message["message"]
    assert (first.out / "result.json").read_text() == before


def test_first_and_last_losses_when_max_steps_is_below_logging_steps(train_config, train):
    run = train(train_config(training={"maxSteps": 3, "loggingSteps": 10}))
    assert run.code == 0, run.message
    history = json.loads((run.out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 3]  # the first step's loss and the last one's
    assert run.result["firstLoss"] != run.result["finalLoss"]


def test_cpu_training_logs_token_accuracy(train_config, train):
    run = train(train_config(training={"maxSteps": 2, "loggingSteps": 1}))
    history = json.loads((run.out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    accuracies = [h["mean_token_accuracy"] for h in history if "loss" in h]
    assert len(accuracies) == 2 and all(0 <= a <= 1 for a in accuracies)
