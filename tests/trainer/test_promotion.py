"""What the trainer gives a promotion gate (spec.promotion): serving parity measured in a fresh process, the
evaluation's fingerprint, and the switch of the stable path that a serving process may read at any moment."""

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

from sftop_trainer import promote, taskapi
from sftop_trainer.__main__ import main


def gated(train_config, tmp_path, **over):
    evaluation = tmp_path / "data" / "eval.jsonl"
    if not evaluation.exists():
        taskapi.write_jsonl(taskapi.rows(12, seed=7, part="test"), evaluation)
    return train_config(dataset={"path": str(tmp_path / "data" / "train.jsonl"),
                                 "evalPath": str(evaluation)},
                        evaluation={"prompts": 6, "maxNewTokens": 24, "parity": True}, **over)


def test_the_adapter_folder_served_alone_answers_as_the_trainer_did(train_config, train, tmp_path):
    taskapi.write_jsonl(taskapi.rows(64, part="train"), tmp_path / "data" / "train.jsonl")
    run = train(gated(train_config, tmp_path))
    assert run.code == 0, run.message
    evaluation = run.result["evaluation"]
    assert evaluation["parity"] == {"prompts": 6, "differing": 0}
    assert len(evaluation["fingerprint"]) == 64
    # the operator reads both from the termination message
    assert run.message["evaluation"]["parity"] == evaluation["parity"]
    assert run.message["evaluation"]["fingerprint"] == evaluation["fingerprint"]

    # The same folder with its adapter saved wrongly (the B matrices zero: the base model's answers): the served
    # answers differ from the trainer's, and parity names the first difference.
    from safetensors.torch import load_file, save_file

    from sftop_trainer import parity
    from sftop_trainer.evaluate import HeldOut, held_out

    adapter = run.out / "adapter"
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    weights = load_file(broken / "adapter_model.safetensors")
    save_file({k: v * 0 if "lora_B" in k else v for k, v in weights.items()}, broken / "adapter_model.safetensors")
    rows = [json.loads(line) for line in (tmp_path / "data" / "eval.jsonl").read_text().splitlines()]
    items = held_out(rows, 6)
    trainer = parity.served_answers(adapter, items, 24, "float32", shown=3)  # equal to the trainer's, as shown above
    assert trainer[0] == evaluation["samples"][0]["answer"]
    wrong = parity.check(broken, items, trainer, 24, "float32", shown=3)
    assert wrong["differing"] == 6
    assert wrong["firstDifference"]["trainer"] == trainer[0] and wrong["firstDifference"]["served"] != trainer[0]
    missing = parity.check(tmp_path / "nowhere", [HeldOut("x", "y")], ["y"], 4, "float32")
    assert missing["differing"] == 1 and "could not be loaded" in missing["error"]


def test_the_fingerprint_changes_with_the_held_out_data_and_how_it_is_answered():
    from sftop_trainer.evaluate import fingerprint

    rows = taskapi.rows(8, seed=3)
    same = fingerprint(rows, 8, None)
    assert same == fingerprint([dict(r) for r in rows], 8, None)
    assert same != fingerprint(rows[:-1], 8, None)
    assert same != fingerprint(rows, 4, None) != fingerprint(rows, 8, 64)


def adapter(root: Path, run: str, marker: str) -> None:
    folder = root / run / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"marker": marker}))
    (folder / "adapter_model.safetensors").write_text(marker * 4096)


def reader(root: str, stop, seen, errors) -> None:
    """A serving process that loads the promoted adapter over and over, as a server would on each reload: it
    resolves the link once, then reads the config and the weights."""
    while not stop.is_set():
        try:
            folder = os.path.realpath(os.path.join(root, "promoted"))
            config = json.loads(Path(folder, "adapter_config.json").read_text())["marker"]
            weights = Path(folder, "adapter_model.safetensors").read_text()
            if weights != config * 4096:
                errors.append(f"mixed: config {config}, weights {weights[:1]}")
            seen.append(config)
        except Exception as e:  # a moment without a whole adapter
            errors.append(f"{type(e).__name__}: {e}")


def test_the_switch_is_atomic_under_a_reader_that_loads_continuously(tmp_path):
    root = tmp_path / "ns" / "chat"
    adapter(root, "aaaaaaa1", "a")
    adapter(root, "bbbbbbb2", "b")
    assert promote.promote(root, "aaaaaaa1") == {"promoted": "aaaaaaa1", "replaced": None}
    manager = multiprocessing.Manager()
    stop, seen, errors = manager.Event(), manager.list(), manager.list()
    proc = multiprocessing.Process(target=reader, args=(str(root), stop, seen, errors))
    proc.start()
    try:
        deadline = time.monotonic() + 3
        switches = 0
        while time.monotonic() < deadline:
            for run in ("bbbbbbb2", "aaaaaaa1"):
                promote.promote(root, run)
                switches += 1
    finally:
        stop.set()
        proc.join(10)
    assert switches > 100 and list(errors) == []
    assert {"a", "b"} <= set(seen), "the reader saw both adapters, whole"
    # the previous run stays where it was, and nothing else is left beside the link
    assert sorted(p.name for p in root.iterdir()) == ["aaaaaaa1", "bbbbbbb2", "promoted"]
    assert os.readlink(root / "promoted") == "aaaaaaa1/adapter"  # relative: it resolves wherever the claim is mounted


def test_a_switch_refuses_an_unfinished_run_and_never_replaces_a_real_folder(tmp_path, monkeypatch):
    root = tmp_path / "chat"
    adapter(root, "aaaaaaa1", "a")
    (root / "cccccccc" / "adapter").mkdir(parents=True)
    (root / "cccccccc" / "adapter" / "adapter_config.json").write_text("{}")  # no weights yet
    term = tmp_path / "term"
    monkeypatch.setenv("SFTOP_TERMINATION_LOG", str(term))
    assert main(["--promote", str(root), "--run", "cccccccc"]) == 64
    message = json.loads(term.read_text())
    assert message["reason"] == "PromotionFailed" and "not a whole adapter" in message["message"]
    assert not (root / "promoted").exists()
    assert main(["--promote", str(root), "--run", "aaaaaaa1"]) == 0
    assert json.loads(term.read_text()) == {"status": "Succeeded", "promoted": "aaaaaaa1"}
    (root / "promoted").unlink()
    (root / "promoted").mkdir()  # someone's own folder at the stable path
    assert main(["--promote", str(root), "--run", "aaaaaaa1"]) == 64
    assert "never deleted" in json.loads(term.read_text())["message"] and (root / "promoted").is_dir()
