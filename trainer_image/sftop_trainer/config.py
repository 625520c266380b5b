"""The trainer's input contract: one versioned config file (JSON or YAML) in.

`sftop-train --config PATH` reads a `TrainerConfig`. The operator renders it from an SFTJob (`sftop.render`),
`sftop run --local` renders the same file for a laptop, and a user may write one by hand. The training
knobs (`LoraSpec`, `QuantizationSpec`, `TrainingSpec`, ...) are shared with the SFTJob API, so a field means
the same thing in both places and is documented once.

This module is imported by the operator: it must only need pydantic and PyYAML.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

TRAINER_CONFIG_VERSION = "trainer.sftop.dev/v1"

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
DataFormat = Literal["auto", "messages", "prompt-completion", "instruction", "sharegpt", "text"]
Method = Literal["lora", "qlora", "full"]
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")

# RE2-compatible (Kubernetes checks CRD patterns with Go's regexp): segments that are neither empty nor "..".
_SEGMENT = r"([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+|\.)"
RELATIVE_PATH_PATTERN = rf"^{_SEGMENT}(/{_SEGMENT})*/?$"


def _relative_path(value: str) -> str:
    if value.startswith("/"):
        raise ValueError(f"must be a relative path inside the volume, not the absolute path {value!r}")
    if ".." in value.split("/"):
        raise ValueError(f"must not contain '..' (got {value!r}): paths stay inside their volume")
    if not re.match(RELATIVE_PATH_PATTERN, value):
        raise ValueError(f"must be a relative path like 'data/train.jsonl', without empty segments (got {value!r})")
    return value


RelativePath = Annotated[
    str,
    AfterValidator(_relative_path),
    Field(min_length=1, max_length=1024, json_schema_extra={"pattern": RELATIVE_PATH_PATTERN}),
]


class Spec(BaseModel):
    """Base of every API and contract model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              validate_default=True)

    def dump(self, **kw: Any) -> dict[str, Any]:
        """The wire form: camelCase, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, **kw)


def exactly_one(model: BaseModel, fields: tuple[str, ...], what: str) -> None:
    """Cross-field rule shared by data and model sources; names the camelCase fields in the error."""
    given = [f for f in fields if getattr(model, f) is not None]
    names = ", ".join(to_camel(f) for f in fields)
    if len(given) != 1:
        found = ", ".join(to_camel(f) for f in given) or "none"
        raise ValueError(f"{what} needs exactly one of {names} (found: {found})")


def check_eval_split(eval_split: EvalSplit | None, source: str) -> None:
    """A named eval split exists only for Hub datasets, an eval file only beside a training file (`source`: hub,
    pvc, configMap or inline); a fraction works everywhere."""
    if eval_split is None:
        return
    if eval_split.name is not None and source != "hub":
        raise ValueError("evalSplit.name names a split of a Hub dataset; use evalSplit.fraction or evalSplit.file "
                         "for files and ConfigMaps, evalSplit.fraction for inline rows")
    if eval_split.file is not None:
        if source not in ("pvc", "configMap"):
            raise ValueError("evalSplit.file names a file beside the training data (on dataset.pvc's claim, or a key "
                             "of dataset.configMap); use evalSplit.name for Hub datasets, evalSplit.fraction for "
                             "inline rows")
        check_data_file(eval_split.file, "evalSplit.file")
        if source == "configMap" and "/" in eval_split.file:
            raise ValueError(f"evalSplit.file is a key of dataset.configMap, which has no '/' (got "
                             f"{eval_split.file!r})")


EVAL_SPLIT_RULES = [
    {"rule": "!has(self.evalSplit) || !has(self.evalSplit.name) || has(self.hub)",
     "message": "evalSplit.name names a split of a Hub dataset; use evalSplit.fraction or evalSplit.file"},
    {"rule": "!has(self.evalSplit) || !has(self.evalSplit.file) || has(self.pvc) || has(self.configMap)",
     "message": "evalSplit.file names a file beside the training data, on dataset.pvc's claim or in "
                "dataset.configMap"},
]


def check_data_file(path: str, what: str) -> None:
    if not path.lower().endswith(FILE_SUFFIXES):
        raise ValueError(f"{what} must name a {', '.join(FILE_SUFFIXES)} file (got {path!r})")


def cel_exactly_one(fields: tuple[str, ...], what: str) -> dict[str, str]:
    """The same rule as a CEL `x-kubernetes-validations` entry, checked by the API server."""
    names = [to_camel(f) for f in fields]
    has = ", ".join(f"has(self.{n})" for n in names)
    return {"rule": f"[{has}].filter(x, x).size() == 1",
            "message": f"{what} needs exactly one of {', '.join(names)}"}


# ---------------------------------------------------------------------------------------------- data


class HubDataset(Spec):
    """A dataset on the Hugging Face Hub."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
                      description="Dataset id on the Hub, for example `trl-lib/Capybara`.")
    config: str | None = Field(None, max_length=256, description="Dataset configuration (subset) name, if it has several.")
    split: str = Field("train", min_length=1, max_length=256,
                       description="Split to train on. Slicing works: `train[:10%]`.")
    revision: str | None = Field(None, max_length=256,
                                 description="Git revision (commit sha, tag or branch) of the dataset repository. "
                                             "Pin a commit sha for reproducible runs.")


