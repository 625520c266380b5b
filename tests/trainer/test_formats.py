"""Every data format and file type trains and gives an adapter that PEFT loads and generates with."""

import json

import pytest

from sftop_trainer import taskapi


def write(rows, path):
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


CASES = [  # (format, where the rows come from, declare the format or let it be detected)
    ("messages", "jsonl", False),
    ("sharegpt", "json", False),
    ("prompt-completion", "parquet", True),
    ("instruction", "csv", False),
    ("text", "inline", True),
]


@pytest.mark.parametrize("fmt,source,declared", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_format_trains_and_adapter_generates(fmt, source, declared, train_config, train, tmp_path, tiny_model):
    rows = taskapi.rows(48, fmt=fmt)
    dataset = {"rows": rows} if source == "inline" else {"path": str(write(rows, tmp_path / f"data.{source}"))}
    if declared:
        dataset["format"] = fmt
    run = train(train_config(dataset=dataset, training={"maxSteps": 12}))
    assert run.code == 0, run.message
    result = run.result
    assert result["data"]["format"] == fmt and result["data"]["rowsTrain"] == 48
    assert result["finalLoss"] < result["firstLoss"], "loss did not fall"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = run.out / "adapter"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {p.name for p in adapter.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(adapter)  # the adapter carries its tokenizer and chat template
    assert tokenizer.chat_template
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter)
    enc = tokenizer.apply_chat_template([{"role": "user", "content": "Remind me to water the plants"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
