"""Parameter counts of a 4-bit base: bitsandbytes packs two 4-bit weights per byte and stores the bytes in
bnb_4bit_quant_storage's dtype, so each stored element stands for 2 × its size in bytes weights. A real 4-bit load
of the tiny model on the CPU counts exactly what the unquantized model has."""

import pytest
from sftop_trainer import model as model_mod
from sftop_trainer.config import TrainerConfig


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_a_4bit_model_counts_the_parameters_of_the_unquantized_one(tiny_model, compute_dtype):
    from transformers import AutoModelForCausalLM

    cfg = TrainerConfig.model_validate({
        "model": {"name": str(tiny_model)}, "dataset": {"rows": [{"text": "x"}]}, "method": "qlora",
        "quantization": {"computeDtype": compute_dtype}, "output": {"dir": "/nowhere"}})
    quantized = model_mod.load_model(cfg, gradient_checkpointing=False)  # no forward pass: see RECIPES' CPU trap
    packed = [p for p in quantized.parameters() if type(p).__name__ == "Params4bit"]
    assert packed, "nothing was quantized"
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    assert model_mod.count_parameters(quantized)[1] == sum(p.numel() for p in plain.parameters())
