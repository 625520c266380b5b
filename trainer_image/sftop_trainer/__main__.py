"""`sftop-train`: run one supervised fine-tuning run from a trainer config.

    sftop-train --config /etc/sftop/config.json
    python -m sftop_trainer --config config.yaml --progress-bar

The config is a `sftop_trainer.config.TrainerConfig` (JSON or YAML); the operator renders it from an SFTJob and
`sftop run --local` renders the same. A Hugging Face token, when needed, comes from the HF_TOKEN environment
variable. With several visible GPUs the command relaunches itself through torchrun, one process per GPU; the
Trainer's accelerate backend runs them data parallel (or FSDP). With distribution.nodes > 1 it is one pod of an
Indexed Job: torchrun meets the other pods through a c10d rendezvous on pod 0 (JOB_COMPLETION_INDEX,
SFTOP_RENDEZVOUS, SFTOP_NODE_ADDRESS). It exits with the training processes' exit code.

Exit codes (sftop_trainer.errors): 0 success, 1 unexpected error, 64 invalid config, 65 invalid data, 66 model
load failure, 67 CUDA out of memory, 68 loss not finite, 69 interrupted after a checkpoint, 70 loss spike
(training.lossWatchdog), 71 another pod of a multi-node run was lost.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import socket
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

from sftop_trainer.errors import EXIT_CLASSES, ExitCode, TrainerError

log = logging.getLogger("sftop_trainer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sftop-train", description="Run one SFT run from a trainer config.")
    p.add_argument("--config", required=True, help="trainer config file (JSON or YAML)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress-bar", dest="progress_bar", action="store_true", default=None,
                     help="show a progress bar (default: when stdout is a terminal)")
    bar.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    p.add_argument("--processes", type=int, default=None,
                   help="training processes (default: one per visible GPU; SFTOP_PROCESSES overrides)")
    p.add_argument("--validate", action="store_true",
                   help="do everything before training, without the weights, and print the run's plan: read, "
                        "template, tokenize and mask the data, check the model's config and LoRA targets, estimate "
                        "GPU memory; the plan and the prepared data are left in output.dir for the run")
    p.add_argument("--status-file", help=argparse.SUPPRESS)  # where a launched worker leaves its exit code
    return p


def process_count(requested: int | None) -> int:
    if requested is not None:
        return requested
    if os.environ.get("SFTOP_PROCESSES"):
        return int(os.environ["SFTOP_PROCESSES"])
    import torch

    return max(1, torch.cuda.device_count())


ELASTIC_RESTARTS = 3  # in-place restarts of a pod's processes after another pod of the group was lost
# How long a pod waits for the others to join (scheduling, image pulls, a replacement pod): SFTOP_RENDEZVOUS_TIMEOUT.
RENDEZVOUS_TIMEOUT = 1800


@dataclass(frozen=True)
class Group:
    """Where this pod stands in a multi-node run: the pods' count, its index, the rendezvous host (pod 0) and its own
    stable address. A pod reads them from its environment (the Indexed Job and the operator's rendering)."""

    nodes: int
    index: int
    rendezvous: str  # host:port of pod 0
    address: str  # this pod's own stable name (its headless Service DNS name)
    run_id: str
    timeout: int = RENDEZVOUS_TIMEOUT  # seconds to wait for every pod to join

    @classmethod
    def from_env(cls, nodes: int, run_id: str | None) -> Group:
        env = os.environ
        missing = [v for v in ("JOB_COMPLETION_INDEX", "SFTOP_RENDEZVOUS") if not env.get(v)]
        if missing:
            raise ValueError(f"distribution.nodes is {nodes} but {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not set: a multi-node run runs as an Indexed Job "
                             f"(or `sftop run --local`), which sets them")
        return cls(nodes=nodes, index=int(env["JOB_COMPLETION_INDEX"]), rendezvous=env["SFTOP_RENDEZVOUS"],
                   address=env.get("SFTOP_NODE_ADDRESS") or socket.getfqdn(), run_id=run_id or "sftop",
                   timeout=int(env.get("SFTOP_RENDEZVOUS_TIMEOUT") or RENDEZVOUS_TIMEOUT))


def launch_command(processes: int, config: str, status_file: str, group: Group | None = None) -> list[str]:
    """torchrun of this module, one process per GPU (or per requested CPU process). Inside each process, the
    Trainer's accelerate backend does the data parallelism (DDP or FSDP: NCCL on GPUs, gloo on CPUs).

    Several nodes meet through torchrun's c10d rendezvous hosted by pod 0. torchrun numbers the nodes by their
    addresses, sorted: pod 0's name (`<job>-0.<service>...`) sorts first, so the run's rank 0 (progress, result,
    checkpoints) is always on pod 0."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if group is None:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        cmd += ["--nnodes", str(group.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", group.rendezvous,
                "--rdzv-id", group.run_id, "--rdzv-conf", f"is_host={str(group.index == 0).lower()},"
                f"join_timeout={group.timeout},read_timeout={min(60, group.timeout)}",
                "--local-addr", group.address, "--max-restarts", str(ELASTIC_RESTARTS)]
    return cmd + ["--nproc_per_node", str(processes), "-m", "sftop_trainer", "--config", config, "--no-progress-bar",
                  "--status-file", status_file]


# A process's own failure ends its pod at once (the Job counts it, podFailurePolicy applies); only a lost peer, or an
# interruption, lets torchrun restart the pod's processes in place to meet the replacement pod.
IN_PLACE = {int(ExitCode.PEER_LOST), int(ExitCode.OK)}


def worst(codes: list[int]) -> int:
    """The code a pod exits with, given its processes': a user error first, then any other failure of its own, then
    a lost peer."""
    from sftop_trainer.errors import USER_ERROR_CODES

    failed = [c for c in codes if c != 0]
    own = [c for c in failed if c not in IN_PLACE]
    return next((c for c in own if c in USER_ERROR_CODES), next(iter(own or failed), 0))


def launch(processes: int, config: str, group: Group | None = None) -> int:
    """Run the training processes and exit with their class of failure (the launcher turns any failure into
    exit code 1, so the workers leave their real codes in status files)."""
    with tempfile.TemporaryDirectory(prefix="sftop-") as tmp:
        status = Path(tmp) / "status"
        status.mkdir()
        cmd = launch_command(processes, config, str(status / "rank"), group)
        log.info("launching %d training processes%s: %s", processes,
                 f" on node {group.index} of {group.nodes}" if group else "", " ".join(cmd))
        env = {**os.environ, "SFTOP_LAUNCHED": "1"}
        if group is not None:
            # torchrun shares its rendezvous store with the workers only from the first round on: a pod that
            # replaces a lost one would wait forever for the address of the workers' store. Unshared, pod 0's
            # agent publishes it every round.
            env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        if not env.get("OMP_NUM_THREADS"):  # torchrun would set 1; share this process's CPUs among the workers
            from sftop_trainer.threads import available_cpus

            env["OMP_NUM_THREADS"] = str(max(1, available_cpus() // processes))
        child = subprocess.Popen(cmd, start_new_session=True, env=env)
        forward = lambda signum, frame: os.killpg(child.pid, signum)  # noqa: E731
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        while True:
            try:
                code = child.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                pass
            own = worst(read_codes(status))
            if own not in IN_PLACE and own != ExitCode.INTERRUPTED:
                log.info("a training process failed (exit code %d): stopping this pod's processes", own)
                os.killpg(child.pid, signal.SIGTERM)  # torchrun stops its workers (each in a session of its own)
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                return own
        codes = read_codes(status)
        if code == 0:
            return 0
        if codes:
            return worst(codes) or int(ExitCode.UNEXPECTED)
        if group is None:
            return int(ExitCode.UNEXPECTED)
        # torchrun itself gave up: the rendezvous was never reached, or its host (pod 0) was lost
        from sftop_trainer.train import failure, write_termination_message

        if (status / "started").exists():
            exit_code, message = ExitCode.PEER_LOST, f"lost the group's rendezvous at {group.rendezvous} (pod 0)"
        else:
            exit_code, message = ExitCode.UNEXPECTED, (
                f"the group's rendezvous at {group.rendezvous} did not complete: check that the run's pods can reach "
                f"each other (a NetworkPolicy, the headless Service) and that all {group.nodes} were admitted")
        log.error("%s", message)
        write_termination_message(failure(exit_code, EXIT_CLASSES[exit_code].reason, message))
        return int(exit_code)


def read_codes(folder: Path) -> list[int]:
    codes = []
    for f in folder.glob("rank-*.json"):
        try:
            codes.append(int(json.loads(f.read_text())["exitCode"]))
        except (ValueError, KeyError, OSError):
            continue
    return codes


def _finish(code: int, result: dict, status_file: str | None) -> int:
    """Leave the outcome for the pod: the run's first process writes its termination message (the result); on other
    pods the first process writes its own (on success, only that it succeeded). Each launched process leaves its
    code for the launcher."""
    from sftop_trainer.train import is_main_process, is_node_main_process, write_termination_message

    if is_main_process():
        write_termination_message(result)
    elif is_node_main_process():
        write_termination_message(result if code else {"status": "Succeeded"})
    if status_file:
        Path(f"{status_file}-{os.environ.get('LOCAL_RANK', '0')}.json").write_text(json.dumps({"exitCode": code}))
    return code


def quiet_known_noise() -> None:
    """Silence messages that are harmless and would only confuse a reader of the log."""
    import warnings

    # bitsandbytes looks for an optional CPU kernel package at import; its absence changes nothing here.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # huggingface_hub prints its warnings through a handler of its own as well as ours: each came out twice.
    import huggingface_hub.utils.logging  # noqa: F401  (installs that handler)

    logging.getLogger("huggingface_hub").handlers.clear()
    # PEFT still calls transformers' old name for activation checkpointing.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("SFTOP_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    quiet_known_noise()
    from sftop_trainer.config import load_config
    from sftop_trainer.train import failure

    def fail(code: ExitCode, message: str, details: dict | None = None) -> int:
        reason = EXIT_CLASSES[code].reason
        log.error("%s: %s", reason, message)
        return _finish(int(code), {**failure(code, reason, message), **(details or {})}, args.status_file)

    try:
        cfg = load_config(args.config)
    except OSError as e:
        return fail(ExitCode.INVALID_CONFIG, f"cannot read the trainer config {args.config}: {e}")
    except ValueError as e:
        return fail(ExitCode.INVALID_CONFIG, f"invalid trainer config {args.config}: {e}")

    if args.validate:
        from sftop_trainer import plan

        try:
            result = plan.validate(cfg)
        except TrainerError as e:
            return fail(e.code, e.message)
        except Exception as e:
            traceback.print_exc()
            return fail(ExitCode.UNEXPECTED, f"{type(e).__name__}: {e}")
        print("\n".join(plan.describe(result["plan"])), flush=True)
        return _finish(0, result, args.status_file)

    if "LOCAL_RANK" not in os.environ and not os.environ.get("SFTOP_LAUNCHED"):
        processes = process_count(args.processes)
        if cfg.distribution.nodes > 1:
            try:
                group = Group.from_env(cfg.distribution.nodes, cfg.run.id)
            except ValueError as e:
                return fail(ExitCode.INVALID_CONFIG, str(e))
            return launch(processes, args.config, group)
        if processes > 1:
            return launch(processes, args.config)
    if args.status_file:  # this pod's processes reached training: a later lost rendezvous is a lost peer
        Path(args.status_file).with_name("started").touch()

    from sftop_trainer import threads, train

    threads.size_threads()  # before torch starts its thread pools
    progress_bar = sys.stdout.isatty() if args.progress_bar is None else args.progress_bar
    try:
        result = train.run(cfg, progress_bar=progress_bar)
    except TrainerError as e:
        return fail(e.code, e.message, getattr(e, "details", None))
    except Exception as e:
        import torch

        from sftop_trainer.errors import peer_lost
        from sftop_trainer.train import world_size

        if isinstance(e, torch.OutOfMemoryError):
            return fail(ExitCode.OUT_OF_MEMORY, f"CUDA ran out of memory: {str(e).splitlines()[0]}")
        if world_size() > 1 and peer_lost(e):
            return fail(ExitCode.PEER_LOST, f"another training process went away: {str(e).splitlines()[0][:300]}")
        traceback.print_exc()
        return fail(ExitCode.UNEXPECTED, f"{type(e).__name__}: {e}")
    return _finish(0, result, args.status_file)


if __name__ == "__main__":
    sys.exit(main())
