"""One training run: config in; adapter, checkpoints, result.json and a termination message out.

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

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from sftop_trainer import data as data_mod
from sftop_trainer import model as model_mod
from sftop_trainer import progress as progress_mod
from sftop_trainer import provenance, tracking
from sftop_trainer.config import TrainerConfig, default_learning_rate
from sftop_trainer.errors import (
    EXIT_CLASSES,
    ConfigError,
    DataError,
    ExitCode,
    Interrupted,
    LossNotFinite,
    LossSpike,
    OutOfMemory,
    TrainerError,
)
from sftop_trainer.progress import Progress, emit, serve
from sftop_trainer.result import failure
from sftop_trainer.runtime import is_main_process, world_size

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
INCOMPLETE_MARK = "checkpoint-is-incomplete.txt"  # written by transformers' JIT checkpoint while it saves
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "sftop")


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# ------------------------------------------------------------------------------------- checkpoints


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint is complete once transformers wrote trainer_state.json (its last file) and no JIT save is
    still marked in progress."""
    state = path / "trainer_state.json"
    if (path / INCOMPLETE_MARK).exists() or not state.is_file():
        return False
    try:
        json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return True


def planned_steps(trainer) -> int:
    """The run's optimizer steps, as transformers computes them: maxSteps, or epochs of the data loader's batches."""
    if trainer.args.max_steps > 0:
        return trainer.args.max_steps
    per_epoch = max(1, len(trainer.get_train_dataloader()) // trainer.args.gradient_accumulation_steps)
    return math.ceil(trainer.args.num_train_epochs * per_epoch)


def is_final_checkpoint(path: Path, trainer) -> bool:
    """Whether a checkpoint holds this run's last step (a pod that died after saving it, before its result)."""
    state = json.loads((path / "trainer_state.json").read_text())
    return state.get("global_step", 0) >= planned_steps(trainer)


def latest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint-<step>/ in `folder`. Newer, incomplete ones (a save cut short by SIGKILL)
    are removed so checkpoint rotation never counts them."""
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
                    and p.name.rsplit("-", 1)[-1].isdigit()), key=checkpoint_step, reverse=True)
    for path in found:
        if is_complete_checkpoint(path):
            return path
        log.warning("removing incomplete checkpoint %s", path)
        shutil.rmtree(path, ignore_errors=True)
    return None


# -------------------------------------------------------------------------------------- SFTConfig


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


# ------------------------------------------------------------------------------------------ trainer


def make_trainer_class():
    """SFTTrainer that counts samples longer than maxLength before truncating (or dropping) them; TRL alone
    truncates silently."""
    from trl import SFTTrainer
    from trl.data_utils import pack_dataset

    class Trainer(SFTTrainer):
        long_samples = "truncate"
        data_counts: dict[str, dict[str, Any]]

        @classmethod
        def preparer(cls, tokenizer, args, long_samples: str, train_dataset):
            """An object that prepares datasets exactly as this trainer would, without a model: SFTTrainer's own
            preparation needs only the tokenizer, the config, and the loss choice it makes from the training data."""
            self = cls.__new__(cls)
            self._tokenizer, self.args, self.long_samples, self.data_counts = tokenizer, args, long_samples, {}
            self.chat_template = None  # assistant masks come from sftop_trainer.chat, never from a TRL template
            sample = train_dataset[0] if len(train_dataset) else {}
            self.completion_only_loss = args.completion_only_loss if args.completion_only_loss is not None else (
                "prompt" in sample and "completion" in sample)
            return self

        def prepare(self, dataset, name: str):
            if dataset is None:
                return None
            packing = self.args.packing if name == "train" or self.args.eval_packing is None else \
                self.args.eval_packing
            return self._prepare_dataset(dataset, self._tokenizer, self.args, packing, None, name)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.args.device.type != "cpu":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # On a CPU, TRL's fused LM head runs its chunked kernel as a loop of torch ops, not Triton: it took
            # 1.9 s of a 4.1 s LoRA step of a 135M model. The model's own loss over its logits is much faster
            # there; the metrics TRL logs (mean token accuracy, tokens) stay the same.
            import torch
            from transformers import Trainer as HFTrainer

            mode = "train" if self.model.training else "eval"
            inputs["use_cache"] = False
            loss, outputs = HFTrainer.compute_loss(self, model, inputs, return_outputs=True,
                                                   num_items_in_batch=num_items_in_batch)
            with torch.no_grad():
                labels = inputs["labels"][..., 1:]
                valid = labels != -100
                correct = (outputs.logits[..., :-1, :].argmax(-1) == labels) & valid
                counted = self.accelerator.gather_for_metrics(valid.sum()).sum()
                right = self.accelerator.gather_for_metrics(correct.sum()).sum()
            self._metrics[mode]["mean_token_accuracy"].append((right / counted).item() if counted > 0 else 0.0)
            if mode == "train":
                seen = inputs["attention_mask"].sum() if "attention_mask" in inputs else \
                    torch.tensor(inputs["position_ids"].size(1))
                self._total_train_tokens += self.accelerator.gather_for_metrics(seen).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            """Eval loss and token accuracy (TRL), then greedy answers to the held-out prompts, scored."""
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            record = getattr(self, "evaluation_record", None)  # an evaluate.EvaluationRecord
            if record is not None and record.answers and self.is_world_process_zero():
                with self.answer_context():
                    scores = record.answers.run(self.accelerator.unwrap_model(self.model), self.state.global_step)
                for key, name in (("exactMatch", "exact_match"), ("validJson", "valid_json")):
                    if key in scores:
                        output.metrics[f"{metric_key_prefix}_{name}"] = scores[key]
            return output

        def answer_context(self):
            """Generation in the dtype training computes in (bf16 autocast on CPUs that have it)."""
            import contextlib

            import torch

            if self.args.bf16 and self.args.device.type == "cpu":
                return torch.autocast("cpu", dtype=torch.bfloat16)
            return contextlib.nullcontext()

        def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
            limit = args.max_length
            args.max_length = None  # tokenize and mask without truncating, to see every sample's real length
            try:
                dataset = super()._prepare_dataset(dataset, processing_class, args, False, formatting_func,
                                                   dataset_name)
            finally:
                args.max_length = limit
            lengths = [len(ids) for ids in dataset["input_ids"]]
            overlong = [i for i, n in enumerate(lengths) if n > limit]
            counts: dict[str, Any] = {"samples": len(lengths), "overlong": len(overlong), "dropped": 0,
                                      "lengths": lengths}
            if overlong and self.long_samples == "drop":
                keep = sorted(set(range(len(lengths))) - set(overlong))
                dataset = dataset.select(keep)
                counts["dropped"] = len(overlong)
            elif overlong:
                dataset = dataset.map(lambda ex: {"input_ids": ex["input_ids"][:limit], "labels": ex["labels"][:limit]})
            before = len(dataset)
            dataset = dataset.filter(lambda ex: any(label != -100 for label in ex["labels"]))
            counts["no_loss_tokens"] = before - len(dataset)
            if len(dataset) == 0:
                raise DataError(f"the {dataset_name} data has no sample left to train on: {counts['overlong']} "
                                f"longer than maxLength {limit} ({self.long_samples}), {counts['no_loss_tokens']} "
                                f"without any token that carries loss")
            if overlong:
                log.warning("%s data: %d of %d samples are longer than maxLength %d; %s", dataset_name,
                            len(overlong), len(lengths), limit,
                            "dropped" if self.long_samples == "drop" else "truncated to their first tokens")
            counts["trained_tokens"] = sum(sum(1 for label in labels if label != -100) for labels in dataset["labels"])
            if packing:
                dataset = pack_dataset(dataset.select_columns(["input_ids", "labels"]), limit, args.packing_strategy)
            self.data_counts[dataset_name] = counts
            return dataset

    return Trainer


def progress_callback(progress: Progress, best: bool = False):
    """Live progress; `best`: the last step is evaluated and saved like any other, to compete for the result."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            progress.update(phase="Training", totalSteps=state.max_steps, step=state.global_step)

        def on_step_end(self, args, state, control, **kw):
            progress.step(state.global_step, state.max_steps, state.epoch, state.num_input_tokens_seen)
            if state.global_step >= state.max_steps:
                control.should_log = True  # the last step's loss, whatever loggingSteps is
                if best:
                    control.should_evaluate = control.should_save = True
                else:
                    control.should_evaluate = False  # the run evaluates once training is over (not in its runtime)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(loss):
                raise LossNotFinite(f"the training loss became {loss} at step {state.global_step}; lower the "
                                    f"learning rate (training.learningRate) or check the data")
            if "eval_loss" in logs:
                progress.update(evalLoss=logs["eval_loss"], exactMatch=logs.get("eval_exact_match"))
            if loss is not None:
                progress.update(loss=round(loss, 6), learningRate=logs.get("learning_rate"))
                emit("progress", **progress.snapshot())

    return ProgressCallback()


class LossSpikeWatch:
    """training.lossWatchdog: a logged loss above factor × the lowest logged so far, `logs` times in a row."""

    def __init__(self, factor: float, logs: int):
        self.factor, self.logs = factor, logs
        self.lowest: float | None = None
        self.high: list[tuple[int, float]] = []  # (step, loss) of the spike so far

    def observe(self, step: int, loss: float) -> str | None:
        """The reason to stop, once the spike lasted `logs` logs."""
        if self.lowest is not None and loss > self.factor * self.lowest:
            self.high.append((step, loss))
            if len(self.high) >= self.logs:
                first = self.high[0][0]
                return (f"the training loss spiked at step {first} and stayed above {self.factor:g} × its lowest "
                        f"({self.lowest:.4g}) for {len(self.high)} logged steps, reaching {loss:.4g} at step {step}")
            return None
        self.high = []
        self.lowest = loss if self.lowest is None else min(self.lowest, loss)
        return None


def record_callback(cfg: TrainerConfig, progress: Progress, out: Path):
    """The run's record as it trains: metrics.jsonl at each log, the checkpoint inventory at each save, the loss
    watchdog (training.lossWatchdog)."""
    from transformers import TrainerCallback

    from sftop_trainer import history as history_mod

    metrics = history_mod.MetricHistory(out)
    wd = cfg.training.loss_watchdog
    watch = LossSpikeWatch(wd.factor, wd.logs) if wd is not None else None

    class RecordCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if not logs:
                return
            if state.is_world_process_zero:
                metrics.observe(state.global_step, state.epoch, state.num_input_tokens_seen, logs)
            # Every process sees the same logged loss (averaged over them): all stop at the same step.
            loss = logs.get("loss")
            if watch is not None and isinstance(loss, (int, float)) and math.isfinite(loss):
                reason = watch.observe(state.global_step, loss)
                if reason:
                    before = [c for c in history_mod.inventory(out / CHECKPOINTS)
                              if c["complete"] and c["step"] < watch.high[0][0]]
                    kept = (f"{before[-1]['path']}, saved before the spike, is kept (warmStart.checkpoint: "
                            f"{before[-1]['step']} continues from it)") if before else \
                        "no checkpoint was saved before the spike"
                    raise LossSpike(f"{reason}; lower training.learningRate or check the data. {kept}")

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                progress.update(checkpoints=history_mod.inventory(out / CHECKPOINTS, state.best_model_checkpoint))

    return RecordCallback()


def quiet_bar():
    """transformers' progress bar, with the latest loss on the bar instead of a printed dict per log."""
    from transformers import ProgressCallback

    class QuietBar(ProgressCallback):
        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kw):
            pass  # evaluation is a few seconds: no second bar under the training one

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

    return QuietBar()


