"""What makes an adapter usable away from the run that made it: its provenance, a model card, an adapter_config.json
that names its base the way serving stacks do, and how to serve it.

    adapter/provenance.json   base model (Hub id and revision, or the claim path), the data (sha256, row counts),
                              the full trainer config, metrics, library versions, start and end, the SFTJob and run
    adapter/README.md         a model card for this run
    adapter/adapter_config.json
                              `base_model_name_or_path` is the base's Hub id (never the pod's /mnt/pvc path) and
                              `target_modules` the short module names (q_proj, ...), as PEFT and vLLM read them
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from sftop_trainer.config import TrainerConfig
from sftop_trainer.errors import ConfigError

log = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"
PROVENANCE_VERSION = "provenance.sftop.dev/v1"
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts
VLLM_DEFAULT_MAX_LORA_RANK = 16


def base_model_id(cfg: TrainerConfig) -> str:
    """How the adapter names its base: the Hub id (of the model, or of the model a local folder copies), else the
    folder as it is named outside the pod (`pvc://claim/path`), else the folder."""
    from sftop_trainer.model import is_local_path

    if cfg.model.hub_id:
        return cfg.model.hub_id
    if not is_local_path(cfg.model.name):
        return cfg.model.name
    return cfg.model.origin or cfg.model.name


def vllm_max_lora_rank(r: int) -> int | None:
    """The smallest `--max-lora-rank` vLLM accepts that serves rank r; None above vLLM's largest."""
    return next((m for m in VLLM_MAX_LORA_RANKS if m >= r), None)


def adapted_modules(adapter_dir: Path) -> list[str]:
    """The short names (q_proj, ...) of the modules the adapter's weights adapt, read from the safetensors header."""
    from safetensors import safe_open

    names = set()
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            match = re.search(r"\.([^.]+)\.lora_[AB]\.", key)
            if match:
                names.add(match.group(1))
    return sorted(names)


def make_portable(adapter_dir: Path, cfg: TrainerConfig) -> dict[str, Any]:
    """Rewrite adapter_config.json so it names the base by Hub id and its targets by short module name. Short names
    are written only when they select exactly the modules the weights adapt (a target list of full paths that picks
    some layers keeps its own form). Returns the config written."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model_id(cfg)
    short = adapted_modules(adapter_dir)
    targets = config.get("target_modules")
    listed = sorted(targets) if isinstance(targets, (list, set, tuple)) else None
    if listed is not None and all("." not in t for t in listed):
        config["target_modules"] = short or listed
    elif listed is not None and _selects_all(adapter_dir, short, cfg):
        config["target_modules"] = short
    if (cfg.model.resolved_revision or cfg.model.revision) is None:
        config.pop("revision", None)
    else:
        config["revision"] = cfg.model.resolved_revision or cfg.model.revision
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def _selects_all(adapter_dir: Path, short: list[str], cfg: TrainerConfig) -> bool:
    """Whether each short name is adapted in every layer the base has (so the short names mean the same modules)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        from sftop_trainer.model import _from_pretrained_kwargs

        layers = AutoConfig.from_pretrained(cfg.model.name, **_from_pretrained_kwargs(cfg))
        layers = getattr(layers.get_text_config(), "num_hidden_layers", None)
    except Exception:  # the check is a nicety: without the config, keep the targets as they are
        return False
    counts: dict[str, int] = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            match = re.search(r"\.([^.]+)\.lora_A\.", key)
            if match:
                counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return bool(layers) and all(counts.get(name) == layers for name in short)


def serving(adapter_config: dict[str, Any], cfg: TrainerConfig) -> dict[str, Any]:
    """What a serving stack needs to load the adapter: its base, rank and targets, and vLLM's smallest
    --max-lora-rank for it."""
    r = int(adapter_config.get("r") or 0)
    out: dict[str, Any] = {"baseModel": base_model_id(cfg), "loraRank": r,
                           "loraAlpha": adapter_config.get("lora_alpha"),
                           "targetModules": sorted(adapter_config.get("target_modules") or [])
                           if not isinstance(adapter_config.get("target_modules"), str)
                           else adapter_config["target_modules"]}
    if cfg.model.resolved_revision or cfg.model.revision:
        out["baseModelRevision"] = cfg.model.resolved_revision or cfg.model.revision
    rank = vllm_max_lora_rank(r)
    if rank is not None:
        out["vllmMaxLoraRank"] = rank
    return out


