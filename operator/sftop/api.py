"""The SFTJob API (sftop.dev/v1alpha1): pydantic models of spec and status, the one source of truth.

The CRD in crds/ is generated from these models (`sftop crd`), field descriptions become `kubectl explain`
text, and the operator parses every SFTJob through them. Training knobs shared with the trainer's config
contract are defined once, in `sftop_trainer.config`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic.alias_generators import to_camel

from sftop_trainer.config import (
    DataFormat,
    DataQuality,
    DistributionSpec,
    Dtype,
    EVAL_SPLIT_RULES,
    NEEDS_EVAL_RULE,
    EvalSplit,
    EvaluationSpec,
    HubDataset,
    LoraSpec,
    Method,
    MlflowTracking,
    QuantizationSpec,
    RelativePath,
    Spec,
    TrainingSpec,
    WandbTracking,
    cel_exactly_one,
    check_data_file,
    check_distribution,
    check_eval_split,
    check_method,
    check_needs_eval,
    error_lines,  # noqa: F401 - part of this module's interface (field-named error lines)
    exactly_one,
)

GROUP = "sftop.dev"
VERSION = "v1alpha1"
KIND = "SFTJob"
PLURAL = "sftjobs"
SINGULAR = "sftjob"
SHORT_NAMES = ["sft"]
CATEGORIES = ["all", "sftop"]
API_VERSION = f"{GROUP}/{VERSION}"

# A run's Job is named <sftjob>-<run id (8 hex)>; Job names end up in a label value (job-name), so <= 63.
MAX_NAME_LENGTH = 54
RUN_ID_LENGTH = 8
# A multi-node run's pods are named by the Job controller <job>-<index> as their hostnames (<= 63).
MAX_MULTI_NODE_NAME_LENGTH = 63 - RUN_ID_LENGTH - 1 - len("-63")

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes resource.Quantity, as the API server parses it.
QUANTITY = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$"
QUALIFIED_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
HUB_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?$"


def _checked(pattern: str, what: str, example: str):
    def check(value: str) -> str:
        if not re.match(pattern, value):
            raise ValueError(f"{value!r} is not {what}, for example {example!r}")
        return value

    return AfterValidator(check)


def _pattern(pattern: str, what: str, example: str, max_length: int) -> Any:
    """A string type checked by `pattern` in the CRD and, with a message in words, by pydantic."""
    return Annotated[str, _checked(pattern, what, example),
                     Field(min_length=1, max_length=max_length, json_schema_extra={"pattern": pattern})]


ObjectName = Annotated[
    str,
    _checked(DNS1123_SUBDOMAIN, "a valid Kubernetes object name (lowercase letters, digits, '-' and '.')",
             "my-data"),
    Field(min_length=1, max_length=253, json_schema_extra={"pattern": DNS1123_SUBDOMAIN}),
]


def _quantity(value: int | float | str) -> str:
    text = str(value)
    if not re.match(QUANTITY, text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity, for example '8', '500m', '32Gi'")
    return text


Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "x-kubernetes-validations": [
        {"rule": f"type(self) == int || self.matches(r'{QUANTITY}')",
         "message": "must be a Kubernetes quantity, for example 8, 500m or 32Gi"}]}),
]


# --------------------------------------------------------------------------------------------- model


class HubModel(Spec):
    """A model on the Hugging Face Hub."""

    id: _pattern(HUB_ID, "a Hub model id", "Qwen/Qwen2.5-0.5B-Instruct", 256) = Field(
                    description="Model id on the Hub, for example `Qwen/Qwen2.5-0.5B-Instruct`.")
    revision: str = Field("main", min_length=1, max_length=256,
                          description="Git revision: a commit sha (reproducible; what GitOps wants), a tag or a "
                                      "branch. A branch may move between runs.")


class PVCPath(Spec):
    """A file or folder on a PersistentVolumeClaim in the SFTJob's namespace, mounted read-only."""

    claim_name: ObjectName = Field(description="Name of the PersistentVolumeClaim, in the SFTJob's namespace.")
    path: RelativePath = Field(description="Path inside the volume, relative, without `..`.")


class PVCModel(PVCPath):
    """A model folder on a PersistentVolumeClaim in the SFTJob's namespace, mounted read-only."""

    hub_id: _pattern(HUB_ID, "a Hub model id", "HuggingFaceTB/SmolLM2-135M-Instruct", 256) | None = Field(
        None, description="The Hub id of the model this folder is a copy of, for example "
                          "`HuggingFaceTB/SmolLM2-135M-Instruct`. The adapter names it as its base "
                          "(adapter_config.json's base_model_name_or_path, the model card), so serving stacks that "
                          "load the base by id find it; unset, the base is named `pvc://<claim>/<path>`.")


class ModelSpec(Spec):
    """The base model: from the Hub or from a volume."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel_exactly_one(("hub", "pvc"), "model")]})

    _cache_claim: str | None = PrivateAttr(None)  # the shared model cache claim the cluster's policy names

    hub: HubModel | None = Field(None, description="Download the model from the Hugging Face Hub.")
    pvc: PVCModel | None = Field(None, description="Load the model from a folder on a PersistentVolumeClaim "
                                                   "(the files `save_pretrained` writes).")
    trust_remote_code: bool = Field(False, description="Allow the model repository's own Python code to run. "
                                                       "Only for models you trust.")
    dtype: Dtype = Field("auto", description="dtype of the base weights: `auto` takes bfloat16 on GPUs that "
                                             "have it, float16 on other GPUs; on a CPU (`sftop run --local`), "
                                             "float32 computed in bfloat16 where the CPU has bfloat16 "
                                             "instructions.")

    @model_validator(mode="after")
    def _one(self) -> ModelSpec:
        exactly_one(self, ("hub", "pvc"), "model")
        return self


# ---------------------------------------------------------------------------------------------- data


class DataPVC(PVCPath):
    """A data file on a PersistentVolumeClaim in the SFTJob's namespace, mounted read-only."""

    path: RelativePath = Field(description="Path of a .jsonl, .json, .parquet or .csv file inside the volume.")

    @model_validator(mode="after")
    def _suffix(self) -> DataPVC:
        check_data_file(self.path, "path")
        return self


