"""A tiny causal LM and a Task API dataset, made locally: the built-in demo and the tests train on them.

Nothing is downloaded. The tokenizer is a byte-level BPE trained on the dataset's own text, with a ChatML-like
chat template whose assistant turns sit inside `{% generation %}` so assistant-only loss works. The model is a
Llama with random weights, small enough to train on a laptop CPU in seconds.
"""

from __future__ import annotations

import json
import random
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

# ------------------------------------------------------------------------------- the Task API dataset

_TITLES = ["renew the TLS certificate", "water the plants", "book a dentist appointment", "pay the electricity bill",
           "review the pull request", "call the plumber", "back up the laptop", "prepare the quarterly report",
           "buy coffee beans", "update the on-call rota", "clean the garage", "reply to the landlord",
           "rotate the database password", "plan the team offsite", "fix the flaky test", "order new badges"]
_DUE = ["today", "tomorrow", "monday", "friday", "next week", None]
_PRIORITY_WORDS = {"high": ["urgently", "asap", "it's urgent"], "low": ["whenever", "no rush", "low priority"],
                   "normal": [""]}
_REQUESTS = {
    "create": ["Remind me to {t}{due}{prio}", "Add a task to {t}{due}{prio}", "I need to {t}{due}{prio}",
               "Create a task: {t}{due}{prio}"],
    "complete": ["I finished: {t}", "Mark '{t}' as done", "Done with {t}"],
    "delete": ["Remove the task to {t}", "Delete '{t}' from my list", "Never mind about {t}"],
}


def task_api_example(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A natural-language task request and the Task API call it means."""
    action = rng.choices(["create", "complete", "delete"], weights=[3, 1, 1])[0]
    title = rng.choice(_TITLES)
    template = rng.choice(_REQUESTS[action])
    if action != "create":
        return template.format(t=title), {"action": action, "title": title}
    due, priority = rng.choice(_DUE), rng.choice(["high", "normal", "low"])
    word = rng.choice(_PRIORITY_WORDS[priority])
    request = template.format(t=title, due=f" {due}" if due else "", prio=f", {word}" if word else "")
    return request, {"action": "create", "title": title, "due": due, "priority": priority}


def task_api_rows(n: int, seed: int = 0, fmt: str = "messages") -> list[dict[str, Any]]:
    """n rows of the Task API dataset in one of the formats the trainer reads."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        request, call = task_api_example(rng)
        answer = json.dumps(call)
        if fmt == "messages":
            rows.append({"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]})
        elif fmt == "sharegpt":
            rows.append({"conversations": [{"from": "human", "value": request}, {"from": "gpt", "value": answer}]})
        elif fmt == "prompt-completion":
            rows.append({"prompt": f"Request: {request}\nCall: ", "completion": answer})
        elif fmt == "instruction":
            rows.append({"instruction": "Turn the request into a Task API call.", "input": request, "output": answer})
        elif fmt == "text":
            rows.append({"text": f"Request: {request}\nCall: {answer}"})
        else:
            raise ValueError(f"unknown format {fmt}")
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