class EvalSplit(Spec):
    """Where the evaluation set comes from: a fraction held out from the training data, a named split of a Hub
    dataset, or a file beside the training data."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel_exactly_one(("fraction", "name", "file"), "evalSplit")]})

    fraction: float | None = Field(None, gt=0, lt=1,
                                   description="Fraction of the rows held out for evaluation, for example 0.05.")
    name: str | None = Field(None, min_length=1, max_length=256,
                             description="Name of a split of the same Hub dataset to evaluate on, for example "
                                         "`test`. Only for Hub datasets.")
    file: RelativePath | None = Field(None, description="A file of evaluation rows beside the training data, in the "
                                                        "same format: a path on dataset.pvc's claim, or a key of "
                                                        "dataset.configMap. For example `data/test.jsonl`.")

    @model_validator(mode="after")
    def _one(self) -> EvalSplit:
        exactly_one(self, ("fraction", "name", "file"), "evalSplit")
        return self


# --------------------------------------------------------------------------------------------- model


class LoraSpec(Spec):
    """LoRA adapter settings (PEFT `LoraConfig`)."""

    r: int = Field(16, ge=1, le=1024, description="Rank of the LoRA update matrices. 8–64 is typical.")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling numerator (`lora_alpha`); the update is "
                                                      "scaled by alpha/r. Often 2×r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input (`lora_dropout`).")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        ["all-linear"], min_length=1, max_length=64,
        description="Module names (or name suffixes) to adapt. `all-linear` adapts every linear layer but the "
                    "output head. The trainer checks the names against the model and lists those that exist.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train.")
    modules_to_save: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        [], max_length=64,
        description="Modules trained in full and saved with the adapter, for example `embed_tokens` and "
                    "`lm_head` when a chat template adds new tokens.")


class QuantizationSpec(Spec):
    """4-bit quantization of the frozen base model for QLoRA (bitsandbytes)."""

    bits: Literal[4] = Field(4, description="Bits per base-model weight. Only 4 is supported.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; nf4 is the QLoRA paper's.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit per "
                                                 "weight).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the matrix multiplications. bfloat16 needs an Ampere or newer GPU.")


# ------------------------------------------------------------------------------------------ training


SchedulerType = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                        "constant_with_warmup", "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"]

# SFTConfig fields that the trainer or the operator own; setting them through `sftConfig` would break the
# output layout, resumption or progress reporting.
MANAGED_SFT_FIELDS = frozenset({
    "output_dir", "resume_from_checkpoint", "report_to", "logging_dir", "push_to_hub", "hub_token",
    "use_cpu", "save_strategy", "eval_strategy", "do_train", "do_eval", "local_rank", "logging_nan_inf_filter",
    "enable_jit_checkpoint", "include_num_input_tokens_seen", "disable_tqdm", "load_best_model_at_end",
    "metric_for_best_model", "greater_is_better", "run_name",
})


class EarlyStopping(Spec):
    """Stop when the eval loss stops improving (transformers' `EarlyStoppingCallback`)."""

    patience: int = Field(3, ge=1, le=1000, description="Evaluations in a row without improvement of the eval loss "
                                                        "after which the run stops.")
    threshold: float = Field(0.0, ge=0, le=1000, description="How much the eval loss must fall below the best so far "
                                                             "to count as an improvement.")


class LossWatchdog(Spec):
    """Stop a run whose training loss spikes: a logged loss above `factor` × the lowest logged so far, `logs` times
    in a row. The run fails with reason LossSpike and keeps the checkpoints saved before the spike."""

    factor: float = Field(2.0, gt=1, le=1000, description="A logged training loss above factor × the lowest logged "
                                                          "loss so far counts as a spike.")
    logs: int = Field(3, ge=1, le=1000, description="Logged losses in a row above that line that stop the run.")


class TrainingSpec(Spec):
    """The SFTConfig knobs TRL users know, by TRL's names in camelCase."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!(has(self.epochs) && has(self.maxSteps))",
         "message": "set either epochs or maxSteps, not both"},
        {"rule": "!(has(self.warmupSteps) && has(self.warmupRatio))",
         "message": "set either warmupSteps or warmupRatio, not both"},
        {"rule": "!has(self.resultCheckpoint) || self.resultCheckpoint != 'best' || !has(self.evalSteps) || "
                 "(has(self.saveSteps) ? self.saveSteps : 100) % self.evalSteps == 0",
         "message": "resultCheckpoint best picks among saved checkpoints: saveSteps must be a multiple of evalSteps"}]})

    epochs: float | None = Field(None, gt=0, le=1000,
                                 description="Passes over the training data (`num_train_epochs`). "
                                             "When neither epochs nor maxSteps is set, 1 epoch.")
    max_steps: int | None = Field(None, gt=0, le=10_000_000,
                                  description="Total optimizer steps; set it instead of epochs.")
    learning_rate: float | None = Field(None, gt=0, le=1,
                                        description="Peak learning rate. When unset: 2e-4 for lora and qlora and "
                                                    "2e-5 for full fine-tuning on 4096-wide (7-8B) models, scaled by "
                                                    "4096 / the model's hidden size (1.4e-3 for lora on a 576-wide "
                                                    "135M model, 1e-4 on an 8192-wide 70B one).")
    per_device_train_batch_size: int = Field(4, ge=1, le=4096, description="Sequences per GPU per step.")
    per_device_eval_batch_size: int | None = Field(None, ge=1, le=4096,
                                                   description="Sequences per GPU per evaluation step; "
                                                               "defaults to perDeviceTrainBatchSize.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096,
                                             description="Steps whose gradients are summed before an update. "
                                                         "Effective batch = batch size × GPUs × this.")
    auto_batch_size: bool = Field(
        False, description="When CUDA runs out of memory, retry at once with half perDeviceTrainBatchSize and twice "
                           "gradientAccumulationSteps (the same effective batch), down to 1 sequence per GPU, from the "
                           "latest checkpoint. result.json's `batch` says what was used. Single-process runs only "
                           "(one GPU per run); with several, running out of memory fails the run (CUDAOutOfMemory).")
    max_length: int = Field(1024, ge=16, le=1_048_576, description="Maximum tokens per sample (or per packed "
                                                                   "sequence).")
    long_samples: Literal["truncate", "drop"] = Field(
        "truncate", description="What happens to samples longer than maxLength: `truncate` keeps their start, "
                                "`drop` removes them. Either way the trainer reports how many there were.")
    packing: bool = Field(False, description="Pack several samples into each sequence of maxLength tokens, "
                                             "without cross-attention between them.")
    assistant_only_loss: bool | None = Field(
        None, description="Train only on the assistant turns of conversational data (each with its end-of-turn "
                          "token); system and user turns carry no loss. Unset or true: on, with any chat template "
                          "whose turns can be told apart (one that cannot is an error naming this field); false: "
                          "loss on every token.")
    completion_only_loss: bool | None = Field(
        None, description="Train only on the completion of prompt-completion data (and of instruction data, "
                          "which becomes prompt-completion). Unset: on.")
    warmup_ratio: float | None = Field(None, ge=0, lt=1,
                                       description="Fraction of the steps spent warming up the learning rate. "
                                                   "When neither warmupRatio nor warmupSteps is set, 0.03.")
    warmup_steps: int | None = Field(None, ge=0, le=10_000_000, description="Warm-up steps; set it instead of "
                                                                            "warmupRatio.")
    lr_scheduler_type: SchedulerType = Field("linear", description="Learning rate schedule after warm-up.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 disables clipping.")
    optim: str = Field("adamw_torch", min_length=1, max_length=64,
                       description="Optimizer, by transformers' name (`adamw_torch`, `paged_adamw_8bit`, ...).")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Random seed for initialization, shuffling and "
                                                          "the eval split.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass: "
                                                           "much less memory, ~20% slower.")
    logging_steps: int = Field(10, ge=1, le=1_000_000, description="Steps between progress reports and "
                                                                   "logged losses.")
    save_steps: int = Field(100, ge=1, le=1_000_000, description="Steps between checkpoints. A preempted or "
                                                                 "evicted run resumes from the latest one.")
    save_total_limit: int = Field(2, ge=1, le=1000, description="Checkpoints kept; older ones are deleted.")
    eval_steps: int | None = Field(None, ge=1, le=1_000_000, description="Steps between evaluations when there is "
                                                                         "an eval split; defaults to saveSteps.")
    result_checkpoint: Literal["last", "best"] = Field(
        "last", description="Which weights are the run's result: `last`, the final step's; `best`, the checkpoint "
                            "with the lowest eval loss (transformers' load_best_model_at_end). `best` needs "
                            "dataset.evalSplit and a saveSteps that is a multiple of evalSteps; the best checkpoint is "
                            "never rotated away.")
    early_stopping: EarlyStopping | None = Field(None, description="Stop once the eval loss has not improved for "
                                                                   "`patience` evaluations. Needs dataset.evalSplit.")
    loss_watchdog: LossWatchdog | None = Field(None, description="Stop a run whose training loss spikes and stays "
                                                                 "high (reason LossSpike). NaN or infinite losses "
                                                                 "always stop a run (LossNotFinite).")
    sft_config: dict[str, Any] = Field(
        {},
        description="Further SFTConfig fields by their TRL names (snake_case), passed through as they are, "
                    "for example `{neftune_noise_alpha: 5, lr_scheduler_kwargs: {min_lr: 1.0e-6}}`. The "
                    "trainer rejects names SFTConfig does not have, and those it manages itself "
                    "(output_dir, resume_from_checkpoint, report_to, save_strategy, eval_strategy, ...).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    @model_validator(mode="after")
    def _rules(self) -> TrainingSpec:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("set either epochs or maxSteps, not both")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set either warmupSteps or warmupRatio, not both")
        bad = sorted(k for k in self.sft_config if not re.fullmatch(r"[a-z][a-z0-9_]*", k))
        if bad:
            raise ValueError(f"sftConfig keys are SFTConfig field names in snake_case; not: {', '.join(bad)}")
        managed = sorted(MANAGED_SFT_FIELDS.intersection(self.sft_config))
        if managed:
            raise ValueError(f"sftConfig must not set {', '.join(managed)}: the trainer manages them")
        if self.result_checkpoint == "best" and self.eval_steps and self.save_steps % self.eval_steps:
            raise ValueError(f"resultCheckpoint best picks among saved checkpoints: saveSteps ({self.save_steps}) "
                             f"must be a multiple of evalSteps ({self.eval_steps})")
        return self

    @property
    def evaluates(self) -> bool:
        """Whether these settings need evaluations during training."""
        return self.result_checkpoint == "best" or self.early_stopping is not None


def check_needs_eval(training: TrainingSpec, has_eval: bool, where: str) -> None:
    """resultCheckpoint best and earlyStopping compare eval losses: they need evaluation data."""
    if has_eval or not training.evaluates:
        return
    what = "training.resultCheckpoint best" if training.result_checkpoint == "best" else "training.earlyStopping"
    raise ValueError(f"{what} compares eval losses: it needs evaluation data, so set {where}")


NEEDS_EVAL_RULE = {"rule": "has(self.dataset.evalSplit) || !has(self.training) || "
                           "((!has(self.training.resultCheckpoint) || self.training.resultCheckpoint != 'best') && "
                           "!has(self.training.earlyStopping))",
                   "message": "training.resultCheckpoint best and training.earlyStopping compare eval losses: they "
                              "need evaluation data, so set dataset.evalSplit"}


Strategy = Literal["DataParallel", "FSDP"]


class DistributionSpec(Spec):
    """How a run spreads over nodes and GPUs. Each node is one pod with resources.gpus GPUs and one training process
    per GPU (one process on a CPU-only pod); every process sees a different part of each batch."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!has(self.cpuOffload) || !self.cpuOffload || self.strategy == 'FSDP'",
         "message": "distribution.cpuOffload applies only to strategy FSDP"}]})

    nodes: int = Field(1, ge=1, le=64, description="Pods of the run, each on its own node with resources.gpus GPUs. "
                                                   "With more than one, the run is an Indexed Job with a headless "
                                                   "Service; its pods meet through torchrun's c10d rendezvous on "
                                                   "pod 0, and the output claim must be shared by all of them "
                                                   "(ReadWriteMany).")
    strategy: Strategy = Field("DataParallel", description="`DataParallel`: every process holds the whole model and "
                                                           "gradients are averaged (DDP). `FSDP`: parameters, "
                                                           "gradients and optimizer state are sharded over all "
                                                           "processes (PyTorch FSDP2, through accelerate), for models "
                                                           "that do not fit one GPU; it needs GPUs and methods lora "
                                                           "or full. training.gradientCheckpointing becomes FSDP's "
                                                           "own activation checkpointing.")
    cpu_offload: bool = Field(False, description="FSDP only: keep parameters and optimizer state in CPU memory "
                                                 "between uses (much less GPU memory, slower steps).")