class ConfigMapData(Spec):
    """A data file stored under a key of a ConfigMap in the SFTJob's namespace (up to ~1 MiB)."""

    name: ObjectName = Field(description="Name of the ConfigMap.")
    key: _pattern(SECRET_KEY, "a ConfigMap key (letters, digits, '-', '_' and '.')", "train.jsonl", 253) = Field(
                     description="Key holding the data; its suffix (.jsonl, .json, .csv) gives the file type.")

    @model_validator(mode="after")
    def _suffix(self) -> ConfigMapData:
        if not self.key.lower().endswith((".jsonl", ".json", ".csv")):
            raise ValueError(f"key must end in .jsonl, .json or .csv so the trainer knows the file type "
                             f"(got {self.key!r})")
        return self


MAX_INLINE_ROWS = 1000


class DatasetSpec(Spec):
    """Training data: exactly one source, and how to read it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel_exactly_one(("hub", "pvc", "config_map", "inline"), "dataset"), *EVAL_SPLIT_RULES]})

    hub: HubDataset | None = Field(None, description="A dataset on the Hugging Face Hub.")
    pvc: DataPVC | None = Field(None, description="A file on a PersistentVolumeClaim.")
    config_map: ConfigMapData | None = Field(None, description="A small file stored in a ConfigMap.")
    inline: list[dict[str, Any]] | None = Field(
        None, min_length=1, max_length=MAX_INLINE_ROWS,
        description=f"Rows written in the manifest (at most {MAX_INLINE_ROWS}), for demos and smoke tests.",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}})
    format: DataFormat = Field(
        "auto", description="Row format. `messages`: a `messages` list of {role, content}; `prompt-completion`: "
                            "`prompt` and `completion` columns (strings or message lists); `instruction`: "
                            "`instruction`, optional `input`, and `output` (Alpaca); `sharegpt`: "
                            "`conversations` of {from, value}; `text`: plain `text`. `auto` detects it from "
                            "the columns.")
    eval_split: EvalSplit | None = Field(None, description="Evaluate on a held-out fraction, a named split or a file "
                                                           "beside the training data; no evaluation when unset.")
    max_samples: int | None = Field(None, gt=0, le=100_000_000,
                                    description="Use at most this many training rows (after shuffling with "
                                                "training.seed).")
    version: str | None = Field(None, min_length=1, max_length=128, description=(
        "A version of the data, part of the run's identity: a file rewritten at the same path (a nightly export) "
        "trains nothing new until this changes. A pipeline that writes new data bumps it in the manifest (a date, "
        "a commit, the file's sha256), and the commit that bumps it is the retraining in git (docs/gitops.md)."))
    quality: DataQuality = Field(default_factory=DataQuality, description=(
        "The data-quality checks of the Validating phase and what each does with the rows it finds: `warn` "
        "(status.plan.data, a DataQuality condition and one Warning event), `drop` (removed and counted) or `fail` "
        "(the run fails in Validating with reason DataQuality, never retried), when the share of rows found is above "
        "the rule's threshold (at or below it, a warning). Why the defaults: leakage fails, because an evaluation "
        "that measures memory misleads every decision after it (an evalSplit.fraction holds out whole groups of "
        "rows that share a prompt, so it never leaks); noLoss drops, because such rows train nothing; everything "
        "else warns, because each can be intended and only the user knows: near leakage (a request one word away "
        "from a training row may be the generalisation the evaluation should measure), conflicts (several good "
        "answers per prompt, as in distilled or rejection-sampled data), duplicates (weighting), special tokens "
        "(data about templates), answer format, coverage, truncated answers, empty turns, size (a smoke test)."))

    @model_validator(mode="after")
    def _rules(self) -> DatasetSpec:
        exactly_one(self, ("hub", "pvc", "config_map", "inline"), "dataset")
        source = next(f for f in ("hub", "pvc", "config_map", "inline") if getattr(self, f) is not None)
        check_eval_split(self.eval_split, to_camel(source))
        return self


# ------------------------------------------------------------------------------------------ resources


class Toleration(Spec):
    """A Kubernetes toleration, as in a pod spec."""

    key: str | None = Field(None, description="Taint key; empty with operator Exists matches every taint.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="How the value is compared.")
    value: str | None = Field(None, description="Taint value to match with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; all effects when unset.")
    toleration_seconds: int | None = Field(None, description="For NoExecute: how long the pod stays bound after "
                                                             "the taint appears.")


class ResourcesSpec(Spec):
    """What the trainer pod asks of the cluster."""

    _gpu_memory_from: str | None = PrivateAttr(None)  # where gpu_memory came from when not the spec (a profile)

    gpus: int = Field(1, ge=0, le=64, description="GPUs for each trainer pod (requests equal limits). With more "
                                                  "than one, the trainer runs one process per GPU, spread as "
                                                  "spec.distribution says (data parallel by default).")
    gpu_resource_name: _pattern(QUALIFIED_NAME, "an extended resource name", "nvidia.com/gpu", 253) = Field(
        "nvidia.com/gpu", description="Extended resource name of the GPUs, for example "
                                               "`nvidia.com/gpu` or `nvidia.com/mig-3g.40gb`.")
    cpu: Quantity | None = Field(None, description="CPU request and limit, for example `8` or `7500m`; the "
                                                   "operator's default when unset.")
    memory: Quantity | None = Field(None, description="Memory request and limit, for example `64Gi`; the "
                                                      "operator's default when unset.")
    shared_memory: Quantity = Field("8Gi", description="Size of the memory-backed /dev/shm (data loader "
                                                       "workers and NCCL need more than the default 64Mi).")
    node_selector: dict[str, str] = Field({}, description="Node labels the pod must match, "
                                                                            "for example a GPU product label.")
    tolerations: list[Toleration] = Field([], max_length=64,
                                          description="Tolerations for tainted (GPU) nodes.")
    affinity: dict[str, Any] | None = Field(None, description="A Kubernetes pod affinity, as in a pod spec.",
                                            json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    priority_class_name: ObjectName | None = Field(None, description="PriorityClass of the trainer pod; Kueue "
                                                                     "also uses it to order and preempt "
                                                                     "workloads.")
    profile: _pattern(DNS1123_LABEL, "a GPU profile name (lowercase letters, digits and '-')", "a100-80g",
                      63) | None = Field(None, description=(
        "A GPU profile of the cluster's SFTPolicy (`kubectl get sftpolicy default -o yaml`): its node placement, GPU "
        "memory, queue and per-GPU CPU and memory, where this spec sets none. An unknown profile is refused."))
    gpu_memory: Quantity | None = Field(None, description="Memory of each GPU, for example `80Gi`: the plan checks "
                                                          "that the run fits it, and a run that cannot fit fails "
                                                          "before it asks for GPUs. When unset, the "
                                                          "`nvidia.com/gpu.memory` label (GPU Feature Discovery, in "
                                                          "MiB) in nodeSelector is used; otherwise fit is not "
                                                          "checked.")


class ValidationSpec(Spec):
    """The Validating phase: a CPU-only Job that checks the data, the chat template and the model and computes the
    run's plan before the training Job asks for GPUs."""

    enabled: bool = Field(True, description="Validate before training. Off: the training Job is created at once "
                                            "and mistakes surface in the GPU pod.")
    cpu: Quantity | None = Field(None, description="CPU request and limit of the validation pod; the operator's "
                                                   "default (2) when unset.")
    memory: Quantity | None = Field(None, description="Memory request and limit of the validation pod; the "
                                                      "operator's default (8Gi) when unset.")
    queue_name: _pattern(DNS1123_LABEL, "a LocalQueue name (lowercase letters, digits and '-')", "cpu-queue",
                         63) | None = Field(None, description="Kueue LocalQueue for the validation Job. By default "
                                                              "it runs outside any queue: it asks for no GPU.")


