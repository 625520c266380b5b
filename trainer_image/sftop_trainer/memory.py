"""The GPU memory a run needs, per training process, from the model's shape and the run's settings.

`estimate_memory` counts, per GPU, what torch allocates at the peak of a training step:

    weights      frozen and trained parameters in the dtype they are stored in: 4-bit weights with their
                 quantization constants under QLoRA; PEFT keeps LoRA weights in float32, and QLoRA's
                 preparation casts every parameter that is not 4-bit (embeddings, norms, an untied LM head)
                 to float32; full fine-tuning keeps float32 master weights (and, under autocast, a 16-bit copy
                 through the forward pass)
    gradients    one per trained parameter, in its dtype; DDP adds buckets of the same size with several GPUs
    optimizer    AdamW: two states per trained parameter in its dtype (8-bit AdamW: two bytes); the foreach
                 implementation (adamw_torch) needs one more parameter-sized buffer during the step
    activations  what autograd keeps per token: with gradient checkpointing each layer's input plus one layer
                 recomputed; without it every layer's saved tensors (norms, attention with SDPA/flash, the gated
                 MLP, LoRA dropout copies), for the longest batch the data gives: per-device batch × the
                 longest sample (maxLength when packing)
    LM head      the trainer computes the loss in chunks, never the whole (tokens × vocabulary) logits
    CUDA         the CUDA context and cuBLAS workspaces, outside torch's allocator

The result is an estimate: it assumes SDPA or flash attention, a dense decoder (no mixture of experts), and
leaves out allocator fragmentation, which the fit check covers with a margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sftop_trainer.config import TrainerConfig

GIB = 1024**3
CUDA_CONTEXT = int(0.6 * GIB)  # context + cuBLAS/cuDNN workspaces on recent GPUs, outside torch's allocator
FIT_MARGIN = 0.05  # of the GPU's memory, left for allocator fragmentation
LM_HEAD_TILE = (4096, 32768)  # tokens × vocabulary entries per tile of TRL's chunked LM head
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# optimizers whose states take one byte each
EIGHT_BIT = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "adamw_torch_8bit", "lion_8bit", "paged_lion_8bit")


@dataclass
class Shape:
    """What the estimate needs of a decoder's config."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool


def shape_of(config) -> Shape:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = text.hidden_size
    heads = getattr(text, "num_attention_heads", None) or 1
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    return Shape(layers=text.num_hidden_layers, hidden=hidden, intermediate=intermediate, heads=heads,
                 kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim,
                 vocab=text.vocab_size, tied=bool(getattr(config, "tie_word_embeddings", False)))


@dataclass
class Parameters:
    """Parameters by kind: `linear` are the body's linear weights (what 4-bit quantization converts)."""

    linear: int
    embeddings: int
    lm_head: int  # 0 when tied to the input embeddings
    other: int  # norms, biases of non-linear modules
    largest_linear: int  # the largest single linear weight (dequantized, one at a time, under QLoRA)

    @property
    def total(self) -> int:
        return self.linear + self.embeddings + self.lm_head + self.other


def parameters_of(model) -> Parameters:
    import torch

    head = model.get_output_embeddings()
    counts = {"linear": 0, "embeddings": 0, "lm_head": 0, "other": 0}
    largest = 0
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:  # tied weights count once
                continue
            seen.add(id(p))
            n = p.numel()
            if module is head:
                counts["lm_head"] += n
            elif isinstance(module, torch.nn.Linear):
                counts["linear"] += n
                largest = max(largest, n)
            elif isinstance(module, torch.nn.Embedding):
                counts["embeddings"] += n
            else:
                counts["other"] += n
    return Parameters(largest_linear=largest, **counts)


def lora_inputs_per_layer(peft_model, layers: int) -> int:
    """Sum of in_features over the LoRA-wrapped modules, per layer: the inputs LoRA dropout copies."""
    total = 0
    for module in peft_model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "in_features"):
            total += module.in_features
    return total // max(1, layers)


@dataclass
class MemoryInputs:
    method: str  # full | lora | qlora
    weight_dtype: str  # of the frozen (lora) or trained (full) weights
    compute_dtype: str
    double_quant: bool
    optim: str
    batch: int  # per device
    seq: int  # tokens of the longest sample in a batch
    gradient_checkpointing: bool
    gpus: int
    lora_dropout: float = 0.0
    lora_inputs: int = 0  # per layer, see lora_inputs_per_layer
    shards: int = 1  # FSDP: the processes the model is sharded over (1: every process holds all of it)
    cpu_offload: bool = False  # FSDP: sharded parameters, gradients and optimizer states live in CPU memory
    layers: int = 1  # decoder layers (FSDP gathers one at a time)


