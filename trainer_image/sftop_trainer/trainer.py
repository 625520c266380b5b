"""The run's SFTTrainer: it counts samples longer than maxLength before truncating or dropping them, computes the
loss on a CPU from the model's own logits, and scores held-out answers at each evaluation. Its `preparer` prepares
datasets exactly as it would, without a model (`sftop_trainer.prepare`)."""

from __future__ import annotations

import logging
from typing import Any

from sftop_trainer.errors import DataError

log = logging.getLogger(__name__)


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
            # Under FSDP every forward gathers the shards from all processes: one process generating alone would
            # wait for the others forever. Held-out answers are left out there (the eval loss still runs).
            if record is not None and record.answers and self.is_world_process_zero() and not self.is_fsdp_enabled:
                with self.answer_context():
                    scores = record.answers.run(self.accelerator.unwrap_model(self.model), self.state.global_step)
                for key, name in (("exactMatch", "exact_match"), ("validJson", "valid_json")):
                    if key in scores:
                        output.metrics[f"{metric_key_prefix}_{name}"] = scores[key]
            return output

        def answer_context(self):
            """Generation in the dtype training computes in: the Trainer's mixed precision (bf16, or fp16 on GPUs
            without bf16) on any device, so answers come from the model as it is served, not from float32 master
            weights (full fine-tuning) at twice the cost."""
            import contextlib

            import torch

            if self.args.bf16 or self.args.fp16:
                return torch.autocast(self.args.device.type, dtype=torch.bfloat16 if self.args.bf16 else torch.float16)
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