# --------------------------------------------------------------------------------------------- output


class NewClaim(Spec):
    """A PersistentVolumeClaim the operator creates when it does not exist. It is never deleted by the
    operator, not even with the SFTJob: adapters outlive their SFTJob."""

    size: Quantity = Field(description="Requested storage, for example `50Gi`.")
    storage_class_name: str | None = Field(None, max_length=253,
                                           description="StorageClass; the cluster's default when unset.")
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        ["ReadWriteOnce"], min_length=1, description="Access modes of the claim.")


class OutputPVC(Spec):
    """The PersistentVolumeClaim that receives the adapter."""

    claim_name: ObjectName = Field(description="Name of the claim, in the SFTJob's namespace.")
    create: NewClaim | None = Field(None, description="Create the claim with these settings if it does not "
                                                      "exist. When unset, the claim must exist.")


class OutputSpec(Spec):
    """Where the adapter goes. Each run writes to `<path>/<namespace>/<sftjob>/<run id>/` on the claim:
    adapter/, checkpoints/, result.json, and merged/ when asked."""

    pvc: OutputPVC = Field(description="The claim that receives the output.")
    path: RelativePath | None = Field(None, description="Folder inside the claim under which runs are written; "
                                                        "the claim's root when unset.")
    merge_adapter: bool = Field(False, description="Also write the base model with the adapter merged into it "
                                                   "(merged/), ready for serving stacks without LoRA support.")


# ------------------------------------------------------------------------------------------ run policy


class SecretKeyRef(Spec):
    """A key of a Secret in the SFTJob's namespace."""

    name: ObjectName = Field(description="Name of the Secret.")
    key: _pattern(SECRET_KEY, "a Secret key (letters, digits, '-', '_' and '.')", "token", 253) = Field(
        "token", description="Key in the Secret.")


class LocalObjectReference(Spec):
    """A reference to an object by name, in the SFTJob's namespace."""

    name: ObjectName = Field(description="Name of the object, in the SFTJob's namespace.")


class WarmStart(Spec):
    """Continue training an earlier LoRA adapter instead of starting a fresh one: an SFTJob's run (its final adapter
    or one of its checkpoints), or a folder on a claim. The run checks, before it asks for a GPU, that the adapter
    was trained on the same base model with the same rank. The optimizer and the learning-rate schedule start
    afresh."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel_exactly_one(("sft_job", "pvc"), "warmStart"),
        {"rule": "has(self.sftJob) || (!has(self.runId) && !has(self.checkpoint))",
         "message": "warmStart.runId and warmStart.checkpoint choose among an SFTJob's runs: they need sftJob"}]})

    sft_job: ObjectName | None = Field(None, description="An SFTJob in this namespace whose adapter to continue: "
                                                         "another SFTJob, or this one (its earlier run).")
    run_id: _pattern(r"^[0-9a-f]{8}$", "a run id (8 hex digits)", "3f9c2a1b", 8) | None = Field(
        None, description="Which of that SFTJob's runs: its status.run.id or one of status.previousRuns. Unset: its "
                          "current run, which must have succeeded; for this SFTJob itself, its newest earlier run "
                          "that succeeded.")
    checkpoint: int | None = Field(None, ge=1, description="Continue from that run's checkpoint of this step "
                                                           "(status.checkpoints lists them) instead of its final "
                                                           "adapter; a failed run's checkpoints qualify too.")
    pvc: PVCPath | None = Field(None, description="A folder on a claim holding a PEFT LoRA adapter "
                                                  "(adapter_config.json and adapter_model.safetensors).")

    @model_validator(mode="after")
    def _one(self) -> WarmStart:
        exactly_one(self, ("sft_job", "pvc"), "warmStart")
        if self.pvc is not None and (self.run_id is not None or self.checkpoint is not None):
            raise ValueError("warmStart.runId and warmStart.checkpoint choose among an SFTJob's runs: they need "
                             "sftJob, not pvc")
        return self


class MlflowSpec(MlflowTracking):
    """An MLflow tracking server: the run's parameters and metrics, logged by transformers' MLflow integration."""

    token_secret: SecretKeyRef | None = Field(None, description="Secret key holding a bearer token "
                                                                "(MLFLOW_TRACKING_TOKEN).")
    username_secret: SecretKeyRef | None = Field(None, description="Secret key holding the user name for basic "
                                                                   "authentication (MLFLOW_TRACKING_USERNAME).")
    password_secret: SecretKeyRef | None = Field(None, description="Secret key holding the password for basic "
                                                                   "authentication (MLFLOW_TRACKING_PASSWORD).")


class WandbSpec(WandbTracking):
    """A Weights & Biases project: the run's parameters and metrics, logged by transformers' W&B integration."""

    api_key_secret: SecretKeyRef = Field(description="Secret key holding the W&B API key (WANDB_API_KEY).")


class TrackingSpec(Spec):
    """Experiment tracking. Credentials come from Secrets and reach the trainer as environment variables only,
    never through its ConfigMap or the SFTJob's status. Not a training input: changing it starts no new run."""

    run_name: str | None = Field(None, max_length=256, description="The run's name in the tracker; "
                                                                   "`<sftjob>-<run id>` when unset.")
    mlflow: MlflowSpec | None = Field(None, description="Log to an MLflow tracking server.")
    wandb: WandbSpec | None = Field(None, description="Log to Weights & Biases.")


