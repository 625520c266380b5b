"""Experiment tracking: MLflow and Weights & Biases through transformers' own integrations (`report_to`).

The trainer config names the targets (never credentials: those arrive as environment variables from Secrets).
`session` sets what the integrations read from the environment for the length of one run, starts the run's MLflow
run itself so the evaluation after training lands in it too (a retried attempt resumes it through tracking.json),
and ends the MLflow and W&B runs when the run ends, with its outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from sftop_trainer.config import TrainerConfig
from sftop_trainer.errors import Interrupted

TRACKING_FILE = "tracking.json"  # the MLflow run of this run folder


def report_to(cfg: TrainerConfig) -> list[str] | str:
    """transformers' integrations the run reports to, from the config's tracking targets."""
    if cfg.tracking is None:
        return "none"
    return [name for name in ("mlflow", "wandb") if getattr(cfg.tracking, name) is not None] or "none"


def environment(cfg: TrainerConfig) -> dict[str, str]:
    """What transformers' MLflow and W&B callbacks read from the environment, from the config."""
    env: dict[str, str] = {}
    t = cfg.tracking
    if t is None:
        return env
    tags = {"sftop.run": cfg.run.id, "sftop.sftjob": f"{cfg.run.namespace}/{cfg.run.sftjob}" if cfg.run.sftjob
            else None, "sftop.model": cfg.model.hub_id or cfg.model.name, "sftop.method": cfg.method}
    if t.mlflow is not None:
        env.update(MLFLOW_TRACKING_URI=t.mlflow.tracking_uri, MLFLOW_EXPERIMENT_NAME=t.mlflow.experiment,
                   MLFLOW_TAGS=json.dumps({k: v for k, v in tags.items() if v}), MLFLOW_FLATTEN_PARAMS="TRUE",
                   HF_MLFLOW_LOG_ARTIFACTS="FALSE")
    if t.wandb is not None:
        env.update(WANDB_PROJECT=t.wandb.project, WANDB_LOG_MODEL="false", WANDB_WATCH="false")
        if t.wandb.entity:
            env["WANDB_ENTITY"] = t.wandb.entity
        if t.wandb.base_url:
            env["WANDB_BASE_URL"] = t.wandb.base_url
    return env


def start_mlflow_run(cfg: TrainerConfig, out: Path):
    """The run's MLflow run (resumed when tracking.json names one), or None without MLflow tracking."""
    from sftop_trainer.runtime import is_main_process

    if cfg.tracking is None or cfg.tracking.mlflow is None or not is_main_process():
        return None
    import mlflow

    target = cfg.tracking.mlflow
    mlflow.set_tracking_uri(target.tracking_uri)
    mlflow.set_experiment(target.experiment)
    saved = out / TRACKING_FILE
    run_id = None
    if saved.is_file():
        try:
            run_id = json.loads(saved.read_text()).get("mlflowRunId")
        except ValueError:
            pass
    tags = json.loads(os.environ.get("MLFLOW_TAGS", "{}"))
    active = mlflow.start_run(run_id=run_id, run_name=None if run_id else cfg.tracking.run_name, tags=tags)
    saved.write_text(json.dumps({"mlflowRunId": active.info.run_id, "trackingUri": target.tracking_uri,
                                 "experiment": target.experiment}) + "\n")
    return mlflow


@contextlib.contextmanager
def session(cfg: TrainerConfig, out: Path) -> Iterator[None]:
    """One run's tracking: the environment the integrations read, set for the run and put back after it; the MLflow
    and W&B runs, ended with the run's outcome (an interruption that a later attempt resumes is KILLED)."""
    env = environment(cfg)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    outcome = "FAILED"
    mlflow = None
    try:
        mlflow = start_mlflow_run(cfg, out)
        yield
        outcome = "FINISHED"
    except Interrupted:
        outcome = "KILLED"
        raise
    finally:
        from sftop_trainer.runtime import is_main_process

        if mlflow is not None:
            mlflow.end_run(status=outcome)
        if cfg.tracking is not None and cfg.tracking.wandb is not None and is_main_process():
            import wandb

            if wandb.run is not None:  # the run's record is complete when the trainer's run ends, not at exit
                wandb.finish(exit_code=0 if outcome == "FINISHED" else 1)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
