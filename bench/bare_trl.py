"""The baseline for trainer_overhead.py: the same tiny LoRA run written as a plain TRL script.

    python bench/bare_trl.py MODEL_DIR DATA_JSONL OUTPUT_DIR MAX_STEPS

It prints one JSON line with the time the first optimizer step ended and the training runtime.
"""

import json
import sys
import time

from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer


class FirstStep(TrainerCallback):
    at = None

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 1:
            FirstStep.at = time.time()


def main(model_dir, data, out, steps):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = SFTConfig(output_dir=out, max_steps=steps, learning_rate=2e-3, per_device_train_batch_size=8,
                     gradient_accumulation_steps=1, max_length=1024, warmup_steps=0.03, lr_scheduler_type="linear",
                     weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", seed=42, data_seed=42,
                     activation_checkpointing=True, logging_steps=10, logging_first_step=True,
                     save_strategy="steps", save_steps=1000, save_total_limit=2, report_to="none", use_cpu=True,
                     bf16=False, fp16=False, assistant_only_loss=True, disable_tqdm=True,
                     include_num_input_tokens_seen="non_padding", logging_nan_inf_filter=False)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                         train_dataset=load_dataset("json", data_files=data, split="train"),
                         processing_class=tokenizer, callbacks=[FirstStep()],
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                bias="none", task_type="CAUSAL_LM"))
    output = trainer.train()
    trainer.save_model(out + "/adapter")
    print(json.dumps({"firstStepAt": FirstStep.at, "trainRuntime": output.metrics["train_runtime"],
                      "steps": trainer.state.global_step}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