def provenance(cfg: TrainerConfig, result: dict[str, Any], started: float, ended: float) -> dict[str, Any]:
    """provenance.json: what made this adapter."""
    from datetime import datetime, timezone

    from sftop_trainer.model import is_local_path

    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    data = dict(result.get("data") or {})
    files = {p: file_sha256(p) for p in (cfg.dataset.path, cfg.dataset.eval_path) if p and Path(p).is_file()}
    if files:
        data["files"] = files
    model: dict[str, Any] = {"id": base_model_id(cfg),
                             "revision": cfg.model.resolved_revision or cfg.model.revision}
    if is_local_path(cfg.model.name):
        model["path"] = cfg.model.origin or cfg.model.name
    return {
        "apiVersion": PROVENANCE_VERSION,
        "sftjob": {"namespace": cfg.run.namespace, "name": cfg.run.sftjob} if cfg.run.sftjob else None,
        "runId": cfg.run.id,
        "baseModel": model,
        "method": cfg.method,
        "data": {k: data.get(k) for k in ("source", "format", "sha256", "rowsRead", "rowsTrain", "rowsEval",
                                          "skipped", "overlong", "loss", "files") if data.get(k) is not None},
        "warmStart": cfg.warm_start.name if cfg.warm_start else None,
        "config": cfg.dump(exclude={"progress", "tracking"}),  # a trainer config holds no secret: tokens are env vars
        "metrics": {k: result.get(k) for k in ("steps", "epochs", "trainLoss", "firstLoss", "finalLoss", "evalLoss",
                                               "trainedTokens", "trainRuntimeSeconds", "resultStep", "stopReason")
                    if result.get(k) is not None},
        "evaluation": {k: v for k, v in (result.get("evaluation") or {}).items() if k in ("prompts", "before",
                                                                                          "after")} or None,
        "versions": result.get("versions"),
        "configSha256": result.get("configSha256"),
        "startTime": stamp(started),
        "endTime": stamp(ended),
    }


