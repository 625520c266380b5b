import copy
import json
from pathlib import Path

import pytest

from sftop_trainer.__main__ import main
from sftop_trainer import taskapi


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class Run:
    def __init__(self, code: int, out: Path, message: dict):
        self.code, self.out, self.message = code, out, message

    @property
    def result(self) -> dict:
        return json.loads((self.out / "result.json").read_text())


@pytest.fixture
def train_config(tiny_model, tmp_path):
    """Write a trainer config for the tiny model and the Task API data (as jsonl), with overrides."""

    def make(**over) -> Path:
        data = tmp_path / "data" / "train.jsonl"
        if not data.exists():
            taskapi.write_jsonl(taskapi.rows(64), data)
        base = {"model": {"name": str(tiny_model)}, "dataset": {"path": str(data)}, "method": "lora",
                "training": {"maxSteps": 8, "learningRate": 3e-3, "loggingSteps": 2, "saveSteps": 4,
                             "perDeviceTrainBatchSize": 4},
                "output": {"dir": str(tmp_path / "out")}, "progress": {"port": 0}}
        if "dataset" in over:  # a dataset replaces the default one: it has exactly one source
            base["dataset"] = over.pop("dataset")
        path = tmp_path / "config.json"
        path.write_text(json.dumps(merge(base, over)))
        return path

    return make


@pytest.fixture
def train(tmp_path, monkeypatch):
    """Run `sftop-train --config PATH` in this process; returns the exit code, output folder and termination
    message."""
    term = tmp_path / "termination-log"
    monkeypatch.setenv("SFTOP_TERMINATION_LOG", str(term))

    def go(config: Path) -> Run:
        code = main(["--config", str(config), "--no-progress-bar"])
        try:
            cfg = json.loads(config.read_text())
        except json.JSONDecodeError:
            cfg = {}
        message = json.loads(term.read_text()) if term.exists() else {}
        return Run(code, Path(cfg.get("output", {}).get("dir", tmp_path / "out")), message)

    return go
