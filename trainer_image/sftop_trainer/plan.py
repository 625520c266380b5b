"""A run's plan, made on a CPU before any GPU is asked for.

`make_plan(cfg)` does everything a run does before training, without the weights: it reads and converts the
data, applies the chat template, tokenizes and masks every sample (the run's own preparation,
`prepare.prepare_data`), builds the model from its config on the meta device (no weights downloaded), checks the
LoRA target modules against the model's real module names, and computes the run's length and the GPU memory it
needs (`sftop_trainer.memory`). The plan is what `sftop plan` prints, what the Validating phase writes into an
SFTJob's status, and what the run itself logs before it trains.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from sftop_trainer import model as model_mod
from sftop_trainer import quality
from sftop_trainer.args import build_sft_config
from sftop_trainer.config import LoraSpec, TrainerConfig
from sftop_trainer.errors import ConfigError, ModelLoadError
from sftop_trainer.memory import (FIT_MARGIN, alternatives, estimate_memory, gib, lora_inputs_per_layer, memory_inputs,
                                  parameters_of, shape_of)
from sftop_trainer.prepare import PREPARED, config_fingerprint, ensure_writable, prepare_data, save_prepared

SKIPPED_ROWS_SHOWN = 5


def empty_model(config, trust_remote_code: bool = False):
    """The model built from its config on the meta device: real module names and parameter shapes, no memory."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()  # tied embeddings are one parameter, as after from_pretrained
    return model


def load_config(cfg: TrainerConfig):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(cfg.model.name, **model_mod._from_pretrained_kwargs(cfg))
    except Exception as e:
        raise model_mod._load_error("config", cfg, e) from e


def lora_model(cfg: TrainerConfig, model):
    """The meta model wrapped with the run's LoRA config: PEFT resolves the target modules as it will on the GPU."""
    from peft import get_peft_model

    peft_config = model_mod.lora_config(cfg, model)
    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:
        raise ConfigError(f"lora: {str(e).splitlines()[0]}") from e


def download_bytes(cfg: TrainerConfig, config, parameters: int) -> int:
    """What the training pod downloads into its cache: a Hub model's weights, as stored (the checkpoint's dtype,
    float32 when its config names none; QLoRA downloads the 16-bit weights and quantizes them while loading), or
    nothing for a model on a claim. An estimate from the parameter count (the Hub's file listing would be exact):
    it sizes the cache volume (sftop.pod)."""
    import torch

    if model_mod.is_local_path(cfg.model.name):
        return 0
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, torch.float32)
    return parameters * (dtype.itemsize if isinstance(dtype, torch.dtype) else 4)


