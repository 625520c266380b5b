"""LoRA, QLoRA and full fine-tuning each train on the CPU and leave something a serving stack can load."""

import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

PROMPT = [{"role": "user", "content": "Add a task to pay the electricity bill tomorrow"}]


def encode(tokenizer):
    return tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)


def test_qlora_trains_on_cpu_and_adapter_loads_on_a_4bit_base(train_config, train, tiny_model):
    run = train(train_config(method="qlora", quantization={"computeDtype": "float32"},
                             training={"maxSteps": 12}))
    assert run.code == 0, run.message
    result = run.result
    assert result["method"] == "qlora" and result["finalLoss"] < result["firstLoss"]
    assert 0 < result["trainableParameters"] < result["totalParameters"]
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=q, device_map="cpu")
    model = PeftModel.from_pretrained(base, run.out / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(run.out / "adapter")
    with torch.no_grad():
        out = model.generate(**encode(tokenizer), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > encode(tokenizer)["input_ids"].shape[1]


def test_full_fine_tuning_trains_every_weight_and_saves_the_model(train_config, train, tiny_model):
    run = train(train_config(method="full", training={"maxSteps": 10, "learningRate": 1e-3}))
    assert run.code == 0, run.message
    result = run.result
    assert result["adapterPath"] == "model" and result["trainableParameters"] == result["totalParameters"]
    assert result["finalLoss"] < result["firstLoss"]
    tuned = AutoModelForCausalLM.from_pretrained(run.out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    changed = [n for (n, p), (_, q) in zip(tuned.named_parameters(), base.named_parameters()) if not torch.equal(p, q)]
    assert len(changed) == len(list(base.parameters())), "full fine-tuning left weights untouched"
    made = json.loads((run.out / "model" / "provenance.json").read_text())
    assert made["method"] == "full" and made["metrics"]["steps"] == 10 and made["baseModel"]["path"] == str(tiny_model)


def test_full_fine_tuning_trains_float32_master_weights_and_delivers_the_compute_dtype(train_config, train):
    """bfloat16 compute: the weights train in float32 (small AdamW updates are not lost), checkpoints keep them so a
    resumed run continues exactly, and the delivered model is bfloat16, as servers load it."""
    from safetensors import safe_open

    run = train(train_config(method="full", model={"dtype": "bfloat16"},
                             training={"maxSteps": 4, "saveSteps": 4, "learningRate": 1e-3}))
    assert run.code == 0, run.message

    def dtypes(folder):
        with safe_open(str(next(folder.glob("*.safetensors"))), "pt") as f:
            return {f.get_tensor(k).dtype for k in f.keys()}

    assert dtypes(run.out / "model") == {torch.bfloat16}
    assert dtypes(run.out / "checkpoints" / "checkpoint-4") == {torch.float32}
    assert json.loads((run.out / "model" / "config.json").read_text())["dtype"] == "bfloat16"


def test_merge_adapter_writes_a_model_that_equals_base_plus_adapter(train_config, train, tiny_model):
    run = train(train_config(output={"mergeAdapter": True}, training={"maxSteps": 6}))
    assert run.code == 0, run.message
    assert run.result["mergedPath"] == "merged"
    tokenizer = AutoTokenizer.from_pretrained(run.out / "merged")
    merged = AutoModelForCausalLM.from_pretrained(run.out / "merged")
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run.out / "adapter")
    enc = encode(tokenizer)
    with torch.no_grad():
        assert torch.allclose(merged(**enc).logits, adapted(**enc).logits, atol=1e-4)