def check_distribution(method: str, distribution: DistributionSpec, gpus: int | None,
                       where: str = "distribution") -> None:
    """Combinations that cannot work, named by field. `gpus`: per node, when known before the run starts (the
    SFTJob's resources.gpus; a trainer config leaves it to the run)."""
    d = distribution
    if d.cpu_offload and d.strategy != "FSDP":
        raise ValueError(f"{where}.cpuOffload applies only to strategy FSDP (strategy is {d.strategy})")
    if d.strategy == "FSDP" and gpus == 0:
        raise ValueError(f"{where}.strategy FSDP needs GPUs (resources.gpus is 0): accelerate shards a model only on "
                         f"accelerators; use DataParallel on CPUs")
    if d.strategy == "FSDP" and gpus is not None and d.nodes * max(1, gpus) < 2:
        raise ValueError(f"{where}.strategy FSDP shards the model over training processes, and this run has one "
                         f"(nodes x GPUs per node); use DataParallel, or more GPUs or nodes")
    if d.strategy == "FSDP" and method == "qlora":
        raise ValueError(f"{where}.strategy FSDP with method qlora: accelerate's FSDP2 cannot shard bitsandbytes' "
                         f"4-bit weights (it would fail or train wrong); use method lora with FSDP (the frozen base "
                         f"sharded in bfloat16), or qlora with DataParallel")


