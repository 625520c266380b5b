"""The run's SFTConfig (TRL's TrainingArguments) from the trainer config: defaults, precision, evaluation and
saving, FSDP, and the training.sftConfig passthrough, checked against SFTConfig's own fields."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from pathlib import Path
from typing import Any

from sftop_trainer import model as model_mod
from sftop_trainer import tracking
from sftop_trainer.checkpoints import CHECKPOINTS
from sftop_trainer.config import TrainerConfig, default_learning_rate
from sftop_trainer.errors import ConfigError
from sftop_trainer.runtime import world_size

log = logging.getLogger(__name__)


def fsdp_settings(cfg: TrainerConfig) -> dict[str, Any]:
    """distribution.strategy FSDP as transformers' TrainingArguments take it, for accelerate's FSDP2 plugin: every
    decoder layer (the model's _no_split_modules) is sharded over all processes and its parameters gathered for its
    forward and backward; FSDP's own activation checkpointing replaces the Trainer's; full state dicts are gathered
    for saving, so checkpoints, adapters and models keep the one-process format."""
    return {"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True,
                                          "cpu_offload": cfg.distribution.cpu_offload,
                                          "activation_checkpointing": cfg.training.gradient_checkpointing,
                                          "state_dict_type": "FULL_STATE_DICT"}}


def sft_field_names() -> set[str]:
    from trl import SFTConfig

    return {f.name for f in dataclasses.fields(SFTConfig)}


def build_sft_config(cfg: TrainerConfig, output_dir: Path, *, has_eval: bool, assistant_only_loss: bool,
                     progress_bar: bool):
    from trl import SFTConfig

    t = cfg.training
    gpu = model_mod.has_gpu()
    dtype = cfg.quantization.compute_dtype if cfg.method == "qlora" else str(model_mod.resolve_dtype(
        cfg.model.dtype)).removeprefix("torch.")
    # On a CPU, the first no-grad pass over a 4-bit model repacks its weights for inference and later training
    # computes wrong gradients: a QLoRA run there evaluates only once training is over.
    periodic_eval = has_eval and not (cfg.method == "qlora" and not gpu)
    if has_eval and t.evaluates and not periodic_eval:
        raise ConfigError("training.resultCheckpoint best and training.earlyStopping compare evaluations during "
                          "training, which qlora on a CPU cannot run (an inference pass corrupts its 4-bit weights' "
                          "training): use lora, or a GPU")
    warmup: float | int = t.warmup_steps if t.warmup_steps is not None else (
        t.warmup_ratio if t.warmup_ratio is not None else 0.03)
    fsdp = cfg.distribution.strategy == "FSDP"
    kw: dict[str, Any] = dict(
        output_dir=str(output_dir / CHECKPOINTS),
        num_train_epochs=t.epochs if t.epochs is not None else 1.0,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        learning_rate=t.learning_rate if t.learning_rate is not None else default_learning_rate(
            cfg.method, model_mod.hidden_size(cfg)),
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size or t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_length=t.max_length,
        packing=t.packing,
        assistant_only_loss=assistant_only_loss,
        completion_only_loss=t.completion_only_loss,
        warmup_steps=warmup,
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        seed=t.seed,
        data_seed=t.seed,
        # TRL's new name for gradient checkpointing; under FSDP, FSDP's own (fsdp_config below) does it
        activation_checkpointing=t.gradient_checkpointing and not fsdp,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=(t.eval_steps or t.save_steps) if periodic_eval else None,
        report_to=tracking.report_to(cfg),
        run_name=(cfg.tracking.run_name if cfg.tracking else None) or cfg.run.id,
        load_best_model_at_end=periodic_eval and t.result_checkpoint == "best",
        metric_for_best_model="eval_loss" if periodic_eval and t.evaluates else None,
        greater_is_better=False if periodic_eval and t.evaluates else None,
        use_cpu=not gpu,
        bf16=(gpu and dtype == "bfloat16") or model_mod.cpu_autocast(cfg),
        fp16=gpu and dtype == "float16",
        include_num_input_tokens_seen="non_padding",
        # transformers hides NaN/inf losses from its logs by default; the trainer must see them to fail fast.
        logging_nan_inf_filter=False,
        # transformers' own SIGTERM support: checkpoint at the next step boundary, then stop.
        enable_jit_checkpoint=True,
        disable_tqdm=not progress_bar,
        ddp_find_unused_parameters=False if world_size() > 1 and not fsdp else None,
    )
    if fsdp:
        kw.update(fsdp_settings(cfg))
    # Rows are tokenized before training, so batches load in the training process (no workers); torch gives any
    # DataLoader worker one thread. More worker processes than the CPUs this process may use only contend.
    budget = int(os.environ.get("OMP_NUM_THREADS") or 0)
    for key in ("dataloader_num_workers", "dataset_num_proc"):
        wanted = t.sft_config.get(key)
        if isinstance(wanted, int) and budget and wanted > budget:
            log.warning("training.sftConfig.%s is %d but this process may use %d CPU(s); they will contend", key,
                        wanted, budget)
    known = sft_field_names()
    for key, value in t.sft_config.items():
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            raise ConfigError(f"training.sftConfig: {key!r} is not an SFTConfig field"
                              + (f"; did you mean {hint[0]!r}?" if hint else ""))
        kw[key] = value
    try:
        return SFTConfig(**kw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"training: SFTConfig rejects these settings: {e}") from e
