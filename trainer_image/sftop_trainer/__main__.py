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
(training.lossWatchdog), 71 another pod of a multi-node run was lost, 72 GPUs asked for but not usable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from sftop_trainer.errors import EXIT_CLASSES, ExitCode, TrainerError

log = logging.getLogger("sftop_trainer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sftop-train", description="Run one SFT run from a trainer config.")
    p.add_argument("--config", help="trainer config file (JSON or YAML)")
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
    p.add_argument("--promote", metavar="FOLDER",
                   help="instead of training: switch FOLDER/promoted (an SFTJob's folder on the output claim) to "
                        "the adapter of the run --run names (sftop_trainer.promote)")
    p.add_argument("--run", help="with --promote: the run id")
    p.add_argument("--kind", default="adapter", choices=("adapter", "model"),
                   help="with --promote: the run's adapter/ or, for method full, its model/")
    p.add_argument("--status-file", help=argparse.SUPPRESS)  # where a launched worker leaves its exit code
    return p


def process_count(requested: int | None) -> int:
    if requested is not None:
        return requested
    if os.environ.get("SFTOP_PROCESSES"):
        return int(os.environ["SFTOP_PROCESSES"])
    import torch

    return max(1, torch.cuda.device_count())


def _finish(code: int, result: dict, status_file: str | None) -> int:
    """Leave the outcome for the pod. A launched process leaves its code and failure for the launcher, which writes
    the pod's termination message when any process failed (`sftop_trainer.launch`). Otherwise the run's first process
    writes the message (the result); on other pods the first process writes its own (on success, only that it
    succeeded)."""
    from sftop_trainer.result import write_termination_message
    from sftop_trainer.runtime import is_main_process, is_node_main_process

    if status_file:
        from sftop_trainer.launch import write_status

        write_status(status_file, code, result)
        if code:
            return code
    if is_main_process():
        write_termination_message(result)
    elif is_node_main_process():
        write_termination_message(result if code else {"status": "Succeeded"})
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
    from sftop_trainer.result import failure

    def fail(code: ExitCode, message: str, details: dict | None = None) -> int:
        reason = EXIT_CLASSES[code].reason
        log.error("%s: %s", reason, message)
        return _finish(int(code), {**failure(code, reason, message), **(details or {})}, args.status_file)

    if args.promote:
        return promote(args)
    if not args.config:
        build_parser().error("--config is required (or --promote FOLDER --run ID)")
    try:
        cfg = load_config(args.config)
    except OSError as e:
        return fail(ExitCode.INVALID_CONFIG, f"cannot read the trainer config {args.config}: {e}")
    except ValueError as e:
        return fail(ExitCode.INVALID_CONFIG, f"invalid trainer config {args.config}: {e}")

    if args.validate:
        try:
            cache = None
            if cfg.model.cache and not cfg.model.resolved_revision:
                # the shared model cache first, before torch is imported: a Hub refusal is said in seconds
                from sftop_trainer import fetch

                cache = fetch.fill(cfg)
                cfg = fetch.at(cfg, cache["revision"])
            from sftop_trainer import plan

            result = plan.validate(cfg, cache)
        except TrainerError as e:
            return fail(e.code, e.message)
        except Exception as e:
            traceback.print_exc()
            return fail(ExitCode.UNEXPECTED, f"{type(e).__name__}: {e}")
        print("\n".join(plan.describe(result["plan"])), flush=True)
        return _finish(0, result, args.status_file)

    if "LOCAL_RANK" not in os.environ and not os.environ.get("SFTOP_LAUNCHED"):
        processes = process_count(args.processes)
        from sftop_trainer.launch import Group, launch

        if cfg.model.cache and (processes > 1 or cfg.distribution.nodes > 1):
            # the model from the shared cache, once for all of this pod's processes (sftop_trainer.fetch)
            from sftop_trainer import fetch

            try:
                os.environ[fetch.COMMIT_VARIABLE] = fetch.for_training(cfg).model.resolved_revision or ""
            except TrainerError as e:
                return fail(e.code, e.message)
            if not os.environ[fetch.COMMIT_VARIABLE]:
                del os.environ[fetch.COMMIT_VARIABLE]

        if cfg.distribution.nodes > 1:
            try:
                group = Group.from_env(cfg.distribution.nodes, cfg.run.id)
            except ValueError as e:
                return fail(ExitCode.INVALID_CONFIG, str(e))
            return launch(processes, args.config, group)
        if processes > 1:
            return launch(processes, args.config)
    if args.status_file:  # this pod's processes reached training: a later lost rendezvous is a lost peer
        from sftop_trainer.launch import announce

        Path(args.status_file).with_name("started").touch()
        announce(args.status_file)

    from sftop_trainer import threads, train

    threads.size_threads()  # before torch starts its thread pools
    progress_bar = sys.stdout.isatty() if args.progress_bar is None else args.progress_bar
    try:
        result = train.run(cfg, progress_bar=progress_bar)
    except TrainerError as e:
        return fail(e.code, e.message, getattr(e, "details", None))
    except Exception as e:
        import torch

        from sftop_trainer.causes import peer_lost
        from sftop_trainer.runtime import world_size

        if isinstance(e, torch.OutOfMemoryError):
            return fail(ExitCode.OUT_OF_MEMORY, f"CUDA ran out of memory: {str(e).splitlines()[0]}")
        if world_size() > 1 and peer_lost(e):
            return fail(ExitCode.PEER_LOST, f"another training process went away: {str(e).splitlines()[0][:300]}")
        traceback.print_exc()
        return fail(ExitCode.UNEXPECTED, f"{type(e).__name__}: {e}")
    return _finish(0, result, args.status_file)


def promote(args: argparse.Namespace) -> int:
    """The promotion Job: the switch, its outcome in the termination message (whole: it is a few keys)."""
    import json

    from sftop_trainer import promote as promote_mod
    from sftop_trainer.result import failure

    path = Path(os.environ.get("SFTOP_TERMINATION_LOG", "/dev/termination-log"))
    try:
        if not args.run:
            raise ValueError("--promote needs --run ID")
        outcome: dict = promote_mod.main(args.promote, args.run, args.kind)
        code = 0
    except (TrainerError, OSError, ValueError) as e:
        message = getattr(e, "message", None) or str(e)
        code = int(ExitCode.INVALID_CONFIG)
        outcome = failure(ExitCode.INVALID_CONFIG, "PromotionFailed", message)
        log.error("PromotionFailed: %s", message)
    try:
        path.write_text(json.dumps(outcome, separators=(",", ":")))
    except OSError as e:
        log.debug("no termination message written to %s: %s", path, e)
    return code


if __name__ == "__main__":
    sys.exit(main())