def optimizer_bytes(optim: str, trained_bytes: int, trained: int) -> tuple[int, int, str]:
    """(state bytes, extra bytes during the step, what was assumed) for `trained` parameters of
    `trained_bytes` bytes each."""
    name = optim.lower()
    if name in EIGHT_BIT or "8bit" in name:
        states = 2 if "lion" not in name else 1
        return states * trained, 0, f"{optim}: {states} byte(s) of state per trained parameter"
    if name.startswith("sgd"):
        return 0, 0, f"{optim}: no state (momentum 0)"
    if name.startswith("adafactor"):
        return trained * 4 // 64, 0, f"{optim}: factored second moments, taken as 1/16 of the parameters"
    if "lion" in name:
        return trained * trained_bytes, 0, f"{optim}: one state per trained parameter"
    states = 2 * trained * trained_bytes
    if name == "adamw_torch":  # foreach AdamW: one parameter-sized intermediate during the step
        return states, trained * trained_bytes, "adamw_torch (foreach): two states per trained parameter in its " \
                                                "dtype, and one more parameter-sized buffer during the step"
    if name.startswith(("adamw", "adam", "paged_adamw")):
        return states, 0, f"{optim}: two states per trained parameter in its dtype"
    return states, 0, f"{optim}: taken as AdamW, two states per trained parameter"


def activation_bytes_per_token_layer(shape: Shape, m: MemoryInputs) -> int:
    """What autograd keeps of one decoder layer for one token, without gradient checkpointing."""
    a = DTYPE_BYTES[m.compute_dtype]
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    norms = 2 * (4 * h + a * h)  # each RMSNorm keeps a float32 copy of its input and its output
    attention = a * (3 * q + 3 * kv)  # q, k before and after rotary, v, the attention output (SDPA/flash: no s²)
    mlp = 4 * a * i  # gate and up projections, the activation, their product
    dropout = (a + 1) * m.lora_inputs if m.lora_dropout > 0 else 0  # LoRA dropout's copies and masks
    return norms + attention + mlp + dropout