class EvaluationSpec(Spec):
    """Greedy answers to held-out prompts, scored against the expected answers, at each evaluation, before training
    and at the end: what users read to know whether the model does the task. Needs evaluation data
    (dataset.evalSplit)."""

    answers: bool = Field(True, description="Answer held-out prompts and score the answers (exactMatch, and "
                                            "validJson where the expected answers are JSON). false: eval loss and "
                                            "token accuracy only.")
    prompts: int = Field(32, ge=1, le=10_000, description="How many held-out prompts to answer at each evaluation "
                                                          "(the first ones of the evaluation data).")
    max_new_tokens: int | None = Field(None, ge=1, le=32_768,
                                       description="Longest answer, in tokens. Unset: twice the longest expected "
                                                   "answer plus 16 (a longer answer cannot match).")
    baseline: bool = Field(True, description="Also evaluate before training, so the result shows the change. "
                                             "Skipped for qlora on a CPU, where an inference pass before training "
                                             "would corrupt the 4-bit weights' training.")
    samples: int = Field(3, ge=0, le=20, description="How many (prompt, expected, answer) samples the result "
                                                     "keeps.")
    few_shot: int = Field(0, ge=0, le=64, description="Also score the base model with this many training rows as "
                                                      "examples in its prompt (few-shot prompting), on the same "
                                                      "held-out prompts, beside zero-shot before and fine-tuned "
                                                      "after: whether fine-tuning was needed. 0: not measured.")
    parity: bool = Field(False, description="After training, load the adapter folder the way a serving stack does, "
                                            "in a fresh process, and check that it answers the held-out prompts "
                                            "as the trainer's own evaluation did (result.evaluation.parity). On "
                                            "whenever spec.promotion is set.")


