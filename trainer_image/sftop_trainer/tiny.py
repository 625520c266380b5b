"""A tiny causal LM made locally, for fast tests: nothing is downloaded.

The tokenizer is a byte-level BPE trained on the given texts (the Task API data, `sftop_trainer.taskapi`), with a
ChatML-like chat template whose assistant turns sit inside `{% generation %}`. The model is a Llama with random
weights, small enough to train on a laptop CPU in seconds. The demo and the quality benchmark use a real
pretrained model instead (`sftop_trainer.packaged`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}{{- '\n' -}}"
    "{%- else -%}{{- message['content'] + '<|im_end|>' + '\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

# ----------------------------------------------------------------------------------- the tiny model


def corpus(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        for value in r.values():
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, list):
                out += [m.get("content") or m.get("value") or "" for m in value]
    return out


def build_tiny_model(out_dir: Path, texts: list[str], *, vocab_size: int = 1024, hidden: int = 64, layers: int = 2,
                     chat_template: str | None = CHAT_TEMPLATE, seed: int = 0) -> Path:
    """Save a random-weight Llama and a BPE tokenizer trained on `texts` to `out_dir` (save_pretrained layout)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|pad|>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>", "<|endoftext|>"])
    if chat_template:
        tokenizer.chat_template = chat_template
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
