"""Exactly the tokens the user means carry loss: assistant turns of chats, completions of prompt-completion."""

from sftop_trainer.config import TrainerConfig
from sftop_trainer.progress import Progress
from sftop_trainer.train import build_trainer

CHAT = [
    {"role": "system", "content": "You turn requests into Task API calls."},
    {"role": "user", "content": "Remind me to water the plants"},
    {"role": "assistant", "content": '{"action": "create", "title": "water the plants"}'},
    {"role": "user", "content": "Done with water the plants"},
    {"role": "assistant", "content": '{"action": "complete", "title": "water the plants"}'},
]


def prepared(tiny_model, tmp_path, rows, **training):
    cfg = TrainerConfig.model_validate({
        "model": {"name": str(tiny_model)}, "dataset": {"rows": rows},
        "training": {"maxSteps": 1, **training}, "output": {"dir": str(tmp_path / "out")}, "progress": {"port": 0}})
    trainer, tokenizer, _ = build_trainer(cfg, Progress())
    row = trainer.train_dataset[0]
    return tokenizer, row["input_ids"], row["labels"]


def with_loss(tokenizer, ids, labels):
    return tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])


def test_assistant_only_loss_covers_exactly_the_assistant_turns(tiny_model, tmp_path):
    tokenizer, ids, labels = prepared(tiny_model, tmp_path, [{"messages": CHAT}])
    expected = "".join(m["content"] + "<|im_end|>" for m in CHAT if m["role"] == "assistant")
    assert with_loss(tokenizer, ids, labels) == expected
    # and the labels that carry loss are the input ids themselves (no shift, no substitution)
    assert all(label in (-100, i) for i, label in zip(ids, labels))


def test_assistant_only_loss_off_trains_on_every_token(tiny_model, tmp_path):
    tokenizer, ids, labels = prepared(tiny_model, tmp_path, [{"messages": CHAT}], assistantOnlyLoss=False)
    assert labels == ids


def test_completion_only_loss_covers_exactly_the_completion(tiny_model, tmp_path):
    row = {"prompt": "Request: water the plants\nCall: ", "completion": '{"action": "create"}'}
    tokenizer, ids, labels = prepared(tiny_model, tmp_path, [row])
    assert with_loss(tokenizer, ids, labels) == row["completion"] + tokenizer.eos_token
    assert tokenizer.decode(ids).startswith(row["prompt"])


def test_instruction_rows_become_chat_prompt_and_completion(tiny_model, tmp_path):
    row = {"instruction": "Turn the request into a Task API call.", "input": "water the plants",
           "output": '{"action": "create"}'}
    tokenizer, ids, labels = prepared(tiny_model, tmp_path, [row])
    assert with_loss(tokenizer, ids, labels) == row["output"] + "<|im_end|>"
    assert "<|im_start|>user\nTurn the request into a Task API call.\n\nwater the plants" in tokenizer.decode(ids)
