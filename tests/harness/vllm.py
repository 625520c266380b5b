"""What vLLM's LoRA loader requires of an adapter folder, rule by rule (vLLM has no CPU wheel that installs here).

From vllm/lora/peft_helper.py (PEFTHelper.from_local_dir, _validate_features, validate_legal), vllm/config/lora.py
(MaxLoRARanks) and vllm/lora/models.py (LoRAModel.from_local_checkpoint, with utils.parse_fine_tuned_lora_name):

- adapter_config.json must exist and hold the required PEFTHelper fields r, lora_alpha and target_modules;
- no modules_to_save, no DoRA ("vLLM only supports modules_to_save being None", "vLLM does not yet support DoRA");
- the rank (the largest of r and rank_pattern) must not exceed --max-lora-rank, itself one of 1, 8, 16, 32, 64, 128,
  256, 320, 512 (16 by default);
- bias must be "none" ("Adapter bias is not supported");
- the weights are adapter_model.safetensors (or adapter_model.bin); every tensor is
  `base_model.model.<module>.lora_A.weight` or `.lora_B.weight`, and each module's last name must be one the model
  supports for LoRA (its packed modules expanded: qkv_proj -> q_proj, k_proj, v_proj; gate_up_proj -> gate_proj,
  up_proj), else "While loading ..., expected target modules in ... but received ...".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# LlamaForCausalLM's supported LoRA modules (packed_modules_mapping expanded, plus o_proj and down_proj).
LLAMA_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TENSOR = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


class LoRALoadError(ValueError):
    """What vLLM would say when it refuses the adapter."""


def check_adapter(folder: Path, max_lora_rank: int = 16, supported: tuple[str, ...] = LLAMA_LORA_MODULES) -> dict:
    """Load-time checks of `vllm serve --enable-lora --max-lora-rank N --lora-modules name=folder`. Returns the
    adapter config; raises LoRALoadError with vLLM's reason."""
    folder = Path(folder)
    if max_lora_rank not in MAX_LORA_RANKS:
        raise LoRALoadError(f"--max-lora-rank {max_lora_rank} is not one of {MAX_LORA_RANKS}")
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise LoRALoadError(f"No adapter found for {folder}")
    config = json.loads(path.read_text())
    missing = {"r", "lora_alpha", "target_modules"} - set(config)
    if missing:
        raise LoRALoadError(f"Missing required configuration fields: {missing}")
    errors = []
    if config.get("modules_to_save"):
        errors.append("vLLM only supports modules_to_save being None.")
    if config.get("use_dora"):
        errors.append("vLLM does not yet support DoRA.")
    rank = max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])
    if rank > max_lora_rank:
        errors.append(f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.")
    if config.get("bias", "none") != "none":
        errors.append("Adapter bias is not supported.")
    if errors:
        raise LoRALoadError(" ".join(errors))
    names = _tensor_names(folder)
    unexpected = set()
    for name in names:
        match = TENSOR.match(name)
        if match is None:
            raise LoRALoadError(f"{name} is unsupported LoRA weight")
        if match["module"].rsplit(".", 1)[-1] not in supported:
            unexpected.add(match["module"])
    if unexpected:
        raise LoRALoadError(f"While loading {folder}, expected target modules in {list(supported)} but received "
                            f"{sorted(unexpected)}. Please verify that the loaded LoRA module is correct")
    return config


def _tensor_names(folder: Path) -> list[str]:
    if (folder / "adapter_model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
            return list(f.keys())
    if (folder / "adapter_model.bin").is_file():
        import torch

        return list(torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True))
    raise LoRALoadError(f"{folder} doesn't contain tensors")