def estimate_memory(shape: Shape, params: Parameters, trainable: int, m: MemoryInputs) -> dict[str, Any]:
    """Peak GPU memory of one training process, by part, in bytes, with the assumptions behind each part."""
    w = DTYPE_BYTES[m.weight_dtype]
    a = DTYPE_BYTES[m.compute_dtype]
    assumptions = []
    if m.method == "qlora":
        # NF4: half a byte per weight, one absmax per 64 weights (float32, or 8-bit plus one float32 per 256
        # blocks with double quantization). Everything else is cast to float32 by PEFT's k-bit preparation.
        per_weight = 0.5 + (1 / 64 + 4 / (64 * 256) if m.double_quant else 4 / 64)
        frozen = int(params.linear * per_weight) + 4 * (params.embeddings + params.lm_head + params.other)
        trained_bytes = 4
        assumptions.append(f"4-bit NF4 linear weights ({per_weight:.3f} bytes each"
                           f"{' with double quantization' if m.double_quant else ''}); embeddings, norms and the "
                           f"LM head in float32 (PEFT's k-bit preparation)")
    elif m.method == "lora":
        frozen = params.total * w
        trained_bytes = 4
        assumptions.append(f"frozen weights in {m.weight_dtype}; LoRA weights, their gradients and optimizer "
                           f"states in float32 (PEFT's default)")
    else:
        # Full fine-tuning keeps float32 master weights (sftop_trainer.model.load_model) and computes in the
        # compute dtype under the Trainer's autocast, which keeps a 16-bit copy of each weight it casts until the
        # forward pass ends (FSDP instead gathers its layers already cast, below).
        frozen = 0
        trained_bytes = 4
        copies = a * trainable if a < 4 and m.shards == 1 else 0
        assumptions.append(f"every weight trained in float32 (master weights), with float32 gradients and optimizer "
                           f"states; computed in {m.compute_dtype}"
                           + (f" under autocast, which holds a {m.compute_dtype} copy of the weights through the "
                              f"forward pass" if copies else ""))
    weights = frozen + trainable * trained_bytes
    gradients = trainable * trained_bytes
    states, step_extra, optim_note = optimizer_bytes(m.optim, trained_bytes, trainable)
    gathered = 0
    if m.shards > 1:
        # FSDP: each process keeps 1/shards of every parameter, gradient and optimizer state, and gathers one
        # decoder layer's full parameters at a time (two, with the next one prefetched).
        # Under mixed precision FSDP gathers in the compute dtype (float32 master shards cast before the gather).
        gathered = 2 * (params.total * a if m.method == "full" else weights) // max(1, m.layers)
        weights, gradients, states, step_extra = (weights // m.shards, gradients // m.shards, states // m.shards,
                                                  step_extra // m.shards)
        note = f"FSDP over {m.shards} processes: each keeps 1/{m.shards} of the weights, gradients and optimizer " \
               f"states, and gathers two decoder layers' weights at a time"
        if m.cpu_offload:
            weights, gradients, states, step_extra = 0, 0, 0, 0
            note += "; CPU offload: the shards and the optimizer step live in CPU memory"
        assumptions.append(note)
    elif m.gpus > 1:
        gradients *= 2
        assumptions.append(f"{m.gpus} GPUs, data parallel: every GPU holds the whole model and optimizer; DDP "
                           f"gradient buckets double the gradients")
    assumptions.append(optim_note)

    tokens = m.batch * m.seq
    per_layer = activation_bytes_per_token_layer(shape, m)
    if m.gradient_checkpointing:
        kept = shape.layers * a * shape.hidden * tokens + per_layer * tokens
        assumptions.append("gradient checkpointing: each layer's input kept, one layer recomputed at a time")
    else:
        kept = shape.layers * per_layer * tokens
        assumptions.append("no gradient checkpointing: every layer's activations kept")
    # the final norm, the hidden states the LM head reads, gradients flowing through one layer
    transient = (4 * shape.hidden + 3 * a * shape.hidden) * tokens
    # the hidden states it reads (and their copy at the positions that carry loss), float32 per-token outputs, a tile
    lm_head = 2 * a * shape.hidden * tokens + 12 * tokens + \
        min(tokens, LM_HEAD_TILE[0]) * min(shape.vocab, LM_HEAD_TILE[1]) * (4 + a)
    if m.method == "qlora":
        transient += a * params.largest_linear  # one weight dequantized at a time
    if m.method == "full":
        transient += copies
    activations = kept + transient + lm_head
    assumptions.append(f"{m.batch} sequence(s) of {m.seq} tokens per step per GPU, {m.compute_dtype} activations, "
                       f"SDPA/flash attention, the loss computed in chunks of the logits")
    assumptions.append(f"{CUDA_CONTEXT / GIB:.1f} GiB of CUDA context and workspaces")
    peak = weights + gathered + states + gradients + max(activations, step_extra)
    parts = {"weights": weights + gathered, "gradients": gradients, "optimizer": states, "activations": activations,
             "cuda": CUDA_CONTEXT}
    return {"total": peak + CUDA_CONTEXT, "parts": parts, "assumptions": assumptions}


def gib(n: int | float) -> float:
    return round(n / GIB, 2)


def memory_inputs(cfg: TrainerConfig, shape: Shape, seq: int, gpus: int, lora_inputs: int = 0) -> MemoryInputs:
    """`gpus`: per node; the processes in all are nodes x GPUs (FSDP shards over all of them)."""
    t = cfg.training
    d = cfg.distribution
    processes = d.nodes * max(1, gpus)
    # `auto` is bfloat16 on a GPU (float16 on older GPUs: the same size); full fine-tuning stores float32 weights
    wd = "bfloat16" if cfg.model.dtype == "auto" else cfg.model.dtype
    compute = cfg.quantization.compute_dtype if cfg.method == "qlora" else wd
    return MemoryInputs(method=cfg.method, weight_dtype="float32" if cfg.method == "full" else wd,
                        compute_dtype=compute,
                        double_quant=bool(cfg.quantization and cfg.quantization.double_quant), optim=t.optim,
                        batch=t.per_device_train_batch_size, seq=seq, gradient_checkpointing=t.gradient_checkpointing,
                        gpus=processes, lora_dropout=cfg.lora.dropout if cfg.lora else 0.0, lora_inputs=lora_inputs,
                        shards=processes if d.strategy == "FSDP" else 1, cpu_offload=d.cpu_offload,
                        layers=shape.layers)


def alternatives(cfg: TrainerConfig, shape: Shape, params: Parameters, trainable_lora: int, m: MemoryInputs,
                 limit: int) -> list[str]:
    """Changes that would fit `limit` bytes, cheapest first."""
    from dataclasses import replace

    def fits(mm: MemoryInputs, trainable: int) -> bool:
        return estimate_memory(shape, params, trainable, mm)["total"] <= limit

    out = []
    if not m.gradient_checkpointing:
        mm = replace(m, gradient_checkpointing=True)
        if fits(mm, trainable_lora if m.method != "full" else params.total):
            out.append("training.gradientCheckpointing: true")
    batch = m.batch
    while batch > 1:
        batch //= 2
        mm = replace(m, batch=batch)
        if fits(mm, trainable_lora if m.method != "full" else params.total):
            ga = cfg.training.gradient_accumulation_steps * (m.batch // batch)
            out.append(f"training.perDeviceTrainBatchSize: {batch} with gradientAccumulationSteps: {ga} (the same "
                       f"effective batch)")
            break
    if m.method == "full":
        mm = replace(m, method="lora", weight_dtype=m.compute_dtype)
        if fits(mm, trainable_lora):
            out.append("method: lora")
    if m.method != "qlora":
        mm = replace(m, method="qlora", compute_dtype="bfloat16", double_quant=True)
        if fits(mm, trainable_lora):
            out.append("method: qlora")
    if m.shards == 1 and m.gpus > 1 and fits(replace(m, shards=m.gpus), trainable_lora if m.method != "full"
                                              else params.total):
        out.append(f"distribution.strategy: FSDP (shards the model over the run's {m.gpus} GPUs)")
    if not out:
        mm = replace(m, method="qlora", compute_dtype="bfloat16", double_quant=True, batch=1,
                     gradient_checkpointing=True)
        need = estimate_memory(shape, params, trainable_lora, mm)["total"]
        out.append(f"a GPU with at least {math.ceil(need / (1 - FIT_MARGIN) / GIB)} GiB (QLoRA, batch 1, gradient "
                   f"checkpointing needs about {gib(need):.1f} GiB), or more GPUs with distribution.strategy FSDP, "
                   f"which shards the model over them")
    return out


def halved_batch(batch: int, accumulation: int) -> tuple[int, int] | None:
    """training.autoBatchSize's next try after running out of memory: half the sequences per GPU and twice the
    gradient accumulation, the same effective batch (an odd batch rounds down, so it shrinks slightly); None at 1."""
    if batch <= 1:
        return None
    return batch // 2, accumulation * 2


def out_of_memory_message(step: int, batch: int, accumulation: int, plan_memory: dict[str, Any] | None,
                          gpu_memory: int | None, peak: int | None, reduced: int, auto: bool) -> str:
    """What a user needs when CUDA ran out of memory: the plan's estimate, the GPU's memory, the peak torch reached,
    and what would fit. `reduced`: how often training.autoBatchSize halved the batch before this."""
    facts = [(f"CUDA ran out of memory at step {step} with {batch} sequence(s) per GPU and "
              f"gradientAccumulationSteps {accumulation}")]
    if reduced:
        facts.append(f"after training.autoBatchSize halved the batch {reduced} time(s)")
    if plan_memory and plan_memory.get("perGpu") is not None:
        facts.append(f"the plan estimated {plan_memory['perGpu']} GiB per GPU")
    else:
        facts.append("no plan was made (spec.validation off)")
    if gpu_memory:
        facts.append(f"the GPU has {gib(gpu_memory)} GiB")
    if peak:
        facts.append(f"torch had allocated up to {gib(peak)} GiB")
    smaller = halved_batch(batch, accumulation)
    fit = list((plan_memory or {}).get("wouldFit") or [])
    if not fit and smaller:
        fit.append(f"training.perDeviceTrainBatchSize: {smaller[0]} with gradientAccumulationSteps: {smaller[1]} "
                   f"(the same effective batch)")
    if smaller and not auto:
        fit.append("training.autoBatchSize: true, which halves the batch on running out of memory")
    if not smaller:
        fit.append("a lower training.maxLength, training.gradientCheckpointing: true, method qlora, or more or "
                   "larger GPUs (distribution.strategy FSDP shards the model)")
    return "; ".join(facts) + ". What would fit: " + "; or ".join(fit)