REFERENCE_WIDTH = 4096  # the hidden size of the 7-8B models the usual learning rates were tuned on


def default_learning_rate(method: str, hidden_size: int | None = None) -> float:
    """2e-4 for LoRA and QLoRA, 2e-5 for full fine-tuning, at the width those values come from (4096: 7-8B
    models), scaled by 4096 / the model's hidden size: narrower models take larger steps (1/width, as muP has it).
    A 576-wide 135M model gets 1.4e-3 for LoRA, where 2e-4 barely moved it in the quality benchmark
    (bench/RESULTS.md); an 8192-wide 70B model gets 1e-4."""
    base = 2e-5 if method == "full" else 2e-4
    if not hidden_size:
        return base
    low, high = (5e-6, 2e-4) if method == "full" else (5e-5, 2e-3)
    return float(f"{min(high, max(low, base * REFERENCE_WIDTH / hidden_size)):.3g}")


# ------------------------------------------------------------------------------ the trainer's config


class ModelSource(Spec):
    name: str = Field(min_length=1, description="Hub model id, or a local folder with the model's files.")
    hub_id: str | None = Field(None, description="The Hub id of the model a local folder holds a copy of: the "
                                                 "adapter names it as its base, so serving stacks find the base.")
    origin: str | None = Field(None, description="How a local folder is named outside this machine, for example "
                                                 "`pvc://models/smollm2`; recorded in the provenance.")
    revision: str | None = Field(None, description="Hub revision (commit sha, tag or branch).")
    cache: bool = Field(False, description=(
        "The model comes through the shared model cache at HF_HUB_CACHE: the Validating phase (`--validate`, on a "
        "CPU) resolves the revision, downloads what the cache lacks and verifies it against the Hub's hashes; the "
        "run then loads the commit validation resolved (its plan.json), offline when HF_HUB_OFFLINE is set. A run "
        "without a plan fills the cache itself first."))
    resolved_revision: str | None = Field(None, description=(
        "The commit `revision` resolved to when the cache was filled: the run loads exactly that commit."))
    trust_remote_code: bool = Field(False, description="Run code from the model repository.")
    dtype: Dtype = Field("auto", description="dtype of the weights: `auto` takes bfloat16 on a GPU that has it, "
                                             "float16 on other GPUs, float32 on a CPU (computing in bfloat16 "
                                             "where the CPU has bfloat16 instructions).")