class RunPolicy(Spec):
    """How the trainer Job is retried, bounded and cleaned up."""

    backoff_limit: int = Field(3, ge=0, le=100, description="Retries after failures that a retry can help "
                                                            "(crashes, node failures). Preemption, eviction and "
                                                            "user errors do not count.")
    active_deadline_seconds: int | None = Field(None, gt=0, description="Wall-clock limit of a run, all retries "
                                                                        "included; unlimited when unset.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="Delete the finished Job and its pods "
                                                                           "after this many seconds (the output "
                                                                           "stays); kept when unset.")


# ----------------------------------------------------------------------------------------------- spec


HIGHER_IS_BETTER = ("exactMatch", "validJson", "meanTokenAccuracy")
LOWER_IS_BETTER = ("evalLoss",)
GATE_METRICS = HIGHER_IS_BETTER + LOWER_IS_BETTER
RUN_ID = r"^[0-9a-f]{8}$"


def _metrics(value: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(value) - set(GATE_METRICS))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a metric the evaluation measures; the metrics are "
                         f"{', '.join(GATE_METRICS)}")
    return value


GateMetrics = Annotated[dict[str, float], AfterValidator(_metrics), Field(
    json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.all(k, k in " + str(list(GATE_METRICS)).replace("'", '"') + ")",
         "message": "each key must be a metric the evaluation measures: " + ", ".join(GATE_METRICS)}]})]


class PromotionSpec(Spec):
    """When a run becomes the SFTJob's promoted adapter: the one at `<output>/<namespace>/<sftjob>/promoted` that
    serving reads. A run that trains but fails its gate leaves the promoted adapter as it was."""

    minimum: GateMetrics = Field({}, description=(
        "Lowest allowed value of each higher-is-better metric at the run's result step: exactMatch, validJson, "
        "meanTokenAccuracy (0 to 1). A metric the run did not measure fails the gate."))
    maximum: GateMetrics = Field({}, description="Highest allowed value of each lower-is-better metric: evalLoss.")
    not_worse_than: Literal["promoted", "none"] = Field("promoted", description=(
        "`promoted`: each metric the gate names (in minimum, maximum or tolerance; every metric both runs measured "
        "when it names none) must be no worse than the promoted run's, within `tolerance`, and both runs must have "
        "been measured on the same held-out data (the evaluation's fingerprint); otherwise the runs are not "
        "comparable and nothing is promoted. `none`: the thresholds alone decide."))
    tolerance: GateMetrics = Field({}, description=(
        "How much worse than the promoted run each metric may be (absolute: 0.02 for exactMatch lets 0.90 follow "
        "0.91); 0 for a metric not named."))
    pin: Annotated[str, _checked(RUN_ID, "a run id (8 hex characters, status.run.id or status.previousRuns[].id)",
                                 "3f2a9c1b"),
                   Field(json_schema_extra={"pattern": RUN_ID})] | None = Field(None, description=(
                       "Promote this earlier successful run of the SFTJob, without training and without its gate: "
                       "a rollback by manifest. Reverting the pin in git lets the gate decide again."))


