"""One training run: the trainer built from the config (`build_trainer`), trained or resumed from its latest
complete checkpoint, and its adapter, merged model and result.json written (`run`); __main__ turns the outcome
into the exit code and the termination message.

Output layout under `output.dir`:
    adapter/          the LoRA adapter (adapter_model.safetensors, adapter_config.json) with the tokenizer and its
                      chat template; for method full, model/ holds the whole fine-tuned model instead
    checkpoints/      checkpoint-<step>/ folders, the newest `saveTotalLimit` kept; a restarted run resumes from
                      the latest complete one
    merged/           the base model with the adapter merged in, when output.mergeAdapter is set
    result.json       losses, steps, runtime, parameters, tokens, the data's sha256, model id and revision,
                      library versions
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from sftop_trainer import memory
from sftop_trainer import model as model_mod
from sftop_trainer import progress as progress_mod
from sftop_trainer import provenance, tracking
from sftop_trainer.args import build_sft_config
from sftop_trainer.callbacks import evaluation_callback, progress_callback, quiet_bar, record_callback
from sftop_trainer.checkpoints import (CHECKPOINTS, checkpoint_step, inventory, is_final_checkpoint,
                                       latest_complete_checkpoint)
from sftop_trainer.config import TrainerConfig
from sftop_trainer.errors import ConfigError, Interrupted, OutOfMemory, TrainerError
from sftop_trainer.history import write_history_plot
from sftop_trainer.prepare import PREPARED, config_fingerprint, ensure_writable, load_prepared, prepare_data
from sftop_trainer.progress import Progress, emit, serve
from sftop_trainer.result import (early_stop_reason, finished_result, library_versions, mean_train_loss,
                                  write_failed_result)
from sftop_trainer.runtime import is_main_process, world_size
from sftop_trainer.signals import SigtermWatch, agreed_checkpoint, checkpoint_at_once
from sftop_trainer.trainer import make_trainer_class

log = logging.getLogger(__name__)


def build_trainer(cfg: TrainerConfig, progress: Progress, *, progress_bar: bool = False, data=None):
    """Tokenizer, data, model and SFTTrainer, ready to train. Returns (trainer, tokenizer, prepared data). `data`:
    the data prepared already (a retry with a smaller batch)."""
    if cfg.distribution.strategy == "FSDP":
        if not model_mod.has_gpu():
            # accelerate applies its FSDP plugin only on accelerators: on CPUs it would train data parallel
            raise ConfigError("distribution.strategy FSDP needs GPUs: accelerate shards a model only on "
                              "accelerators, and this machine has none; use DataParallel on CPUs")
        if world_size() < 2:
            raise ConfigError("distribution.strategy FSDP shards the model over training processes, and this run "
                              "has one; use DataParallel, or more GPUs or nodes")
    tokenizer = model_mod.load_tokenizer(cfg)
    args = build_sft_config(cfg, Path(cfg.output.dir), has_eval=False, assistant_only_loss=False,
                            progress_bar=progress_bar)
    if data is None:
        data = load_prepared(Path(cfg.output.dir) / PREPARED, config_fingerprint(cfg))
        if data is not None:
            log.info("training on the data the Validating phase prepared: %d samples", len(data.train))
        else:
            data = prepare_data(cfg, tokenizer, args)
    if data.eval is not None:
        args = build_sft_config(cfg, Path(cfg.output.dir), has_eval=True, assistant_only_loss=False,
                                progress_bar=progress_bar)
    args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}

    progress.update(phase="LoadingModel")
    provenance.check_warm_start(cfg)  # before any weight is loaded
    model = model_mod.load_model(cfg, cfg.training.gradient_checkpointing and cfg.distribution.strategy != "FSDP")
    peft_config = model_mod.lora_config(cfg, model) if cfg.method != "full" else None
    if cfg.warm_start is not None:
        from peft import PeftModel

        log.info("continuing the adapter at %s", cfg.warm_start.name)
        model = PeftModel.from_pretrained(model, cfg.warm_start.path, is_trainable=True)
        for config in model.peft_config.values():  # the base it is trained on here, whatever name it came with
            config.base_model_name_or_path = cfg.model.name
        peft_config = None
    t = cfg.training
    best = args.load_best_model_at_end
    callbacks = [progress_callback(progress, best=best), record_callback(cfg, progress, Path(cfg.output.dir))]
    if t.early_stopping is not None and args.metric_for_best_model:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(t.early_stopping.patience, t.early_stopping.threshold))
    trainer = make_trainer_class()(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                                   processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # the JSON progress lines say the same
    checkpoint_at_once(trainer)
    agreed_checkpoint(trainer)
    if progress_bar:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(quiet_bar())
    return trainer, tokenizer, data


def run(cfg: TrainerConfig, *, progress_bar: bool = False) -> dict[str, Any]:
    """Train as `cfg` says and return the result (also written to result.json). A run that fails (but for an
    interruption, which a later attempt resumes) leaves a result.json too, with the failure and what it had."""
    import datasets
    import transformers

    # In a pod the log is read by machines and people: JSON lines, no progress bars. A terminal gets one bar.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    progress_mod.JSON_LINES = not progress_bar
    out = Path(cfg.output.dir)
    ensure_writable(out)
    from sftop_trainer import fetch

    cfg = fetch.for_training(cfg)  # a model from the shared cache: the commit validation resolved
    done = finished_result(cfg, out)
    if done is not None:
        log.info("run %s already finished in %s; reporting its result", cfg.run.id or "", out)
        emit("result", **done)
        return done
    previous_handler = signal.getsignal(signal.SIGTERM)
    progress = Progress(cfg.run.id)
    # SFTOP_PROGRESS_HOST: several trainers on one host (a test node, a workstation) each listen on their own address.
    host = os.environ.get("SFTOP_PROGRESS_HOST") or cfg.progress.host
    server = serve(progress, host, cfg.progress.port) if is_main_process() else None
    started = time.time()
    state: dict[str, Any] = {}
    try:
        with tracking.session(cfg, out):
            return _train(cfg, out, progress, progress_bar, started, state)
    except TrainerError as e:
        if not isinstance(e, Interrupted) and is_main_process():
            e.details = write_failed_result(cfg, out, e, started, state)  # type: ignore[attr-defined]
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if server is not None:
            server.shutdown()
            server.server_close()


def _train(cfg: TrainerConfig, out: Path, progress: Progress, progress_bar: bool, started: float,
           state: dict[str, Any]) -> dict[str, Any]:
    from sftop_trainer.evaluate import AnswerEval, EvaluationRecord, fingerprint

    watch = SigtermWatch()
    emit("start", runId=cfg.run.id, model=cfg.model.name, method=cfg.method)
    model_mod.check_gpus(cfg.hardware.gpus)
    progress.update(phase="LoadingData")
    trainer, tokenizer, data = build_trainer(cfg, progress, progress_bar=progress_bar)
    state["trainer"] = trainer
    state["batch"] = {"perDevice": cfg.training.per_device_train_batch_size,
                      "accumulation": cfg.training.gradient_accumulation_steps, "reducedAfterOOM": 0}
    # what the Trainer actually does, not what was asked: accelerate wrapped the model in FSDP, or DDP, or neither
    strategy = "FSDP" if trainer.is_fsdp_enabled else ("DataParallel" if world_size() > 1 else "SingleProcess")
    report, eval_rows = data.report, data.eval_rows
    state["report"] = report
    ev = cfg.evaluation
    answers = AnswerEval(tokenizer, eval_rows, ev.prompts, ev.max_new_tokens, ev.samples, progress_bar) \
        if ev.answers and eval_rows is not None else None
    if answers is not None:
        answers.shots, answers.shot_rows = ev.few_shot, data.shots
    record = EvaluationRecord(out, answers) if eval_rows is not None else None
    if record is not None:
        record.fingerprint = fingerprint(eval_rows, ev.prompts if ev.answers else 0, ev.max_new_tokens)
    state["record"] = record
    _attach_record(trainer, record)
    trainable, total = model_mod.count_parameters(trainer.model)
    learning_rate = trainer.args.learning_rate
    resume = latest_complete_checkpoint(out / CHECKPOINTS)
    resumed_from = checkpoint_step(resume) if resume else 0
    emit("train", resumeFromStep=resumed_from, trainRows=report.rows_train, evalRows=report.rows_eval,
         overlong=report.overlong, trainableParameters=trainable, totalParameters=total, loss=report.loss,
         warmStart=cfg.warm_start.name if cfg.warm_start else None, processes=world_size(),
         nodes=cfg.distribution.nodes, strategy=strategy)
    if record is not None and ev.baseline and resume is None and record.before is None:
        if cfg.method == "qlora" and not model_mod.has_gpu():
            log.info("no evaluation before training: an inference pass on a 4-bit model on a CPU would corrupt "
                     "its training")
        else:
            progress.update(phase="Evaluating")
            trainer.evaluate()
            record.mark_baseline()
    watch.chain()
    if resume is not None and is_final_checkpoint(resume, trainer):
        # Training is over: finish from the last checkpoint (transformers would train a step past the end).
        from transformers import TrainerState

        log.info("the latest checkpoint is the run's last step; finishing the run from it")
        trainer._load_from_checkpoint(str(resume))
        trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
        if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint:
            trainer._load_best_model()
        train_runtime = max((h["train_runtime"] for h in trainer.state.log_history if "train_runtime" in h),
                            default=None)
    else:
        # handed over, not kept here: a retry after running out of memory must be able to free the first trainer
        held, trainer = [trainer], None
        trainer, output = _train_within_memory(cfg, out, held, resume, data, progress, progress_bar, watch, state)
        train_runtime = output.metrics.get("train_runtime")  # this attempt's training loop
        interrupted = watch.received or getattr(trainer, "group_interrupted", False)
        if interrupted and trainer.state.global_step < trainer.state.max_steps:
            raise Interrupted(f"stopped by SIGTERM at step {trainer.state.global_step}; a checkpoint was saved "
                              f"and the next attempt resumes from it")

    # SIGTERM during the last steps: training is complete, so the adapter is saved as usual (seconds) and the
    # run succeeds instead of being redone.
    steps, tokens = trainer.state.global_step, trainer.state.num_input_tokens_seen
    stop_reason = early_stop_reason(cfg, trainer)
    best_path = trainer.state.best_model_checkpoint if trainer.args.load_best_model_at_end else None
    result_step = checkpoint_step(Path(best_path)) if best_path else steps
    if record is not None and result_step != steps:
        # The best checkpoint's weights are loaded: its scores (and answers) are the result's.
        progress.update(phase="Evaluating")
        record.step_override = result_step
        if answers is not None:
            answers.step = None  # other weights than the last evaluation's: answer again
        trainer.evaluate()
        record.step_override = None
    elif record is not None and (not record.history or record.history[-1]["step"] != steps):
        progress.update(phase="Evaluating")
        trainer.evaluate()
    progress.update(phase="Saving")
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    final_dir = out / ("model" if cfg.method == "full" else "adapter")
    if cfg.method == "full" and not trainer.is_fsdp_enabled:
        # Trained in float32 master weights; delivered in the dtype it computed in, as its base came and as servers
        # load it (half the size). Checkpoints keep float32: a resumed run needs the master weights.
        trainer.model.to(model_mod.resolve_dtype(cfg.model.dtype))
    trainer.save_model(str(final_dir))
    if is_main_process():
        tokenizer.save_pretrained(str(final_dir))
    epoch = trainer.state.epoch
    checkpoints = inventory(out / CHECKPOINTS, best_path, evals={
        h["step"]: h["evalLoss"] for h in (record.history if record is not None else []) if "evalLoss" in h})
    autocast = "bfloat16" if trainer.args.bf16 else ("float16" if trainer.args.fp16 else None)
    state.pop("trainer", None)
    del trainer
    merged_dir = None
    if cfg.output.merge_adapter and cfg.method != "full" and is_main_process():
        merged_dir = merge_adapter(cfg, final_dir, out / "merged")

    evaluation = record.summary(result_step) if record is not None else None
    result = {
        "status": "Succeeded",
        "runId": cfg.run.id,
        "model": {"name": cfg.model.hub_id or cfg.model.name,
                  "revision": cfg.model.resolved_revision or cfg.model.revision},
        "method": cfg.method,
        "adapterPath": final_dir.name,
        "mergedPath": merged_dir.name if merged_dir else None,
        "steps": steps,
        "resultStep": result_step,
        "stopReason": stop_reason,
        "epochs": round(epoch, 4) if epoch else None,
        "resumedFromStep": resumed_from,
        "warmStart": cfg.warm_start.name if cfg.warm_start else None,
        "trainLoss": mean_train_loss(history),
        "firstLoss": losses[0] if losses else None,
        "finalLoss": losses[-1] if losses else None,
        "evalLoss": (evaluation or {}).get("after", {}).get("evalLoss"),
        "evaluation": evaluation,
        "checkpoints": checkpoints,
        "runtimeSeconds": round(time.time() - started, 2),
        "trainRuntimeSeconds": round(train_runtime, 2) if train_runtime is not None else None,
        "learningRate": learning_rate,
        "trainableParameters": trainable,
        "totalParameters": total,
        "trainedTokens": tokens,
        "distribution": {"nodes": cfg.distribution.nodes, "processes": world_size(), "strategy": strategy},
        "batch": state["batch"],
        "data": report.as_dict(),
        "configSha256": config_fingerprint(cfg),
        "versions": library_versions(),
    }
    if is_main_process():
        if cfg.method != "full":
            result["serving"] = provenance.write(final_dir, cfg, result, started, time.time())
        else:
            provenance.write_provenance(final_dir, cfg, result, started, time.time())
        if cfg.evaluation.parity and cfg.method == "lora" and evaluation is not None and answers is not None \
                and answers.latest_answers is not None:
            from sftop_trainer import parity

            progress.update(phase="CheckingServing")
            model_mod.free_accelerator_memory()  # the training model is gone: its GPU memory goes to the check
            evaluation["parity"] = parity.check(
                final_dir, answers.items, answers.latest_answers, answers.new_tokens,
                str(model_mod.resolve_dtype(cfg.model.dtype)).removeprefix("torch."), base_path=cfg.model.name,
                batch_size=answers.batch_size, shown=answers.sample_count, autocast=autocast,
                revision=cfg.model.resolved_revision or cfg.model.revision,
                trust_remote_code=cfg.model.trust_remote_code)
        write_history_plot(cfg, out)
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        shutil.rmtree(out / PREPARED, ignore_errors=True)  # the prepared data served its run
    progress.update(phase="Succeeded", percent=100, eta="0s")
    emit("result", **result)
    return result


def _attach_record(trainer, record) -> None:
    """The evaluation record the trainer's evaluations write to (None without an eval split)."""
    trainer.evaluation_record = record
    if record is not None:
        trainer.add_callback(evaluation_callback(record))