QualityAction = Literal["warn", "drop", "fail"]


class QualityRule(Spec):
    """What a data-quality check does when it finds rows: `warn` (reported, a DataQuality condition and a Warning
    event), `drop` (the rows are removed and counted) or `fail` (the run fails in its Validating phase with reason
    DataQuality). The action applies when the share of rows found is above `threshold`; at or below it the
    finding is a warning."""

    action: QualityAction = Field(description="warn, drop or fail.")
    threshold: float = Field(0.0, ge=0, lt=1, description="Share of rows (0 to 1) above which the action applies.")


def _rule(action: str, threshold: float = 0.0, what: str = "") -> Any:
    return Field(QualityRule(action=action, threshold=threshold), description=what)


class DataQuality(Spec):
    """The data-quality checks of the Validating phase, each with its rule (docs/api.md gives the defaults'
    reasons; docs/plan.md shows a report)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": f"!has(self.{name}) || self.{name}.action != 'drop'",
         "message": f"quality.{name}.action: drop removes no rows for this check; use warn or fail"}
        for name in ("size", "coverage")]})

    duplicates: QualityRule = _rule("warn", what="Training rows that repeat an earlier row exactly (whitespace "
                                                 "normalised). drop keeps the first.")
    near_duplicates: QualityRule = _rule("warn", what="Training rows nearly equal to an earlier one (MinHash "
                                                      "Jaccard similarity of character 5-grams ≥ "
                                                      "nearDuplicateSimilarity). drop keeps the first.")
    conflicts: QualityRule = _rule("warn", what="Training rows whose prompt (every turn before the answer) recurs "
                                                "with a different answer: all rows of such a prompt.")
    leakage: QualityRule = _rule("fail", what="Evaluation rows whose prompt or whole row is also in training "
                                              "(whitespace normalised). drop removes them from the evaluation.")
    near_leakage: QualityRule = _rule("warn", what="Evaluation rows nearly equal to a training row (as "
                                                   "nearDuplicates). drop removes them from the evaluation.")
    size: QualityRule = _rule("warn", what="Fewer than 50 usable training rows (few-shot prompting often does as "
                                           "well), fewer than 500. warn or fail.")
    answer_format: QualityRule = _rule("warn", what="Where most answers share a format (JSON; for JSON objects, a "
                                                    "key set), the answers that do not.")
    coverage: QualityRule = _rule("warn", what="Values of a categorical answer field (a JSON key such as an action) "
                                               "common in evaluation but rare or absent in training. warn or fail.")
    truncated: QualityRule = _rule("warn", what="Training rows whose answer training.maxLength cuts.")
    no_loss: QualityRule = _rule("drop", what="Training rows left with no token that carries loss (after "
                                              "maxLength): they train nothing.")
    empty_turns: QualityRule = _rule("warn", what="Rows with an empty or whitespace-only turn.")
    special_tokens: QualityRule = _rule("warn", what="Chat rows whose text holds the tokenizer's special tokens or "
                                                     "the chat template's markers literally (they break the "
                                                     "template the model reads). Plain-text rows, often rendered "
                                                     "with a template already, are not checked.")
    near_duplicate_similarity: float = Field(0.8, ge=0.5, le=0.95, description="Jaccard similarity of "
                                                                           "character 5-grams (lowercased, "
                                                                           "whitespace normalised) from which rows "
                                                                           "are near duplicates.")
    near_duplicate_max_rows: int = Field(200_000, ge=0, le=10_000_000,
                                         description="Near-duplicate and near-leakage search covers the first this "
                                                     "many training rows (0 turns it off); the report says when it "
                                                     "was limited.")

    @model_validator(mode="after")
    def _actions(self) -> DataQuality:
        for name in ("size", "coverage"):
            if getattr(self, name).action == "drop":
                raise ValueError(f"quality.{to_camel(name)}.action: drop removes no rows for this check; use warn "
                                 "or fail")
        return self


class DataSource(Spec):
    hub: HubDataset | None = None
    path: str | None = Field(None, min_length=1, description="A local jsonl, json, parquet or csv file.")
    rows: list[dict[str, Any]] | None = Field(None, description="Rows given inline.")
    format: DataFormat = "auto"
    eval_split: EvalSplit | None = Field(None, description="A fraction held out, or a split of the Hub dataset.")
    eval_path: str | None = Field(None, min_length=1, description="A local file of evaluation rows (what an "
                                                                  "SFTJob's evalSplit.file becomes).")
    max_samples: int | None = Field(None, gt=0)
    quality: DataQuality = Field(default_factory=DataQuality)

    @model_validator(mode="after")
    def _rules(self) -> DataSource:
        exactly_one(self, ("hub", "path", "rows"), "dataset")
        if self.eval_split is not None and self.eval_split.file is not None:
            raise ValueError("evalSplit.file is an SFTJob field; a trainer config names the file as evalPath")
        check_eval_split(self.eval_split, "hub" if self.hub is not None else "inline")
        if self.eval_path is not None:
            if self.eval_split is not None:
                raise ValueError("set either evalSplit or evalPath, not both")
            check_data_file(self.eval_path, "evalPath")
        if self.path is not None:
            check_data_file(self.path, "dataset path")
        return self


class OutputTarget(Spec):
    dir: str = Field(min_length=1, description="Folder that receives adapter/, checkpoints/, result.json and "
                                               "merged/.")
    merge_adapter: bool = Field(False, description="Also write the base model with the adapter merged into it.")


class WarmStartSource(Spec):
    """A LoRA adapter to continue training from, instead of a fresh one."""

    path: str = Field(min_length=1, description="Folder of the adapter (adapter_config.json and "
                                                "adapter_model.safetensors): an earlier run's adapter/ or one of "
                                                "its checkpoints.")
    origin: str | None = Field(None, description="How the adapter is named outside this machine, for the "
                                                 "provenance: `<claim>:<folder>`.")

    @property
    def name(self) -> str:
        """How results and logs name the adapter: its origin, else its path."""
        return self.origin or self.path


class MlflowTracking(Spec):
    """An MLflow tracking server that receives the run's parameters and metrics (transformers' MLflowCallback)."""

    tracking_uri: str = Field(min_length=1, max_length=2048, description="URI of the tracking server, for example "
                                                                         "`http://mlflow.mlops:5000`.")
    experiment: str = Field("sftop", min_length=1, max_length=256,
                            description="Experiment the run is logged under; created when missing.")


class WandbTracking(Spec):
    """A Weights & Biases project that receives the run's parameters and metrics (transformers' WandbCallback)."""

    project: str = Field(min_length=1, max_length=128, description="W&B project.")
    entity: str | None = Field(None, max_length=128, description="W&B team or user; the API key's default when "
                                                                 "unset.")
    base_url: str | None = Field(None, max_length=2048, description="URL of a self-hosted W&B server.")


class TrackingTarget(Spec):
    """Where the trainer reports the run, besides its own files. Credentials reach it as environment variables."""

    run_name: str | None = Field(None, max_length=256, description="The run's name there.")
    mlflow: MlflowTracking | None = None
    wandb: WandbTracking | None = None


class ProgressEndpoint(Spec):
    host: str = Field("0.0.0.0", description="Address the progress endpoint listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the progress and metrics endpoint; 0 disables it.")


class Hardware(Spec):
    """What the run will get: its plan is made for it, and the run checks it can use the GPUs it asked for."""

    gpus: int | None = Field(None, ge=0, description="GPUs the run trains on per pod, one process each (data "
                                                     "parallel). The run fails at once (GPUUnavailable) when it "
                                                     "cannot use that many; unset, the plan assumes one and the run "
                                                     "uses what it sees.")
    gpu_memory: int | None = Field(None, gt=0, description="Memory of each GPU in bytes, when known.")
    gpu_memory_source: str | None = Field(None, description="Where gpuMemory comes from, in words.")


class RunInfo(Spec):
    id: str | None = None
    sftjob: str | None = None
    namespace: str | None = None


class TrainerConfig(Spec):
    """Everything one training run needs; rendered from an SFTJob."""

    api_version: Literal["trainer.sftop.dev/v1"] = TRAINER_CONFIG_VERSION
    run: RunInfo = RunInfo()
    model: ModelSource
    dataset: DataSource
    chat_template: str | None = None
    method: Method = "lora"
    lora: LoraSpec | None = None
    quantization: QuantizationSpec | None = None
    training: TrainingSpec = TrainingSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    warm_start: WarmStartSource | None = None
    output: OutputTarget
    progress: ProgressEndpoint = ProgressEndpoint()
    hardware: Hardware = Hardware()
    distribution: DistributionSpec = DistributionSpec()
    tracking: TrackingTarget | None = None

    @model_validator(mode="after")
    def _method_rules(self) -> TrainerConfig:
        check_method(self.method, self.lora, self.quantization)
        check_needs_eval(self.training, self.dataset.eval_split is not None or self.dataset.eval_path is not None,
                         "dataset.evalSplit or dataset.evalPath")
        if self.warm_start is not None and self.method == "full":
            raise ValueError("warmStart continues a LoRA adapter (methods lora and qlora); for method full, name the "
                             "earlier run's model/ folder as the model")
        if self.method != "full" and self.lora is None:
            self.lora = LoraSpec()
        if self.method == "qlora" and self.quantization is None:
            self.quantization = QuantizationSpec()
        check_distribution(self.method, self.distribution, None)
        return self


def check_method(method: str, lora: LoraSpec | None, quantization: QuantizationSpec | None) -> None:
    if quantization is not None and method != "qlora":
        raise ValueError(f"quantization applies only to method qlora (method is {method})")
    if lora is not None and method == "full":
        raise ValueError("lora settings apply only to methods lora and qlora (method is full)")


def error_lines(err: ValidationError, prefix: str = "") -> list[str]:
    """One `field.path: message` line per problem, in the wire's own (camelCase) field names."""
    out = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-after"))]
        path = prefix + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(f"{path}: {msg}" if path else msg)
    return out


def load_config(path: str | Path) -> TrainerConfig:
    """Read a TrainerConfig from JSON or YAML. Raises ValueError (naming the fields) or OSError."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"neither JSON nor YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"a trainer config is a mapping, got {type(data).__name__}")
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as e:
        raise ValueError("; ".join(error_lines(e))) from None