class SFTJobSpec(Spec):
    """A supervised fine-tuning run: a base model, data, a method, and where the adapter goes."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!has(self.quantization) || self.method == 'qlora'",
         "message": "quantization applies only to method qlora"},
        {"rule": "!has(self.lora) || self.method != 'full'",
         "message": "lora settings apply only to methods lora and qlora"},
        {"rule": "!has(self.workloadPriorityClassName) || has(self.queueName)",
         "message": "workloadPriorityClassName is a Kueue priority: it needs queueName"},
        {"rule": "!has(self.warmStart) || self.method != 'full'",
         "message": "warmStart continues a LoRA adapter (methods lora and qlora)"},
        {"rule": "!has(self.distribution) || !has(self.distribution.strategy) || self.distribution.strategy != 'FSDP' "
                 "|| (has(self.distribution.nodes) ? self.distribution.nodes : 1) * (has(self.resources) && "
                 "has(self.resources.gpus) && self.resources.gpus > 1 ? self.resources.gpus : 1) >= 2",
         "message": "distribution.strategy FSDP shards the model over training processes and needs at least two "
                    "(distribution.nodes x resources.gpus)"},
        {"rule": "!has(self.distribution) || !has(self.distribution.strategy) || self.distribution.strategy != 'FSDP' "
                 "|| !has(self.resources) || !has(self.resources.gpus) || self.resources.gpus > 0",
         "message": "distribution.strategy FSDP needs GPUs (resources.gpus is 0): accelerate shards a model only on "
                    "accelerators"},
        {"rule": "!has(self.distribution) || !has(self.distribution.strategy) || self.distribution.strategy != 'FSDP' "
                 "|| self.method != 'qlora'",
         "message": "distribution.strategy FSDP with method qlora: accelerate's FSDP2 cannot shard 4-bit weights; use "
                    "lora with FSDP, or qlora with DataParallel"},
        {"rule": "!has(self.distribution) || !has(self.distribution.nodes) || self.distribution.nodes == 1 || "
                 "!has(self.output.pvc.create) || !has(self.output.pvc.create.accessModes) || "
                 "'ReadWriteMany' in self.output.pvc.create.accessModes",
         "message": "distribution.nodes > 1: every pod writes checkpoints to the output claim, so "
                    "output.pvc.create.accessModes must include ReadWriteMany"},
        NEEDS_EVAL_RULE]})

    model: ModelSpec = Field(description="The base model to fine-tune.")
    dataset: DatasetSpec = Field(description="The training data.")
    chat_template: str | None = Field(None, max_length=65536,
                                      description="A Jinja chat template that replaces the model's own. Needed "
                                                  "for conversational data on a model without one. Assistant "
                                                  "turns are found by rendering each turn with it: no "
                                                  "{% generation %} markers are needed (docs/trainer.md).")
    method: Method = Field("lora", description="`lora`: train a LoRA adapter on the frozen base; `qlora`: the "
                                               "same on a 4-bit base (least memory); `full`: train every "
                                               "weight.")
    lora: LoraSpec | None = Field(None, description="LoRA settings for lora and qlora; defaults when unset.")
    quantization: QuantizationSpec | None = Field(None, description="4-bit settings for qlora; defaults when "
                                                                    "unset.")
    training: TrainingSpec = Field(TrainingSpec(), description="Training hyperparameters.")
    evaluation: EvaluationSpec = Field(EvaluationSpec(), description="What is measured at each evaluation, besides "
                                                                     "eval loss: greedy answers to held-out prompts, "
                                                                     "scored. Needs dataset.evalSplit.")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="GPUs, CPU, memory and "
                                                                                "placement of the trainer pod.")
    distribution: DistributionSpec = Field(DistributionSpec(), description="Several nodes (pods) per run, and how "
                                                                           "the model is spread over the processes: "
                                                                           "data parallel or fully sharded (FSDP).")
    output: OutputSpec = Field(description="Where the adapter is written.")
    hub_token_secret: SecretKeyRef | None = Field(None, description="Secret holding a Hugging Face token, for "
                                                                    "gated or private models and datasets. "
                                                                    "It reaches the trainer as an environment "
                                                                    "variable only.")
    image: str | None = Field(None, min_length=1, max_length=1024,
                              description="Trainer image; the operator's default when unset.")
    image_pull_secrets: list[LocalObjectReference] = Field([], max_length=16,
                                                           description="Secrets for pulling the trainer image.")
    queue_name: _pattern(DNS1123_LABEL, "a LocalQueue name (lowercase letters, digits and '-')", "team-a",
                         63) | None = Field(None, description="Kueue LocalQueue to submit the run to. Kueue then decides when "
                                               "it starts, by the team's quota.")
    workload_priority_class_name: ObjectName | None = Field(
        None, description="Kueue WorkloadPriorityClass of the run (the `kueue.x-k8s.io/priority-class` label on its "
                          "Job): orders it in its queue and decides which runs it may preempt, apart from the "
                          "pod's own PriorityClass (resources.priorityClassName). Needs queueName. A change reaches "
                          "a queued run; Kueue never lets it be removed from a Job.")
    warm_start: WarmStart | None = Field(None, description="Continue an earlier run's LoRA adapter (or one of its "
                                                           "checkpoints) instead of training a fresh one.")
    tracking: TrackingSpec | None = Field(None, description="Report the run to MLflow or Weights & Biases.")
    suspend: bool = Field(False, description="Suspend the run: its pod stops after saving a checkpoint. "
                                             "Setting it back to false resumes from that checkpoint.")
    run_policy: RunPolicy = Field(RunPolicy(), description="Retries, deadline and cleanup of "
                                                                         "the run's Job.")
    validation: ValidationSpec = Field(ValidationSpec(), description="Checking the run on a CPU before any GPU "
                                                                     "is asked for.")
    promotion: PromotionSpec | None = Field(None, description=(
        "A promotion gate: the run's adapter becomes the one at the stable path `<output>/<namespace>/<sftjob>/"
        "promoted` only if its evaluation meets these conditions (docs/results.md). Unset: every run's adapter "
        "stays in its own folder and nothing is promoted."))

    @model_validator(mode="after")
    def _method(self) -> SFTJobSpec:
        check_method(self.method, self.lora, self.quantization)
        check_needs_eval(self.training, self.dataset.eval_split is not None, "spec.dataset.evalSplit")
        if self.warm_start is not None and self.method == "full":
            raise ValueError("spec.warmStart continues a LoRA adapter (methods lora and qlora); for method full, name "
                             "the earlier run's model/ folder in spec.model.pvc")
        check_distribution(self.method, self.distribution, self.resources.gpus, "spec.distribution")
        new_claim = self.output.pvc.create
        if self.distribution.nodes > 1 and new_claim is not None and "ReadWriteMany" not in new_claim.access_modes:
            raise ValueError(f"spec.distribution.nodes is {self.distribution.nodes}: every pod writes checkpoints to "
                             f"the output claim, so spec.output.pvc.create.accessModes must include ReadWriteMany "
                             f"(it is {new_claim.access_modes})")
        if self.workload_priority_class_name and not self.queue_name:
            raise ValueError("spec.workloadPriorityClassName is a Kueue priority: it needs spec.queueName (the "
                             "LocalQueue the run is submitted to)")
        return self


# --------------------------------------------------------------------------------------------- status

Phase = Literal["Pending", "Validating", "Queued", "Running", "Succeeded", "Failed", "Suspended"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class Condition(Spec):
    """A Kubernetes-style condition."""

    type: str = Field(description="Condition type: Ready, Reconciling, Stalled (kstatus), Accepted, Validated, "
                                  "DataQuality, Queued, Running, ProgressReported, Suspended, Succeeded, Failed or "
                                  "Promoted.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str = Field(description="A CamelCase word for the reason, for tools.")
    message: str = Field("", description="What happened, for humans.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).",
                                      json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, description="The SFTJob generation this condition is about.")


class RunPod(Spec):
    """One pod of the run: the newest of its completion index (one per node)."""

    index: int = Field(description="Completion index: the pod's node rank; pod 0 holds the run's rank 0 (progress, "
                                   "result).")
    name: str = Field(description="Name of the pod.")
    node: str | None = Field(None, description="The node the pod runs on, once scheduled.")
    phase: str | None = Field(None, description="The pod's phase: Pending, Running, Succeeded or Failed.")


class RunStatus(Spec):
    """The current run: one trainer Job, for one version of the training inputs."""

    id: str = Field(description="Run id: a hash of the spec fields that affect training. A change to them "
                                "starts a new run.")
    job_name: str = Field(description="Name of the run's batch/v1 Job.")
    output_path: str | None = Field(None, description="Where the run writes, as <claim>:<folder>.")
    start_time: str | None = Field(None, description="When the trainer first started (RFC 3339).",
                                   json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(None, description="When the run ended (RFC 3339).",
                                        json_schema_extra={"format": "date-time"})
    attempts: int = Field(0, description="Trainer pods started for this run, retries included.")
    validation_job_name: str | None = Field(None, description="Name of the run's validation Job.")
    validated: bool | None = Field(None, description="Whether the run passed its Validating phase.")
    workload_name: str | None = Field(None, description="Name of the run's Kueue Workload, when it is queued.")
    warm_start: str | None = Field(None, description="The adapter the run continues (spec.warmStart, resolved), as "
                                                     "<claim>:<folder>.")
    preemptions: int = Field(0, description="Times Kueue preempted the run; each time its trainer saved a "
                                            "checkpoint and the readmitted run resumed from it.")
    last_preemption_time: str | None = Field(None, description="When Kueue last preempted the run (RFC 3339).",
                                             json_schema_extra={"format": "date-time"})
    pod_seconds: dict[str, float] = Field({}, description="Running seconds of each trainer pod of the run (its "
                                                          "trainer container's start to its end), kept after the "
                                                          "pod is gone; the oldest fold into `earlier`.")
    gpu_seconds: float | None = Field(None, description="GPU-seconds so far: GPUs per pod times the pods' running "
                                                        "seconds, over all attempts.")
    download_seconds: float | None = Field(None, description="Seconds the Validating phase spent on a CPU filling the "
                                                             "shared model cache for this run: what its GPUs did "
                                                             "not wait for.")
    pods: list[RunPod] = Field([], description="The run's current pods, one per node (distribution.nodes), with "
                                               "the nodes they run on.")


class PreviousResult(Spec):
    """What a succeeded earlier run left: enough to promote it again (spec.promotion.pin)."""

    adapter_path: str | None = Field(None, description="Its adapter, as <claim>:<folder>.")
    metrics: dict[str, float] = Field({}, description="Its scores at its result step.")
    fingerprint: str | None = Field(None, description="The held-out data they were measured on.")
    serving: Serving | None = Field(None, description="How to serve its adapter.")


class PreviousRun(Spec):
    """A run that an earlier version of the spec started. Its output stays where it was written."""

    id: str = Field(description="Run id.")
    job_name: str = Field(description="Name of the run's Job (it may have been deleted since).")
    phase: str = Field(description="The phase the run had when it was superseded.")
    output_path: str | None = Field(None, description="Where the run wrote, as <claim>:<folder>.")
    result: PreviousResult | None = Field(None, description="What a succeeded run left, for spec.promotion.pin.")


class Progress(Spec):
    """Live training progress, read from the trainer pod's progress endpoint."""

    step: int = Field(0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, description="Optimizer steps in the run.")
    percent: int | None = Field(None, description="step / totalSteps, in percent.")
    epoch: float | None = Field(None, description="Epochs done, fractional.")
    loss: float | None = Field(None, description="Latest logged training loss.")
    learning_rate: float | None = Field(None, description="Latest learning rate.")
    tokens_per_second: float | None = Field(None, description="Training throughput over the latest interval.")
    eval_loss: float | None = Field(None, description="Loss on the evaluation data at the latest evaluation.")
    exact_match: float | None = Field(None, description="Share of held-out prompts answered exactly right at the "
                                                        "latest evaluation (0 to 1).")
    eta: str | None = Field(None, description="Estimated time to the end, for example `12m30s`.")
    update_time: str | None = Field(None, description="When this progress was read (RFC 3339).",
                                    json_schema_extra={"format": "date-time"})


