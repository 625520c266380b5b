"""The base model and tokenizer, and the LoRA / QLoRA settings for them."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from sftop_trainer.config import TrainerConfig
from sftop_trainer.causes import hub_unreachable
from sftop_trainer.errors import ConfigError, GPUUnavailable, ModelLoadError
from sftop_trainer.runtime import gpu_problem, nvidia_driver

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def check_gpus(requested: int | None) -> None:
    """A run that asked for GPUs and cannot use them stops here (GPUUnavailable) instead of training on the CPU."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = [torch.cuda.get_device_name(i) for i in range(visible)]
    problem = gpu_problem(requested, visible, names, torch.version.cuda, nvidia_driver())
    if problem:
        raise GPUUnavailable(problem)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): there, bf16 matmuls ran 2.3x faster than
    float32 (bench/RESULTS.md). Elsewhere bf16 is emulated and slower."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def cpu_autocast(cfg: TrainerConfig) -> bool:
    """Train on a CPU with bfloat16 autocast over float32 weights: for `dtype: auto` on CPUs with native bf16.
    (4-bit bases keep their own compute dtype.)"""
    return cfg.model.dtype == "auto" and cfg.method != "qlora" and not has_gpu() and cpu_has_bf16()


def auto_dtype(capability: tuple[int, int] | None) -> str:
    """What `dtype: auto` computes in, by the GPU's compute capability (None: no GPU). bfloat16 runs natively from
    capability 8.0 (Ampere) on; torch.cuda.is_bf16_supported() also says yes on older GPUs that only emulate it
    (slowly, through float32), so the capability decides: float16 there."""
    if capability is None:
        return "float32"
    return "bfloat16" if capability >= (8, 0) else "float16"


def resolve_dtype(name: str) -> torch.dtype:
    """`auto`: bfloat16 on GPUs that have it natively, float16 on older GPUs, float32 on a CPU."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    capability = torch.cuda.get_device_capability() if has_gpu() else None
    return getattr(torch, auto_dtype(capability))


def _from_pretrained_kwargs(cfg: TrainerConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.resolved_revision or cfg.model.revision:
        kw["revision"] = cfg.model.resolved_revision or cfg.model.revision
    return kw


def is_local_path(name: str) -> bool:
    """A model name that is a folder, not a Hub id (`org/name`): absolute, relative with ./ or ../, or deeper."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.path.isdir(name)


def check_local_model(cfg: TrainerConfig) -> None:
    """A model folder that is missing or incomplete is named as such (transformers would call it a bad Hub id)."""
    name = cfg.model.name
    if not is_local_path(name):
        return
    folder = os.path.expanduser(name)
    if not os.path.isdir(folder):
        parent = os.path.dirname(folder.rstrip("/"))
        hint = f"; {parent} holds: {', '.join(sorted(os.listdir(parent))[:10]) or 'nothing'}" \
            if os.path.isdir(parent) else ""
        raise ModelLoadError(f"model folder {name} does not exist{hint}")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModelLoadError(f"model folder {name} has no config.json: it must hold the files save_pretrained "
                             f"writes (config.json, the weights, the tokenizer)")


