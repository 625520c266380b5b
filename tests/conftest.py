"""Shared fixtures: a tiny model and the Task API data, built locally (nothing is downloaded)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight Llama (~100k parameters) with a BPE tokenizer and a chat template that marks assistant
    turns with {% generation %}."""
    from sftop_trainer.tiny import build_tiny_model, corpus, task_api_rows

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), corpus(task_api_rows(400, seed=1)))


@pytest.fixture(scope="session")
def tiny_model_without_template(tmp_path_factory) -> Path:
    from sftop_trainer.tiny import build_tiny_model, corpus, task_api_rows

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model-plain"), corpus(task_api_rows(400, seed=1)),
                            chat_template=None)