class EvaluationScores(Spec):
    """Measures on the evaluation data at one point of a run."""

    step: int | None = Field(None, description="The optimizer step they were measured at.")
    eval_loss: float | None = Field(None, description="Loss on the evaluation data.")
    mean_token_accuracy: float | None = Field(None, description="Share of the evaluation tokens that carry loss "
                                                                "the model predicts right (0 to 1).")
    exact_match: float | None = Field(None, description="Share of held-out prompts answered exactly right, greedily "
                                                        "(for JSON answers: equal parsed values), 0 to 1.")
    valid_json: float | None = Field(None, description="Share of answers that parse as JSON, among prompts whose "
                                                       "expected answer is a JSON object or array, 0 to 1.")


class AnswerSample(Spec):
    """A held-out prompt, its expected answer, and the model's answers (cut to a few hundred characters)."""

    prompt: str = Field(description="The prompt (its last user message).")
    expected: str = Field(description="The expected answer.")
    answer: str = Field(description="The fine-tuned model's answer.")
    before: str | None = Field(None, description="The base model's answer, before training.")
    match: bool | None = Field(None, description="Whether the answer counts as an exact match.")


class FewShotScores(Spec):
    """The base model prompted with training rows as examples (evaluation.fewShot), on the same held-out prompts."""

    shots: int = Field(description="Training rows given as examples in each prompt.")
    exact_match: float | None = Field(None, description="Share of held-out prompts answered exactly right, 0 to 1.")
    valid_json: float | None = Field(None, description="Share of answers that parse as JSON where JSON is "
                                                       "expected, 0 to 1.")


class Parity(Spec):
    """The adapter folder loaded alone in a fresh process (the base model by the name in adapter_config.json, the
    tokenizer and chat template from the folder), answering the held-out prompts greedily."""

    prompts: int = Field(description="Held-out prompts answered.")
    differing: int = Field(description="Answers that differ from the trainer's own.")
    first_difference: dict[str, str] | None = Field(None, description="The first prompt answered differently: "
                                                                      "prompt, trainer, served.")
    error: str | None = Field(None, description="Why the adapter could not be loaded or answer, when it could not.")


class EvaluationResult(Spec):
    """What the run's evaluations measured: before training, and at the end."""

    prompts: int | None = Field(None, description="Held-out prompts answered at each evaluation.")
    before: EvaluationScores | None = Field(None, description="Before training (evaluation.baseline).")
    few_shot: FewShotScores | None = Field(None, description="Before training, with evaluation.fewShot training "
                                                             "rows as examples in the prompt.")
    after: EvaluationScores | None = Field(None, description="At the end of training.")
    samples: list[AnswerSample] = Field([], max_length=20, description="A few held-out prompts with the answers.")
    fingerprint: str | None = Field(None, description="sha256 of the held-out data and how it was answered (rows, "
                                                      "prompts, answer length): runs with the same fingerprint were "
                                                      "measured alike and can be compared (spec.promotion).")
    parity: Parity | None = Field(None, description="Whether the adapter, loaded as a serving stack loads it, "
                                                    "answers as the trainer's own evaluation did (spec.promotion).")


class CheckpointStatus(Spec):
    """A checkpoint the run keeps on its output claim."""

    step: int = Field(description="The optimizer step it holds.")
    epoch: float | None = Field(None, description="Epochs done at that step.")
    train_loss: float | None = Field(None, description="The training loss last logged at or before that step.")
    eval_loss: float | None = Field(None, description="The eval loss measured at that step, when evaluated.")
    path: str = Field(description="Where it is, as <claim>:<folder>; warmStart.checkpoint takes its step.")
    complete: bool = Field(description="Whether it was saved completely (a save cut short is never resumed from).")
    best: bool | None = Field(None, description="Whether it has the lowest eval loss so far (resultCheckpoint best "
                                                "or earlyStopping).")