def agreed_checkpoint(trainer):
    """With several processes, make transformers' just-in-time checkpoint a decision of the whole group: SIGTERM
    reaches the processes at different moments, and a process that stops to save while the others go on to the
    next step would leave them waiting in a collective until they are killed, with no checkpoint. The signal's
    timer only marks a request as pending; at each step's end (before transformers' own check) the processes
    agree, through one all-reduce, whether any of them has one, and then all save at that same step."""
    from transformers import TrainerCallback
    from transformers.trainer_jit_checkpoint import JITCheckpointCallback

    jit = next((c for c in trainer.callback_handler.callbacks if isinstance(c, JITCheckpointCallback)), None)
    manager = getattr(jit, "jit_manager", None)
    if manager is None or world_size() < 2:
        return
    pending = {"requested": False}

    def request() -> None:  # the signal handler's timer, in its thread: only note it
        pending["requested"] = True

    manager._enable_checkpoint = request

    class AgreeOnCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            import torch
            import torch.distributed as dist

            flag = torch.tensor([1 if pending["requested"] else 0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                manager.is_checkpoint_requested = True
                trainer.group_interrupted = True  # this process may not have seen SIGTERM itself

    trainer.callback_handler.callbacks.insert(trainer.callback_handler.callbacks.index(jit), AgreeOnCheckpoint())


class SigtermWatch:
    """Remembers whether SIGTERM arrived. Before training it stops the run at once (nothing to save yet); during
    training it passes the signal on to transformers' JIT checkpoint handler."""

    def __init__(self):
        self.received = False
        self.training = False
        self._next = None
        signal.signal(signal.SIGTERM, self._handle)

    def chain(self) -> None:
        """Call after the Trainer installed its own handler: keep it, and see the signal first."""
        self._next = signal.getsignal(signal.SIGTERM)
        self.training = True
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True
        if not self.training:
            raise Interrupted("stopped by SIGTERM before training started; nothing to save")
        if callable(self._next):
            self._next(signum, frame)


# ----------------------------------------------------------------------------------------------- run


def _writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A name of its own: every local process of a multi-GPU run probes the same folder at once.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"output.dir {folder} is not writable: {e}") from e


@dataclasses.dataclass
class PreparedData:
    """The data exactly as training sees it: tokenized, masked, long samples handled, packed if asked."""

    train: Any
    eval: Any  # None without an eval split
    eval_rows: Any  # the eval rows before tokenization (their prompts are answered at evaluation)
    report: data_mod.DataReport
    lengths: list[int]  # each training sample's tokens before maxLength
    trained_tokens: int  # tokens that carry loss, after maxLength


def prepare_data(cfg: TrainerConfig, tokenizer, args) -> PreparedData:
    """Read, convert, template, tokenize and mask the data the way SFTTrainer would, without a model: the run and
    its plan prepare it with this one function."""
    from sftop_trainer.chat import TurnMasker

    masker = TurnMasker(tokenizer, cfg.training.assistant_only_loss, cfg.training.completion_only_loss)
    train_ds, eval_ds, report = data_mod.prepare(cfg.dataset, cfg.training.seed,
                                                 conversational=bool(tokenizer.chat_template), check=masker.check)
    if data_mod.is_conversational(train_ds) and not tokenizer.chat_template:
        raise ConfigError(f"the data is conversational ({report.format}) but {cfg.model.name} has no chat "
                          f"template; set spec.chatTemplate")
    report.loss = masker.describe(train_ds)
    # Loss masks on conversations are made here (sftop_trainer.chat); TRL masks completions of plain-text
    # prompt-completion rows itself, in its own dataset preparation, which runs here without a model.
    preparer = make_trainer_class().preparer(tokenizer, args, cfg.training.long_samples, train_ds)
    train = preparer.prepare(masker.tokenize(train_ds), "train")
    counts = preparer.data_counts["train"]
    report.overlong = counts["overlong"]
    report.overlong_action = cfg.training.long_samples
    evaluation = None
    if eval_ds is not None:
        evaluation = preparer.prepare(masker.tokenize(eval_ds), "eval")
    return PreparedData(train=train, eval=evaluation, eval_rows=eval_ds, report=report, lengths=counts["lengths"],
                        trained_tokens=counts["trained_tokens"])


def build_trainer(cfg: TrainerConfig, progress: Progress, *, progress_bar: bool = False):
    """Tokenizer, data, model and SFTTrainer, ready to train. Returns (trainer, tokenizer, prepared data)."""
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
    from sftop_trainer import plan as plan_mod

    data = plan_mod.load_prepared(Path(cfg.output.dir) / plan_mod.PREPARED, config_fingerprint(cfg))
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
    agreed_checkpoint(trainer)
    if progress_bar:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(quiet_bar())
    return trainer, tokenizer, data


def config_fingerprint(cfg: TrainerConfig) -> str:
    """sha256 of what a run trains on and writes to (the config but its progress endpoint, hardware and tracking): a result is
    reused only for the same config."""
    text = json.dumps(cfg.dump(exclude={"progress", "hardware", "tracking"}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
    _writable(out)
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
    import torch

    from sftop_trainer import history as history_mod
    from sftop_trainer.evaluate import AnswerEval, EvaluationRecord

    watch = SigtermWatch()
    emit("start", runId=cfg.run.id, model=cfg.model.name, method=cfg.method)
    progress.update(phase="LoadingData")
    trainer, tokenizer, data = build_trainer(cfg, progress, progress_bar=progress_bar)
    state["trainer"] = trainer
    # what the Trainer actually does, not what was asked: accelerate wrapped the model in FSDP, or DDP, or neither
    strategy = "FSDP" if trainer.is_fsdp_enabled else ("DataParallel" if world_size() > 1 else "SingleProcess")
    report, eval_rows = data.report, data.eval_rows
    state["report"] = report
    ev = cfg.evaluation
    answers = AnswerEval(tokenizer, eval_rows, ev.prompts, ev.max_new_tokens, ev.samples, progress_bar) \
        if ev.answers and eval_rows is not None else None
    record = EvaluationRecord(out, answers) if eval_rows is not None else None
    state["record"] = record
    trainer.evaluation_record = record
    if record is not None:
        trainer.add_callback(evaluation_callback(record))
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
        try:
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except torch.OutOfMemoryError as e:
            raise OutOfMemory(f"CUDA ran out of memory at step {trainer.state.global_step}: lower "
                              f"training.perDeviceTrainBatchSize or training.maxLength, use qlora, or give the run "
                              f"more or larger GPUs ({str(e).splitlines()[0]})") from e
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
        trainer.evaluate()
        record.step_override = None
    elif record is not None and (not record.history or record.history[-1]["step"] != steps):
        progress.update(phase="Evaluating")
        trainer.evaluate()
    progress.update(phase="Saving")
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    final_dir = out / ("model" if cfg.method == "full" else "adapter")
    trainer.save_model(str(final_dir))
    if is_main_process():
        tokenizer.save_pretrained(str(final_dir))
    epoch = trainer.state.epoch
    checkpoints = history_mod.inventory(out / CHECKPOINTS, best_path, evals={
        h["step"]: h["evalLoss"] for h in (record.history if record is not None else []) if "evalLoss" in h})
    state.pop("trainer", None)
    del trainer
    merged_dir = None
    if cfg.output.merge_adapter and cfg.method != "full" and is_main_process():
        merged_dir = merge_adapter(cfg, final_dir, out / "merged")

    evaluation = record.summary(result_step) if record is not None else None
    result = {
        "status": "Succeeded",
        "runId": cfg.run.id,
        "model": {"name": cfg.model.hub_id or cfg.model.name, "revision": cfg.model.revision},
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
        "data": report.as_dict(),
        "configSha256": config_fingerprint(cfg),
        "versions": library_versions(),
    }
    if is_main_process():
        if cfg.method != "full":
            result["serving"] = provenance.write(final_dir, cfg, result, started, time.time())
        else:
            provenance.write_provenance(final_dir, cfg, result, started, time.time())
        write_history_plot(cfg, out)
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        from sftop_trainer.plan import PREPARED

        shutil.rmtree(out / PREPARED, ignore_errors=True)  # the prepared data served its run
    progress.update(phase="Succeeded", percent=100, eta="0s")
    emit("result", **result)
    return result


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


def write_history_plot(cfg: TrainerConfig, out: Path) -> None:
    """loss.png from metrics.jsonl; a plot that fails is logged, never fatal."""
    from sftop_trainer import history as history_mod

    path = out / history_mod.METRICS_FILE
    if not path.is_file():
        return
    try:
        history_mod.write_plot(history_mod.read_history(path), out / history_mod.PLOT_FILE,
                               title=f"{cfg.run.sftjob or cfg.model.name} {cfg.run.id or ''}".strip())
    except Exception as e:  # matplotlib missing or a backend problem: the numbers are in metrics.jsonl
        log.warning("no loss plot written: %s", e)


def write_failed_result(cfg: TrainerConfig, out: Path, error: TrainerError, started: float,
                        state: dict[str, Any]) -> dict[str, Any]:
    """result.json of a failed run: the failure, the steps and metrics it reached, and the checkpoints it kept. A
    finished run's result is never replaced. Returns what the termination message adds to the failure."""
    from sftop_trainer import history as history_mod

    trainer, record, report = state.get("trainer"), state.get("record"), state.get("report")
    details: dict[str, Any] = {}
    if trainer is not None:
        history = trainer.state.log_history
        losses = [h["loss"] for h in history if "loss" in h]
        details.update(steps=trainer.state.global_step, trainLoss=mean_train_loss(history),
                       firstLoss=losses[0] if losses else None, finalLoss=losses[-1] if losses else None)
    details["checkpoints"] = history_mod.inventory(out / CHECKPOINTS, trainer.state.best_model_checkpoint
                                                   if trainer is not None else None)
    if record is not None:
        details["evaluation"] = record.summary()
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


def evaluation_callback(record):
    from transformers import TrainerCallback

    class EvaluationCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "eval_loss" in logs:
                step = record.step_override if record.step_override is not None else state.global_step
                record.observe(step, logs)

    return EvaluationCallback()


def merge_adapter(cfg: TrainerConfig, adapter_dir: Path, merged_dir: Path) -> Path:
    """Base model (unquantized, in its own dtype) + adapter, merged and saved for serving stacks without LoRA."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = model_mod.resolve_dtype(cfg.model.dtype)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name, dtype=dtype,
                                                trust_remote_code=cfg.model.trust_remote_code,
                                                **({"revision": cfg.model.revision} if cfg.model.revision else {}))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(merged_dir))
    model_mod.load_tokenizer(cfg).save_pretrained(str(merged_dir))
    return merged_dir
