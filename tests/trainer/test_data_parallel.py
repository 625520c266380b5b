"""Several training processes (one per GPU in a pod; two CPU processes here) train data parallel, and a failure
in them keeps its exit code through the launcher."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.node import kill_tree
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
    assert result["distribution"] == {"nodes": 1, "processes": 2, "strategy": "DataParallel"}
    assert message["status"] == "Succeeded"
    assert proc.stdout.count('"event": "result"') == 1, "one result record, from the first process"


def test_a_failure_keeps_its_exit_code_through_the_launcher(train_config, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    proc, message = run(train_config(dataset={"path": str(bad)}), tmp_path)
    assert proc.returncode == ExitCode.INVALID_DATA, proc.stderr[-2000:]
    assert message["reason"] == "InvalidData" and "line 2" in message["message"]


def test_a_node_whose_group_never_meets_fails_naming_the_rendezvous(train_config, tmp_path):
    """Pod 1 of a two-node run with no pod 0 to meet (a NetworkPolicy, a missing Service): after the rendezvous
    timeout it fails with a message that says where it waited, and counts as a failure."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    config = train_config(distribution={"nodes": 2}, run={"id": "lonely"})
    env = {**os.environ, "JOB_COMPLETION_INDEX": "1", "SFTOP_RENDEZVOUS": f"127.0.0.1:{port}",
           "SFTOP_NODE_ADDRESS": "127.0.0.1", "SFTOP_RENDEZVOUS_TIMEOUT": "5",
           "SFTOP_TERMINATION_LOG": str(tmp_path / "term")}
    proc = subprocess.run([sys.executable, "-m", "sftop_trainer", "--config", str(config), "--no-progress-bar"],
                          capture_output=True, text=True, env=env, timeout=300)
    message = json.loads((tmp_path / "term").read_text())
    assert proc.returncode == ExitCode.UNEXPECTED, proc.stderr[-2000:]
    assert message["reason"] == "TrainerError" and f"rendezvous at 127.0.0.1:{port} did not complete" in message[
        "message"]