class Serving(Spec):
    """How to serve the adapter with LoRA serving stacks."""

    claim_name: str = Field(description="The claim holding the adapter.")
    path: str = Field(description="The adapter's folder inside the claim.")
    base_model: str = Field(description="The base model, as serving stacks name it (the Hub id when known).")
    base_model_revision: str | None = Field(None, description="The base model's revision.")
    lora_rank: int = Field(description="The adapter's rank: vLLM refuses ranks above its --max-lora-rank.")
    vllm_max_lora_rank: int | None = Field(None, description="The smallest --max-lora-rank vLLM accepts that serves "
                                                             "this rank (vLLM's default is 16).")
    target_modules: list[str] = Field([], description="Modules the adapter adapts.")
    vllm_lora_modules: str = Field(description="The exact `--lora-modules` argument of `vllm serve`, with the claim "
                                               "mounted at /adapters in the vLLM pod.")
    storage_uri: str = Field(description="The adapter as a KServe storage URI (pvc://<claim>/<path>).")


class Result(Spec):
    """What a finished run produced, from the trainer's termination message. A failed run keeps what it reached."""

    adapter_path: str | None = Field(None, description="Where the adapter (or the full model) is, as "
                                                       "<claim>:<folder>.")
    merged_path: str | None = Field(None, description="Where the merged model is, when mergeAdapter is set.")
    train_loss: float | None = Field(None, description="Mean training loss over the run.")
    eval_loss: float | None = Field(None, description="Final evaluation loss, when there is an eval split.")
    steps: int | None = Field(None, description="Optimizer steps trained.")
    runtime_seconds: float | None = Field(None, description="Training time in seconds.")
    trainable_parameters: int | None = Field(None, description="Parameters trained.")
    total_parameters: int | None = Field(None, description="Parameters in the model.")
    trained_tokens: int | None = Field(None, description="Tokens the model was trained on.")
    evaluation: EvaluationResult | None = Field(None, description="Eval loss, token accuracy and held-out answers "
                                                                  "before and after training, with samples.")
    result_step: int | None = Field(None, description="The step whose weights are the result: the last step, or "
                                                      "the best checkpoint's with resultCheckpoint best.")
    stop_reason: str | None = Field(None, description="Why the run ended before its planned steps (early stopping), "
                                                      "in words.")
    warm_start: str | None = Field(None, description="The adapter the run continued, as <claim>:<folder>.")
    gpu_seconds: float | None = Field(None, description="GPU-seconds the run used: GPUs per pod times the running "
                                                        "time of every attempt (retries and preemptions included).")
    serving: Serving | None = Field(None, description="How to serve the adapter: claim, path, base model, rank, and "
                                                      "the vLLM and KServe arguments.")


class SkippedRows(Spec):
    """Rows left out of training for one reason."""

    reason: str = Field(description="Why, in words.")
    count: int = Field(description="How many rows.")
    rows: list[int] = Field([], description="The first few row numbers (1-based).")


class QualityFinding(Spec):
    """Rows one data-quality check found, and what the policy did with them."""

    check: str = Field(description="duplicates, nearDuplicates, conflicts, leakage, nearLeakage, size, "
                                   "answerFormat, coverage, truncated, noLoss, emptyTurns or specialTokens.")
    file: str = Field(description="Which rows: train, or eval (with the evaluation file's name).")
    count: int = Field(description="Rows found (for size: usable training rows).")
    share: float = Field(description="Their share of the file's usable rows.")
    rows: list[int] = Field([], description="The first row numbers (1-based, in their file).")
    message: str = Field(description="What was found, in words.")
    action: Literal["warn", "drop", "fail", "info"] = Field(description="What dataset.quality did: warn, drop or "
                                                                         "fail; info where no rule applies.")


class PlanData(Spec):
    """The data-quality report (dataset.quality)."""

    findings: list[QualityFinding] = Field([], description="What the checks found, failures first.")
    dropped: dict[str, int] = Field({}, description="Rows dropped by the policy, by file (train, eval).")
    near_duplicates: dict[str, Any] = Field({}, description="What the near-duplicate search covered: similarity, "
                                                            "searchedRows, limited.")
    roles: dict[str, int] = Field({}, description="Roles mapped to the standard ones (`human → user`), with the "
                                                  "turns mapped.")


class PlanRows(Spec):
    """Rows of the dataset."""

    read: int = Field(description="Rows read.")
    train: int = Field(description="Rows trained on.")
    eval: int = Field(0, description="Rows held out for evaluation.")
    skipped: int = Field(0, description="Rows left out (see plan.skipped).")


class PlanMemory(Spec):
    """Estimated peak GPU memory of one training process, in GiB."""

    per_gpu: float = Field(description="Estimated peak per GPU, in GiB.")
    parts: dict[str, float] = Field({}, description="The estimate by part (weights, gradients, optimizer, "
                                                    "activations, cuda), in GiB.")
    assumptions: list[str] = Field([], description="What the estimate assumes.")
    gpu_memory: float | None = Field(None, description="Memory of the GPU the run asks for, in GiB, when known.")
    gpu_memory_source: str | None = Field(None, description="Where gpuMemory comes from.")
    fits: bool | None = Field(None, description="Whether the estimate fits the GPU (with a 5% margin).")
    would_fit: list[str] = Field([], description="Changes that would fit, when it does not.")


class PlanCache(Spec):
    """The shared model cache, as the Validating phase filled it (the SFTPolicy's cacheClaim)."""

    model: str = Field(description="The Hub model.")
    revision: str = Field(description="The commit the model's revision resolved to: the run loads exactly it.")
    bytes: int = Field(description="Bytes of the model's files at that commit.")
    downloaded_bytes: int = Field(description="Bytes downloaded into the cache for this run (0: all were cached).")
    download_seconds: float = Field(description="Seconds spent on a CPU fetching and verifying the files, before "
                                                "any GPU was asked for.")
    cached: bool = Field(description="Whether every file was already in the cache.")
    claim: str | None = Field(None, description="The cache claim it was filled into: the training pod reads that "
                                                "one, whatever the policy says by then.")


