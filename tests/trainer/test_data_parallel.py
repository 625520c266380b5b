"""Several training processes (one per GPU in a pod; two CPU processes here) train data parallel, and a failure
in them keeps its exit code through the launcher."""

import json
import os
import subprocess
import sys

from sftop_trainer.errors import ExitCode


def run(config, tmp_path, processes=2):
    env = {**os.environ, "SFTOP_PROCESSES": str(processes), "SFTOP_TERMINATION_LOG": str(tmp_path / "term")}
    proc = subprocess.run([sys.executable, "-m", "sftop_trainer", "--config", str(config), "--no-progress-bar"],
                          capture_output=True, text=True, env=env, timeout=300)
    return proc, json.loads((tmp_path / "term").read_text())


def test_two_processes_train_data_parallel(train_config, tmp_path):
    # 64 rows, batch 4 per process, 8 steps: one process sees half an epoch, two see all of it
    proc, message = run(train_config(training={"maxSteps": 8, "perDeviceTrainBatchSize": 4}), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["steps"] == 8 and result["epochs"] == 1.0
    assert message["status"] == "Succeeded"
    assert proc.stdout.count('"event": "result"') == 1, "one result record, from the first process"


def test_a_failure_keeps_its_exit_code_through_the_launcher(train_config, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    proc, message = run(train_config(dataset={"path": str(bad)}), tmp_path)
    assert proc.returncode == ExitCode.INVALID_DATA, proc.stderr[-2000:]
    assert message["reason"] == "InvalidData" and "line 2" in message["message"]