def test_a_multi_node_config_outside_an_indexed_job_says_what_is_missing(train_config, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JOB_COMPLETION_INDEX", "SFTOP_RENDEZVOUS")}
    env["SFTOP_TERMINATION_LOG"] = str(tmp_path / "term")
    config = train_config(distribution={"nodes": 2})
    proc = subprocess.run([sys.executable, "-m", "sftop_trainer", "--config", str(config), "--no-progress-bar"],
                          capture_output=True, text=True, env=env, timeout=300)
    message = json.loads((tmp_path / "term").read_text())
    assert proc.returncode == ExitCode.INVALID_CONFIG
    assert "JOB_COMPLETION_INDEX and SFTOP_RENDEZVOUS are not set" in message["message"]


def test_sigterm_stops_two_processes_at_one_step_with_one_checkpoint_and_the_rerun_resumes(train_config, tmp_path):
    """SIGTERM reaches the processes at different moments (here: one of them only); they agree on the step to save
    at, save one complete checkpoint there together and stop with Interrupted; the next attempt resumes from it."""
    import time

    config = train_config(training={"maxSteps": 400, "saveSteps": 1000, "loggingSteps": 1})
    env = {**os.environ, "SFTOP_PROCESSES": "2", "SFTOP_TERMINATION_LOG": str(tmp_path / "term")}
    cmd = [sys.executable, "-m", "sftop_trainer", "--config", str(config), "--no-progress-bar"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in proc.stdout:  # until training is under way
            if '"event": "progress"' in line and '"step": 5,' in line:
                break
        time.sleep(1)
        # the second process alone: the extreme of the signal reaching the processes (or pods) at different moments
        os.kill(training_process(tmp_path, 1), signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        kill_tree(proc.pid)  # a hung group must not outlive the test
    assert proc.returncode == ExitCode.INTERRUPTED, out[-3000:]
    checkpoints = sorted((tmp_path / "out" / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1, "one checkpoint, saved by both processes at the same step"
    saved = checkpoints[0]
    assert (saved / "trainer_state.json").exists() and not (saved / "checkpoint-is-incomplete.txt").exists()
    assert {p.name for p in saved.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    step = int(saved.name.split("-")[1])
    config.write_text(config.read_text().replace('"maxSteps": 400', f'"maxSteps": {step + 4}'))
    again, message = run(config, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["resumedFromStep"] == step and result["steps"] == step + 4


def training_process(tmp_path, rank: int) -> int:
    """The pid of the training process of local rank `rank` of the run whose termination log is under `tmp_path`."""
    term = f"SFTOP_TERMINATION_LOG={tmp_path / 'term'}".encode()
    found = [int(e.parent.name) for e in Path("/proc").glob("[0-9]*/environ") if readable(e)
             and term in e.read_bytes().split(b"\0") and f"LOCAL_RANK={rank}".encode() in e.read_bytes().split(b"\0")]
    assert len(found) == 1
    return found[0]


def readable(path: Path) -> bool:
    try:
        path.read_bytes()
        return True
    except OSError:
        return False


def test_fsdp_reaches_accelerate_as_an_fsdp2_plugin(train_config, tmp_path):
    """What a GPU run of distribution.strategy FSDP hands accelerate (FSDP runs only on accelerators, so here the
    configuration is checked up to accelerate's plugin): FSDP2, decoder layers as shard units, FSDP's activation
    checkpointing instead of the Trainer's, CPU offload when asked, full state dicts for saving."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from sftop_trainer.args import build_sft_config
    from sftop_trainer.config import load_config

    cfg = load_config(train_config(distribution={"nodes": 2, "strategy": "FSDP", "cpuOffload": True},
                                   training={"gradientCheckpointing": True}))
    args = build_sft_config(cfg, tmp_path / "out", has_eval=False, assistant_only_loss=False,
                            progress_bar=False)
    assert args.activation_checkpointing is False, "FSDP checkpoints activations itself"
    assert args.fsdp_plugin_args == {
        "fsdp_version": 2, "cpu_offload": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "cpu_ram_efficient_loading": False, "state_dict_type": "FULL_STATE_DICT", "activation_checkpointing": True,
        "reshard_after_forward": True}
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.activation_checkpointing and plugin.reshard_after_forward
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type) and plugin.cpu_offload


def test_fsdp_on_cpus_stops_before_training_instead_of_training_data_parallel(train_config, tmp_path):
    proc, message = run(train_config(distribution={"strategy": "FSDP"}), tmp_path)
    assert proc.returncode == ExitCode.INVALID_CONFIG
    assert message["reason"] == "InvalidConfig" and "FSDP needs GPUs" in message["message"]


@pytest.mark.parametrize("survivor", ["stops", "hangs"])
def test_a_process_killed_by_a_signal_fails_its_pod_as_a_counted_failure(train_config, tmp_path, survivor):
    """One of two processes SIGKILLed mid-run (the node's OOM killer, a segfault): it leaves no word, the other is
    stopped with it, and the pod fails with TrainerError (counted against backoffLimit), not a retryable
    interruption that would loop forever. A survivor that cannot stop (held here, as one blocked in a collective
    would be) is killed by torchrun after its grace and leaves no word either: the message still names the process
    that died first."""
    config = train_config(training={"maxSteps": 400, "saveSteps": 1000, "loggingSteps": 1})
    env = {**os.environ, "SFTOP_PROCESSES": "2", "SFTOP_TERMINATION_LOG": str(tmp_path / "term")}
    cmd = [sys.executable, "-m", "sftop_trainer", "--config", str(config), "--no-progress-bar"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in proc.stdout:
            if '"event": "progress"' in line and '"step": 3,' in line:
                break
        if survivor == "hangs":
            os.kill(training_process(tmp_path, 0), signal.SIGSTOP)
        os.kill(training_process(tmp_path, 1), signal.SIGKILL)
        out, _ = proc.communicate(timeout=180)
    finally:
        kill_tree(proc.pid)
    assert proc.returncode == ExitCode.UNEXPECTED, out[-3000:]
    message = json.loads((tmp_path / "term").read_text())
    assert message["reason"] == "TrainerError" and "local rank 1 ended without a word" in message["message"], \
        f"{message} {out[-3000:]}"