class Plan(Spec):
    """What the Validating phase found: the data as training sees it, the run's length and its GPU memory."""

    rows: PlanRows
    skipped: list[SkippedRows] = Field([], description="Rows left out, by reason.")
    data: PlanData | None = Field(None, description="The data-quality report.")
    samples: int = Field(description="Training samples after the data rules (packed sequences when packing).")
    overlong: int = Field(0, description="Samples longer than training.maxLength.")
    overlong_action: str | None = Field(None, description="What happens to them: truncate or drop.")
    longest_sample: int | None = Field(None, description="Tokens of the longest sample.")
    tokens: int | None = Field(None, description="Tokens per epoch.")
    trained_tokens: int | None = Field(None, description="Tokens per epoch that carry loss.")
    loss: str | None = Field(None, description="What carries loss, in words.")
    steps_per_epoch: int = Field(description="Optimizer steps per epoch.")
    total_steps: int = Field(description="Optimizer steps of the run.")
    effective_batch: int = Field(description="Sequences per optimizer step, over all GPUs.")
    gpus: int = Field(description="GPUs the plan is for, over all nodes.")
    nodes: int = Field(1, description="Nodes (pods) the plan is for.")
    strategy: str = Field("DataParallel", description="How the model is spread over the GPUs: DataParallel or FSDP.")
    method: str = Field(description="lora, qlora or full.")
    trainable_parameters: int = Field(description="Parameters trained.")
    total_parameters: int = Field(description="Parameters of the model.")
    download_bytes: int = Field(0, description="Bytes the training pod downloads into its cache (a Hub model's "
                                               "weights, estimated; 0 for a model on a claim): the cache volume's "
                                               "size limit and ephemeral-storage request come from it.")
    cache: PlanCache | None = Field(None, description="The shared model cache: what was in it, what was fetched and "
                                                      "how long that took on a CPU; the training pod downloads "
                                                      "nothing.")
    memory: PlanMemory


class PromotedRun(Spec):
    """The adapter serving reads at the stable path."""

    run_id: str = Field(description="The promoted run.")
    path: str = Field(description="The stable path, as <claim>:<folder>: a link switched atomically to the promoted "
                                  "run's adapter.")
    adapter_path: str = Field(description="The promoted run's own adapter folder, as <claim>:<folder>.")
    metrics: dict[str, float] = Field({}, description="The promoted run's scores (exactMatch, validJson, evalLoss, "
                                                      "meanTokenAccuracy) at its result step.")
    fingerprint: str | None = Field(None, description="The held-out data those scores were measured on.")
    time: str = Field(description="When it was promoted (RFC 3339).", json_schema_extra={"format": "date-time"})
    replaced: str | None = Field(None, description="The run it replaced at the stable path.")
    pinned: bool | None = Field(None, description="Promoted by spec.promotion.pin, without its gate.")
    serving: Serving | None = Field(None, description="How to serve the promoted adapter from the stable path.")


class PromotionCheck(Spec):
    """One comparison the promotion gate made."""

    metric: str = Field(description="The metric, or `fingerprint` or `parity`.")
    value: float | None = Field(None, description="The run's value.")
    bar: float | None = Field(None, description="What it had to meet.")
    passed: bool = Field(description="Whether it met it.")
    against: str | None = Field(None, description="`minimum`, `maximum`, or the promoted run's id.")
    detail: str | None = Field(None, description="For `fingerprint`: this run's and the promoted run's, shortened.")


class PromotionStatus(Spec):
    """The promotion gate's latest decision, with each check."""

    run_id: str | None = Field(None, description="The run the gate judged.")
    passed: bool | None = Field(None, description="Whether the run may be promoted.")
    reason: str | None = Field(None, description="Promoted, Pinned, BelowThreshold, Regressed, NotComparable, "
                                                 "MetricMissing, ServingMismatch, PinNotFound or PromotionFailed.")
    checks: list[PromotionCheck] = Field([], max_length=32, description="Each comparison the gate made.")


class SFTJobStatus(Spec):
    """What the operator observed. Written by the operator only."""

    phase: Phase | None = Field(None, description="Pending → Validating → (Queued) → Running → Succeeded | "
                                                  "Failed; "
                                                  "Suspended while spec.suspend is true.")
    message: str | None = Field(None, description="The latest human-readable explanation of the phase.")
    observed_generation: int | None = Field(None, description="The SFTJob generation the operator last acted on.")
    model: str | None = Field(None, description="The base model, as shown by `kubectl get sftjobs`.")
    conditions: list[Condition] = Field([], description="Conditions with reasons.",
                                        json_schema_extra={"x-kubernetes-list-type": "map",
                                                           "x-kubernetes-list-map-keys": ["type"]})
    run: RunStatus | None = Field(None, description="The current run.")
    previous_runs: list[PreviousRun] = Field([], description="Earlier runs, newest first "
                                                                               "(at most 10).")
    plan: Plan | None = Field(None, description="The current run's plan, from its Validating phase.")
    progress: Progress | None = Field(None, description="Live progress of the current run.")
    checkpoints: list[CheckpointStatus] = Field([], max_length=24, description="The current run's checkpoints on "
                                                                             "its claim, oldest first: the newest 20 "
                                                                             "and the best one.")
    result: Result | None = Field(None, description="The current run's result, once it succeeded; for a failed run, "
                                                    "the steps and losses it reached.")
    promoted: PromotedRun | None = Field(None, description="The run whose adapter the stable path holds "
                                                           "(spec.promotion).")
    promotion: PromotionStatus | None = Field(None, description="The promotion gate's latest decision.")


# ---------------------------------------------------------------------------------------------- object


class ObjectMeta(BaseModel):
    """The part of metadata the operator checks; the rest passes as is."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(max_length=MAX_NAME_LENGTH), _checked(
        DNS1123_LABEL, "a valid SFTJob name (lowercase letters, digits and '-', starting and ending with a "
                       "letter or digit)", "chat-lora")]
    namespace: str | None = None


class SFTJob(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    api_version: Literal["sftop.dev/v1alpha1"]
    kind: Literal["SFTJob"]
    metadata: ObjectMeta
    spec: SFTJobSpec
    status: SFTJobStatus | None = None

    @model_validator(mode="after")
    def _hostnames(self) -> SFTJob:
        if self.spec.distribution.nodes > 1 and len(self.metadata.name) > MAX_MULTI_NODE_NAME_LENGTH:
            raise ValueError(f"metadata.name must be at most {MAX_MULTI_NODE_NAME_LENGTH} characters with "
                             f"spec.distribution.nodes > 1 (each pod's hostname is <name>-<run id>-<index>, at most "
                             f"63)")
        return self


def parse_spec(spec: dict[str, Any]) -> SFTJobSpec:
    return SFTJobSpec.model_validate(spec)