def file_sha256(path: str) -> str:
    """sha256 of a data file's bytes (what `sha256sum` prints); data.sha256 is over the rows as trained."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_card(cfg: TrainerConfig, result: dict[str, Any], serve: dict[str, Any]) -> str:
    """README.md for the adapter folder: this run, not a template."""
    base = serve["baseModel"]
    data = result.get("data") or {}
    ev = (result.get("evaluation") or {})
    lines = [
        "---",
        f"base_model: {base}" if "/" in base and "://" not in base else f"# base model: {base}",
        "library_name: peft",
        "pipeline_tag: text-generation",
        "tags: [sftop, lora, sft, trl]",
        "---",
        "",
        f"# {cfg.run.sftjob or 'sftop run'}{f' (run {cfg.run.id})' if cfg.run.id else ''}",
        "",
        f"A {cfg.method.upper()} adapter of rank {serve['loraRank']} for `{base}`"
        + (f" at revision `{cfg.model.resolved_revision or cfg.model.revision}`"
           if cfg.model.resolved_revision or cfg.model.revision else "")
        + f", trained with TRL's SFTTrainer by sftop{f' for SFTJob {cfg.run.namespace}/{cfg.run.sftjob}' if cfg.run.sftjob else ''}.",
        "",
        "## Training",
        "",
        f"- Data: {data.get('rowsTrain', '?')} training rows, {data.get('rowsEval', 0)} held out "
        f"({data.get('format', '?')}; sha256 `{str(data.get('sha256', ''))[:16]}…`). Loss on: {data.get('loss') or '?'}.",
        f"- Steps: {result.get('steps')} ({result.get('epochs')} epochs), learning rate {result.get('learningRate')}, "
        f"target modules {', '.join(serve['targetModules']) if isinstance(serve['targetModules'], list) else serve['targetModules']}.",
        f"- Train loss: {_num(result.get('firstLoss'))} first, {_num(result.get('finalLoss'))} last, "
        f"{_num(result.get('trainLoss'))} mean.",
    ]
    if result.get("stopReason"):
        lines.append(f"- Stopped early: {result['stopReason']}.")
    if result.get("resultStep") is not None and result.get("resultStep") != result.get("steps"):
        lines.append(f"- These weights are the checkpoint of step {result['resultStep']} (lowest eval loss).")
    if cfg.warm_start:
        lines.append(f"- Continued from the adapter at {cfg.warm_start.name}.")
    if ev.get("after"):
        before, after = ev.get("before") or {}, ev["after"]
        lines += ["", "## Evaluation", "", f"On {ev.get('prompts', 0)} held-out prompts:", "",
                  "| | eval loss | exact match | valid JSON |", "|---|---|---|---|"]
        for name, scores in (("before training", before), ("after training", after)):
            if scores:
                lines.append(f"| {name} | {_num(scores.get('evalLoss'))} | {_pct(scores.get('exactMatch'))} | "
                             f"{_pct(scores.get('validJson'))} |")
    lines += ["", "## Use", "", "With PEFT:", "", "```python",
              "from peft import AutoPeftModelForCausalLM",
              'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")', "```", "",
              "With vLLM:", "", "```bash",
              f"vllm serve {base} --enable-lora --max-lora-rank {serve.get('vllmMaxLoraRank', serve['loraRank'])} "
              f"--lora-modules {cfg.run.sftjob or 'adapter'}=path/to/this/folder", "```", "",
              "`provenance.json` beside this file records the full configuration, the data's sha256 and the library "
              "versions.", ""]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "–"


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "–"


def write(adapter_dir: Path, cfg: TrainerConfig, result: dict[str, Any], started: float, ended: float) \
        -> dict[str, Any]:
    """Make the adapter folder portable and describe it; returns the serving handoff."""
    config = make_portable(adapter_dir, cfg)
    serve = serving(config, cfg)
    write_provenance(adapter_dir, cfg, result, started, ended)
    (adapter_dir / "README.md").write_text(model_card(cfg, result, serve))
    return serve


def write_provenance(folder: Path, cfg: TrainerConfig, result: dict[str, Any], started: float, ended: float) -> None:
    """provenance.json in the folder of the result (an adapter, or a fully fine-tuned model)."""
    (folder / PROVENANCE_FILE).write_text(json.dumps(provenance(cfg, result, started, ended), indent=2,
                                                     default=str) + "\n")


# ------------------------------------------------------------------------------------------ warm start


def check_warm_start(cfg: TrainerConfig) -> dict[str, Any] | None:
    """The warm-start adapter's config, checked against this run before any weight is loaded: it must be a LoRA
    adapter of the same base model with the same rank (and the same targets, when the spec names them)."""
    ws = cfg.warm_start
    if ws is None:
        return None
    folder = Path(ws.path)
    where = ws.name
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        holds = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) if folder.is_dir() else None
        raise ConfigError(f"warmStart: {where} holds no LoRA adapter (no adapter_config.json"
                          + (f"; it holds: {holds}" if holds else "; the folder does not exist") + ")")
    if not any((folder / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ConfigError(f"warmStart: {where} has an adapter_config.json but no adapter_model.safetensors")
    try:
        adapter = json.loads(config_file.read_text())
    except ValueError as e:
        raise ConfigError(f"warmStart: {where}/adapter_config.json is not valid JSON: {e}") from None
    if adapter.get("peft_type") not in (None, "LORA"):
        raise ConfigError(f"warmStart: {where} is a {adapter.get('peft_type')} adapter; only LoRA adapters continue")
    problems = []
    theirs = _same_model_names(adapter.get("base_model_name_or_path"), folder)
    ours = {base_model_id(cfg), cfg.model.name} | ({cfg.model.origin} if cfg.model.origin else set())
    if theirs and not theirs & ours:
        problems.append(f"it was trained on {sorted(theirs)[0]}, this run's model is {base_model_id(cfg)}")
    assert cfg.lora is not None
    if adapter.get("r") is not None and int(adapter["r"]) != cfg.lora.r:
        problems.append(f"its rank is {adapter['r']} and lora.r is {cfg.lora.r}: set lora.r: {adapter['r']}")
    targets = adapter.get("target_modules")
    if cfg.lora.target_modules != ["all-linear"] and isinstance(targets, list) and \
            {t.rsplit('.', 1)[-1] for t in targets} != {t.rsplit('.', 1)[-1] for t in cfg.lora.target_modules}:
        problems.append(f"it adapts {sorted(targets)} and lora.targetModules is {cfg.lora.target_modules}")
    if problems:
        raise ConfigError(f"warmStart: the adapter at {where} does not fit this run: " + "; ".join(problems))
    return adapter


def _same_model_names(name: str | None, folder: Path) -> set[str]:
    """The names an adapter's base goes by: its base_model_name_or_path, and the id and path its provenance
    records."""
    names = {name} if name else set()
    for candidate in (folder / PROVENANCE_FILE, folder.parent.parent / "adapter" / PROVENANCE_FILE):
        if candidate.is_file():
            try:
                base = json.loads(candidate.read_text()).get("baseModel") or {}
            except ValueError:
                continue
            names |= {v for v in (base.get("id"), base.get("path")) if v}
            break
    return names