def _train_within_memory(cfg: TrainerConfig, out: Path, held: list, resume: Path | None, data, progress: Progress,
                         progress_bar: bool, watch: SigtermWatch, state: dict[str, Any]):
    """trainer.train(); on running out of CUDA memory with training.autoBatchSize, again with half the batch and
    twice the accumulation from the latest checkpoint, in a trainer built afresh once the old one's memory is freed.
    `held` holds the trainer and nothing else does (the caller, `state` and the SIGTERM chain let go of it before a
    retry). Returns (the trainer that finished, its train() output)."""
    import torch

    trainer = held.pop()
    t = cfg.training
    batch, accumulation, reduced = t.per_device_train_batch_size, t.gradient_accumulation_steps, 0
    while True:
        try:
            return trainer, trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except torch.OutOfMemoryError as e:
            smaller = memory.halved_batch(batch, accumulation) if t.auto_batch_size and world_size() == 1 else None
            peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
            gpu_memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory \
                if torch.cuda.is_available() else None
            message = memory.out_of_memory_message(trainer.state.global_step, batch, accumulation, _plan_memory(out),
                                                   gpu_memory, peak, reduced, t.auto_batch_size)
            if smaller is None:
                raise OutOfMemory(f"{message} ({str(e).splitlines()[0]})") from e
        log.warning("%s; training.autoBatchSize: retrying with %d sequence(s) per GPU and gradientAccumulationSteps "
                    "%d", message.split(". What would fit")[0], *smaller)
        (batch, accumulation), reduced = smaller, reduced + 1
        state["batch"] = {"perDevice": batch, "accumulation": accumulation, "reducedAfterOOM": reduced}
        # Free the failed attempt's model, optimizer and activations before the next one allocates its own.
        trainer.accelerator.free_memory()
        state.pop("trainer", None)
        watch._next = None  # the old trainer's SIGTERM handler holds the old trainer; the new one installs its own
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        smaller_cfg = cfg.model_copy(update={"training": t.model_copy(update={
            "per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation})})
        trainer, _, _ = build_trainer(smaller_cfg, progress, progress_bar=progress_bar, data=data)
        state["trainer"] = trainer
        _attach_record(trainer, state.get("record"))
        watch.chain()  # the new trainer installed its own SIGTERM handler
        resume = latest_complete_checkpoint(out / CHECKPOINTS)


def _plan_memory(out: Path) -> dict[str, Any] | None:
    """The memory part of the plan the Validating phase left in output.dir (none when validation was off)."""
    try:
        return json.loads((out / "plan.json").read_text()).get("memory")
    except (OSError, ValueError):
        return None


def merge_adapter(cfg: TrainerConfig, adapter_dir: Path, merged_dir: Path) -> Path:
    """Base model (unquantized, in its own dtype) + adapter, merged and saved for serving stacks without LoRA."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = model_mod.resolve_dtype(cfg.model.dtype)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name, dtype=dtype, **model_mod._from_pretrained_kwargs(cfg))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(merged_dir))
    model_mod.load_tokenizer(cfg).save_pretrained(str(merged_dir))
    return merged_dir
