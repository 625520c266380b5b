"""What a run reports when it ends: result.json (a finished run's, found again by a re-run of its config; a failed
run's, with what it reached), the shape of a failure, and the termination message (the part of the result or
failure the operator reads, within Kubernetes' 4 KiB)."""

from __future__ import annotations

import json
import logging
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from sftop_trainer.checkpoints import CHECKPOINTS, checkpoint_step, inventory
from sftop_trainer.config import TrainerConfig
from sftop_trainer.errors import EXIT_CLASSES, ConfigError, ExitCode, TrainerError
from sftop_trainer.history import write_history_plot
from sftop_trainer.prepare import config_fingerprint

log = logging.getLogger("sftop_trainer")

TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
STATUS_SAMPLE_CHARS = 160  # a sample's strings in the termination message (and so in the SFTJob's status)
# the libraries whose versions result.json records
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "sftop")


def compact_evaluation(evaluation: dict[str, Any] | None, samples: int) -> dict[str, Any] | None:
    """The result's evaluation as the SFTJob's status holds it: before, after, and a few short samples."""
    if not evaluation:
        return None
    out = {k: evaluation[k] for k in ("prompts", "before", "after", "fingerprint", "parity")
           if evaluation.get(k) is not None}

    def cut(value):
        return value if not isinstance(value, str) or len(value) <= STATUS_SAMPLE_CHARS \
            else value[: STATUS_SAMPLE_CHARS - 1] + "…"

    out["samples"] = [{k: cut(v) for k, v in s.items() if v is not None}
                      for s in (evaluation.get("samples") or [])[:samples]]
    return out


def compact(result: dict[str, Any]) -> str:
    """The result (or failure) in the keys the operator reads, within the termination-message limit: older
    checkpoints (the best one stays), then samples, then the evaluation give way first."""
    keys = ("status", "exitCode", "reason", "message", "steps", "resultStep", "stopReason", "trainLoss", "evalLoss",
            "runtimeSeconds", "trainableParameters", "totalParameters", "trainedTokens", "adapterPath", "mergedPath",
            "resumedFromStep", "warmStart", "serving")
    small = {k: result[k] for k in keys if result.get(k) is not None}
    if result.get("plan"):
        small["plan"] = result["plan"]
        if len(json.dumps(small).encode()) > TERMINATION_LIMIT:  # the assumptions stay in plan.json
            small["plan"] = {**result["plan"], "memory": {k: v for k, v in result["plan"]["memory"].items()
                                                          if k != "assumptions"}}
    checkpoints = result.get("checkpoints") or []

    def fewer(n: int) -> list[dict[str, Any]]:
        best = [c for c in checkpoints if c.get("best")]
        newest = checkpoints[-n:] if n else []
        return best + [c for c in newest if c not in best] if best and best[0] not in newest else newest

    def text_of(extra: dict[str, Any]) -> str:
        return json.dumps({**small, **{k: v for k, v in extra.items() if v}}, separators=(",", ":"),
                          ensure_ascii=False)

    for samples in (3, 2, 1, 0):
        for n in (len(checkpoints), 5, 2, 1):
            text = text_of({"evaluation": compact_evaluation(result.get("evaluation"), samples),
                            "checkpoints": fewer(n)})
            if len(text.encode()) <= TERMINATION_LIMIT:
                return text
    text = text_of({"checkpoints": fewer(1)})
    if len(text.encode()) <= TERMINATION_LIMIT:
        return text
    small.pop("serving", None)
    text = text_of({})
    if len(text.encode()) > TERMINATION_LIMIT and "message" in small:
        over = len(text.encode()) - TERMINATION_LIMIT + 16
        small["message"] = small["message"].encode()[: max(0, len(small["message"].encode()) - over)].decode(
            errors="ignore") + " …"
        text = text_of({})
    return text


def write_termination_message(result: dict[str, Any]) -> None:
    path = os.environ.get("SFTOP_TERMINATION_LOG", "/dev/termination-log")
    try:
        Path(path).write_text(compact(result))
    except OSError as e:
        log.debug("no termination message written to %s: %s", path, e)


def failure(code: ExitCode, reason: str, message: str) -> dict[str, Any]:
    return {"status": "Failed", "exitCode": int(code), "reason": reason, "message": message}


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def finished_result(cfg: TrainerConfig, out: Path) -> dict[str, Any] | None:
    """The result of this config's run when it already finished in `out` (a retried pod, or a re-run): it is
    reported as it is, never retrained over or replaced. A finished run of another config in `out` is an error."""
    path = out / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if result.get("status") != "Succeeded":
        return None
    if result.get("configSha256") != config_fingerprint(cfg):
        raise ConfigError(f"output.dir {out} holds the finished result of another config (result.json); write "
                          f"this run to another folder, or move that result away")
    return result


def mean_train_loss(log_history: list[dict[str, Any]]) -> float | None:
    """The mean training loss over the whole run, attempts before a resume included: each logged loss is the mean
    of the steps since the previous log, so they are weighted by those steps."""
    total = steps = 0.0
    previous = 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            span = max(1, entry["step"] - previous)
            total, steps, previous = total + entry["loss"] * span, steps + span, entry["step"]
    return total / steps if steps else None


def early_stop_reason(cfg: TrainerConfig, trainer) -> str | None:
    """Why the run ended before its planned steps, when it did (not for an interruption)."""
    es = cfg.training.early_stopping
    state = trainer.state
    if es is None or state.global_step >= state.max_steps:
        return None
    return (f"EarlyStopping: the eval loss did not improve by more than {es.threshold:g} for {es.patience} "
            f"evaluation(s); best {state.best_metric:.4g} at step "
            f"{checkpoint_step(Path(state.best_model_checkpoint)) if state.best_model_checkpoint else '?'}, stopped "
            f"at step {state.global_step} of {state.max_steps}")


def write_failed_result(cfg: TrainerConfig, out: Path, error: TrainerError, started: float,
                        state: dict[str, Any]) -> dict[str, Any]:
    """result.json of a failed run: the failure, the steps and metrics it reached, and the checkpoints it kept. A
    finished run's result is never replaced. Returns what the termination message adds to the failure."""
    trainer, record, report = state.get("trainer"), state.get("record"), state.get("report")
    details: dict[str, Any] = {}
    if trainer is not None:
        history = trainer.state.log_history
        losses = [h["loss"] for h in history if "loss" in h]
        details.update(steps=trainer.state.global_step, trainLoss=mean_train_loss(history),
                       firstLoss=losses[0] if losses else None, finalLoss=losses[-1] if losses else None)
    details["checkpoints"] = inventory(out / CHECKPOINTS, trainer.state.best_model_checkpoint
                                       if trainer is not None else None)
    if record is not None:
        details["evaluation"] = record.summary()
    details["batch"] = state.get("batch")  # what training.autoBatchSize tried last
    details = {k: v for k, v in details.items() if v not in (None, [])}
    result = {**failure(error.code, EXIT_CLASSES[int(error.code)].reason, error.message), "runId": cfg.run.id,
              **details, "data": report.as_dict() if report is not None else None,
              "runtimeSeconds": round(time.time() - started, 2), "configSha256": config_fingerprint(cfg),
              "versions": library_versions()}
    path = out / "result.json"
    try:
        if path.is_file() and json.loads(path.read_text()).get("status") == "Succeeded":
            return details  # another config's finished result: never replaced
    except (OSError, ValueError):
        pass
    try:
        path.write_text(json.dumps(result, indent=2) + "\n")
        write_history_plot(cfg, out)
    except OSError as e:
        log.warning("could not write the failed run's result.json: %s", e)
    return details
