"""A run stopped by SIGTERM saves a checkpoint and exits 69; started again, it resumes from that step.
While it trains, its progress endpoint serves JSON and Prometheus metrics."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

from sftop_trainer.errors import ExitCode


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(config, term):
    env = {**os.environ, "SFTOP_TERMINATION_LOG": str(term), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sftop_trainer", "--config", str(config), "--no-progress-bar"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def events(proc):
    for line in proc.stdout:
        if line.startswith("{"):
            yield json.loads(line)


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def test_sigterm_checkpoints_and_restart_resumes_from_that_step(train_config, tmp_path):
    port = free_port()
    # long enough that SIGTERM lands mid-run on a fast machine
    config = train_config(training={"maxSteps": 600, "loggingSteps": 1, "saveSteps": 1000},
                          progress={"host": "127.0.0.1", "port": port})
    term = tmp_path / "termination-log"
    first = start(config, term)
    try:
        seen = None
        for event in events(first):
            if event["event"] == "progress" and event["step"] >= 30:
                seen = event
                break
        assert seen, "the trainer never reported progress"
        progress = json.loads(get(f"http://127.0.0.1:{port}/progress"))
        assert progress["phase"] == "Training" and progress["totalSteps"] == 600
        assert 0 < progress["step"] < 600 and 0 < progress["percent"] < 100 and "loss" in progress
        metrics = get(f"http://127.0.0.1:{port}/metrics")
        from prometheus_client.parser import text_string_to_metric_families

        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        assert families["sftop_trainer_step"].type == "gauge"
        assert families["sftop_trainer_total_steps"].samples[0].value == 600
        assert families["sftop_trainer_tokens_seen"].type == "counter"
        assert families["sftop_trainer_tokens_seen"].samples[0].value > 0
        at = json.loads(get(f"http://127.0.0.1:{port}/progress"))["step"]
        first.send_signal(signal.SIGTERM)
        for _ in events(first):
            pass
        assert first.wait(60) == ExitCode.INTERRUPTED
    finally:
        first.kill()
    message = json.loads(term.read_text())
    assert message["reason"] == "Interrupted" and "checkpoint was saved" in message["message"]
    checkpoints = sorted((tmp_path / "out" / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1, "saveSteps is 1000: the only checkpoint is the one SIGTERM asked for"
    stopped_at = int(checkpoints[0].name.split("-")[1])
    # at the step the signal arrived (transformers' own 3 s wait would be dozens of steps of this model)
    assert at <= stopped_at <= at + 5, (at, stopped_at)

    # the restart trains a few steps past the checkpoint, not the hundreds left of the first attempt's
    config = train_config(training={"maxSteps": stopped_at + 4, "loggingSteps": 1, "saveSteps": 1000},
                          progress={"host": "127.0.0.1", "port": port})
    second = start(config, term)
    steps = [e["step"] for e in events(second) if e["event"] == "progress"]
    assert second.wait(120) == 0
    assert steps[0] > stopped_at, f"restarted at step {steps[0]}, not after {stopped_at}"
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["resumedFromStep"] == stopped_at and result["steps"] == stopped_at + 4
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()


def test_an_incomplete_checkpoint_is_not_resumed_from(train_config, train, tmp_path):
    run = train(train_config(training={"maxSteps": 4, "saveSteps": 2}))
    assert run.code == 0
    (run.out / "result.json").rename(run.out / "result-4-steps.json")  # a finished result is never trained over
    broken = run.out / "checkpoints" / "checkpoint-6"
    broken.mkdir()
    (broken / "checkpoint-is-incomplete.txt").write_text("in progress")
    again = train(train_config(training={"maxSteps": 6, "saveSteps": 2}))
    assert again.code == 0, again.message
    assert again.result["resumedFromStep"] == 4 and again.result["steps"] == 6