def make_plan(cfg: TrainerConfig, gpus: int | None = None, keep_data: bool = False):
    """The plan of a run: the data as training sees it, its length, its parameters and its GPU memory. With
    keep_data, returns (plan, the prepared data)."""
    import datasets

    datasets.disable_progress_bars()
    gpus = (cfg.hardware.gpus if cfg.hardware.gpus is not None else 1) if gpus is None else gpus
    world = cfg.distribution.nodes * max(1, gpus)  # training processes, each with its part of every batch
    tokenizer = model_mod.load_tokenizer(cfg)
    config = load_config(cfg)
    from sftop_trainer.provenance import check_warm_start

    check_warm_start(cfg)  # the adapter to continue fits this run: checked on a CPU, before a GPU is asked for
    args = build_sft_config(cfg, Path(cfg.output.dir), has_eval=False, assistant_only_loss=False,
                            progress_bar=False)
    data = prepare_data(cfg, tokenizer, args)
    report = data.report

    shape = shape_of(config)
    try:
        model = empty_model(config, cfg.model.trust_remote_code)
    except Exception as e:
        raise ModelLoadError(f"cannot build {cfg.model.name} from its config: {str(e).splitlines()[0]}") from e
    params = parameters_of(model)
    lora_inputs = 0
    if cfg.method == "full":
        trainable, trainable_lora = params.total, None
    else:
        peft_model = lora_model(cfg, model)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        trainable_lora = trainable
        lora_inputs = lora_inputs_per_layer(peft_model, shape.layers)

    samples = len(data.train)
    t = cfg.training
    batches = math.ceil(math.ceil(samples / t.per_device_train_batch_size) / world)
    per_epoch = max(batches // t.gradient_accumulation_steps + int(batches % t.gradient_accumulation_steps > 0), 1)
    total_steps = t.max_steps if t.max_steps is not None else math.ceil((t.epochs or 1.0) * per_epoch)
    longest = min(max(data.lengths, default=1), t.max_length)
    seq = t.max_length if t.packing else longest

    m = memory_inputs(cfg, shape, seq, gpus, lora_inputs)
    memory = estimate_memory(shape, params, trainable, m)
    plan: dict[str, Any] = {
        "rows": {"read": report.rows_read, "train": report.rows_train, "eval": report.rows_eval,
                 "skipped": sum(v.get("count", 0) for v in report.skipped.values())},
        "skipped": [{"reason": reason, "count": v.get("count", 0), "rows": v.get("rows", [])[:SKIPPED_ROWS_SHOWN]}
                    for reason, v in report.skipped.items()],
        "data": {**report.quality, "roles": report.roles},
        "samples": samples,
        "overlong": report.overlong,
        "overlongAction": report.overlong_action,
        "longestSample": max(data.lengths, default=0),
        "tokens": sum(min(n, t.max_length) for n in data.lengths) if report.overlong_action == "truncate"
        else sum(n for n in data.lengths if n <= t.max_length),
        "trainedTokens": data.trained_tokens,
        "loss": report.loss,
        "stepsPerEpoch": per_epoch,
        "totalSteps": total_steps,
        "effectiveBatch": t.per_device_train_batch_size * t.gradient_accumulation_steps * world,
        "gpus": gpus * cfg.distribution.nodes,
        "nodes": cfg.distribution.nodes,
        "strategy": cfg.distribution.strategy,
        "method": cfg.method,
        "trainableParameters": trainable,
        # as the run counts them: the adapter's parameters are part of the model it trains
        "totalParameters": params.total + (trainable if cfg.method != "full" else 0),
        "downloadBytes": download_bytes(cfg, config, params.total),
        "memory": {
            "perGpu": gib(memory["total"]),
            "parts": {k: gib(v) for k, v in memory["parts"].items()},
            "assumptions": memory["assumptions"],
        },
    }
    limit, source = cfg.hardware.gpu_memory, cfg.hardware.gpu_memory_source
    if limit:
        usable = int(limit * (1 - FIT_MARGIN))
        fits = memory["total"] <= usable
        plan["memory"].update(gpuMemory=gib(limit), gpuMemorySource=source, fits=fits)
        if not fits:
            if trainable_lora is None:  # a full run: what LoRA on the same model would train
                lora_cfg = cfg.model_copy(update={"method": "lora", "lora": LoraSpec()})
                trainable_lora = sum(p.numel() for p in lora_model(lora_cfg, empty_model(
                    config, cfg.model.trust_remote_code)).parameters() if p.requires_grad)
            plan["memory"]["wouldFit"] = alternatives(cfg, shape, params, trainable_lora, m, usable)
    return (plan, data) if keep_data else plan


def does_not_fit(plan: dict[str, Any]) -> str | None:
    """The message of a plan that does not fit its GPU, or None."""
    mem = plan.get("memory") or {}
    if mem.get("fits") is not False:
        return None
    return (f"the run needs about {mem['perGpu']} GiB per GPU ({plan['method']}) but the GPU has "
            f"{mem['gpuMemory']} GiB ({mem['gpuMemorySource']}); what would fit: "
            + "; or ".join(mem.get("wouldFit") or ["nothing found"]))


def describe(plan: dict[str, Any]) -> list[str]:
    """The plan in lines, for a terminal."""
    rows, mem = plan["rows"], plan["memory"]
    lines = [f"data      {rows['read']} rows read: {rows['train']} to train on, {rows['eval']} held out, "
             f"{rows['skipped']} skipped"]
    for s in plan["skipped"]:
        lines.append(f"          skipped {s['count']}: {s['reason']} (rows {', '.join(map(str, s['rows']))}"
                     f"{', ...' if s['count'] > len(s['rows']) else ''})")
    for change, turns in ((plan.get("data") or {}).get("roles") or {}).items():
        lines.append(f"          mapped the role {change} in {turns} turn(s)")
    lines += quality.describe(plan.get("data"))
    lines.append(f"samples   {plan['samples']} ({plan['overlong']} longer than maxLength: {plan['overlongAction']}); "
                 f"longest {plan['longestSample']} tokens")
    lines.append(f"tokens    {plan['tokens']} per epoch, {plan['trainedTokens']} carry loss ({plan['loss']})")
    lines.append(f"steps     {plan['totalSteps']} ({plan['stepsPerEpoch']} per epoch), effective batch "
                 f"{plan['effectiveBatch']}")
    lines.append(f"params    {plan['trainableParameters']:,} trained of {plan['totalParameters']:,} ({plan['method']})")
    parts = ", ".join(f"{k} {v}" for k, v in mem["parts"].items())
    gpus = plan["gpus"]
    lines.append(f"memory    ~{mem['perGpu']} GiB per GPU{f' × {gpus} GPUs' if gpus > 1 else ''} ({parts})")
    if "fits" in mem:
        verdict = "fits" if mem["fits"] else "does NOT fit"
        lines.append(f"          {verdict} the {mem['gpuMemory']} GiB GPU ({mem['gpuMemorySource']})")
        for alt in mem.get("wouldFit") or []:
            lines.append(f"          would fit: {alt}")
    for note in mem["assumptions"]:
        lines.append(f"          - {note}")
    if plan.get("downloadBytes"):
        lines.append(f"download  ~{gib(plan['downloadBytes'])} GiB of weights from the Hub into the pod's cache")
    cache = plan.get("cache")
    if cache:
        lines.append(f"cache     {cache['model']}@{cache['revision'][:12]}: {gib(cache['bytes'])} GiB, " +
                     ("all cached" if cache["cached"] else
                      f"{gib(cache['downloadedBytes'])} GiB fetched in {cache['downloadSeconds']:.0f} s") +
                     "; the training pod reads it offline")
    return lines


def validate(cfg: TrainerConfig, cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Validating phase: the plan, with the prepared data and plan.json left in output.dir for the run.
    `cache`: what filling the shared model cache found (sftop_trainer.fetch.fill, with `cfg` at its commit).
    Returns the termination message."""
    out = Path(cfg.output.dir)
    ensure_writable(out)
    plan, data = make_plan(cfg, keep_data=True)
    if cache is not None:
        plan["cache"] = cache
        plan["downloadBytes"] = 0  # the training pod reads the cache: it downloads nothing
    fingerprint = config_fingerprint(cfg)
    save_prepared(data, out / PREPARED, fingerprint)
    text = json.dumps({**plan, "configSha256": fingerprint}, indent=2) + "\n"
    _replace(out / "plan.json", text)
    return {"status": "Validated", "plan": plan}


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