def hidden_size(cfg: TrainerConfig) -> int | None:
    """The model's hidden size, from its config alone (no weights), for the default learning rate."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.model.name, **_from_pretrained_kwargs(cfg))
    except Exception as e:  # the tokenizer loaded already: a config that fails here fails the model load too
        raise _load_error("config", cfg, e) from e
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "hidden_size", None)


def _load_error(what: str, cfg: TrainerConfig, e: Exception) -> ModelLoadError:
    where = cfg.model.name + (f"@{cfg.model.revision}" if cfg.model.revision else "")
    if not is_local_path(cfg.model.name) and hub_unreachable(e):
        return ModelLoadError(
            f"cannot load the {what} of {where}: the Hugging Face Hub cannot be reached from here and the model "
            f"is not in the cache. Without internet access, copy the model onto a claim and name it with "
            f"spec.model.pvc; a gated or private model also needs spec.hubTokenSecret.")
    text = str(e).strip().splitlines()[0].rstrip(". ") if str(e).strip() else type(e).__name__
    hint = ""
    if "trust_remote_code" in str(e):
        hint = " The model needs its own code: set spec.model.trustRemoteCode: true if you trust it."
    elif any(s in str(e) for s in ("gated", "401", "403", "Unauthorized")):
        hint = " The repository is gated or private: accept its license and set spec.hubTokenSecret."
    return ModelLoadError(f"cannot load the {what} of {where}: {text}.{hint}")


def load_tokenizer(cfg: TrainerConfig):
    from transformers import AutoTokenizer

    check_local_model(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.name, **_from_pretrained_kwargs(cfg))
    except Exception as e:  # OSError, ValueError, ImportError, hub errors: all mean "cannot load"
        raise _load_error("tokenizer", cfg, e) from e
    if cfg.chat_template:
        tokenizer.chat_template = cfg.chat_template
    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; padding positions carry no loss, so EOS can stand in.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(cfg: TrainerConfig):
    import torch
    from transformers import BitsAndBytesConfig

    q = cfg.quantization
    assert q is not None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
                              bnb_4bit_quant_storage=getattr(torch, q.compute_dtype))


def load_model(cfg: TrainerConfig, gradient_checkpointing: bool):
    """The base model, ready for the trainer: 4-bit and prepared for k-bit training under qlora."""
    import torch
    from transformers import AutoModelForCausalLM

    kw = _from_pretrained_kwargs(cfg)
    gpu = has_gpu()
    if cfg.method == "qlora":
        kw["quantization_config"] = quantization_config(cfg)
        # 4-bit weights are placed at load time: on this process's GPU, or on the CPU.
        kw["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))} if gpu else "cpu"
        kw["dtype"] = getattr(torch, cfg.quantization.compute_dtype)
    elif cfg.method == "full":
        # Trained weights stay float32 (master weights); the Trainer's mixed precision (args.bf16/fp16) computes in
        # model.dtype. Weights loaded in 16 bits and trained directly lose AdamW's small updates to rounding
        # (bfloat16), or stop the run: GradScaler refuses to unscale float16 gradients.
        kw["dtype"] = torch.float32
    else:
        kw["dtype"] = resolve_dtype(cfg.model.dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model.name, **kw)
    except Exception as e:
        raise _load_error("weights", cfg, e) from e
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        # No forward pass may run on the 4-bit model before training: on CPUs with AVX512-BF16, bitsandbytes
        # repacks the weights for inference on the first no-grad forward and later gradients come out wrong.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def linear_module_names(model) -> list[str]:
    """Leaf names of the model's linear layers (q_proj, up_proj, ...), the names LoRA can target."""
    import torch

    names = set()
    for name, module in model.named_modules():
        cls = type(module).__name__
        if isinstance(module, torch.nn.Linear) or cls in ("Linear4bit", "Linear8bitLt", "Conv1D"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_config(cfg: TrainerConfig, model):
    from peft import LoraConfig

    lora = cfg.lora
    assert lora is not None
    targets: str | list[str] = lora.target_modules
    if lora.target_modules == ["all-linear"]:
        targets = "all-linear"
    else:
        all_names = {name for name, _ in model.named_modules()}
        missing = [t for t in lora.target_modules
                   if not any(n == t or n.endswith("." + t) for n in all_names)]
        if missing:
            raise ConfigError(f"lora.targetModules {missing} match no module of {cfg.model.name}; its linear layers "
                              f"are: {', '.join(linear_module_names(model))} (or use all-linear)")
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                      bias=lora.bias, modules_to_save=lora.modules_to_save or None, task_type="CAUSAL_LM")


def packed_4bit_values(stored_elements: int, element_size: int) -> int:
    """The 4-bit weights a packed tensor holds: bitsandbytes packs two per byte, then views the bytes as
    bnb_4bit_quant_storage's dtype (uint8 by default; this trainer stores them in the compute dtype, so a bfloat16
    element holds four weights and a float32 one eight)."""
    return stored_elements * element_size * 2


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights are counted as the parameters they stand for."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":
            n = packed_4bit_values(n, p.element_size())
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def free_accelerator_memory() -> None:
    """Give back what the process no longer holds: collected objects, and the CUDA caching allocator's free blocks."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
