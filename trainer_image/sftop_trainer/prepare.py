"""The data exactly as training sees it: read, converted, templated, tokenized and masked (`prepare_data`, for the
run and its plan alike), and the prepared/ cache that carries it from the Validating phase to the run, keyed by
the config's fingerprint (`config_fingerprint`, which also ties result.json and plan.json to their config)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import logging

from sftop_trainer import data as data_mod
from sftop_trainer.config import TrainerConfig
from sftop_trainer.errors import ConfigError
from sftop_trainer.trainer import make_trainer_class

log = logging.getLogger(__name__)

PREPARED = "prepared"  # in output.dir: the data as validation prepared it, for the run to load


def ensure_writable(folder: Path) -> None:
    """output.dir, created if needed; one that cannot be written to is a config error, before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A name of its own: every local process of a multi-GPU run probes the same folder at once.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"output.dir {folder} is not writable: {e}") from e


def config_fingerprint(cfg: TrainerConfig) -> str:
    """sha256 of what a run trains on and writes to (the config but its progress endpoint, hardware and tracking):
    prepared data and a result are reused only for the same config."""
    # how the model reaches the pod (filled into the shared cache, or read from it at the commit the fill
    # resolved) is not what it trains on: the Validating phase's config and the training pod's agree
    dumped = cfg.dump(exclude={"progress": True, "hardware": True, "tracking": True,
                               "model": {"cache", "resolved_revision"}})
    if not (dumped.get("evaluation") or {}).get("parity"):  # a later setting at its default: the same config as before
        (dumped.get("evaluation") or {}).pop("parity", None)
    text = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass
class PreparedData:
    """The data exactly as training sees it: tokenized, masked, long samples handled, packed if asked."""

    train: Any
    eval: Any  # None without an eval split
    eval_rows: Any  # the eval rows before tokenization (their prompts are answered at evaluation)
    report: data_mod.DataReport
    lengths: list[int]  # each training sample's tokens before maxLength
    trained_tokens: int  # tokens that carry loss, after maxLength
    shots: list = dataclasses.field(default_factory=list)  # the first training rows, untokenized: few-shot examples


def prepare_data(cfg: TrainerConfig, tokenizer, args) -> PreparedData:
    """Read, convert, template, tokenize and mask the data the way SFTTrainer would, without a model: the run and
    its plan prepare it with this one function."""
    from sftop_trainer.chat import TurnMasker

    masker = TurnMasker(tokenizer, cfg.training.assistant_only_loss, cfg.training.completion_only_loss)
    data = data_mod.prepare(cfg.dataset, cfg.training.seed, conversational=bool(tokenizer.chat_template),
                            check=masker.check, tokenizer=tokenizer)
    train_ds, eval_ds, report = data.train, data.evaluation, data.report
    if data_mod.is_conversational(train_ds) and not tokenizer.chat_template:
        raise ConfigError(f"the data is conversational ({report.format}) but {cfg.model.name} has no chat "
                          f"template; set spec.chatTemplate")
    report.loss = masker.describe(train_ds)
    # Loss masks on conversations are made here (sftop_trainer.chat); TRL masks completions of plain-text
    # prompt-completion rows itself, in its own dataset preparation, which runs here without a model.
    preparer = make_trainer_class().preparer(tokenizer, args, cfg.training.long_samples, train_ds)
    tokenized = masker.tokenize(train_ds)
    tokenized, train_ds = _token_checks(cfg, tokenizer, tokenized, train_ds, data, report)
    shots = train_ds.select(range(min(cfg.evaluation.few_shot, len(train_ds)))).to_list()
    train = preparer.prepare(tokenized, "train")
    counts = preparer.data_counts["train"]
    report.overlong = counts["overlong"]
    report.overlong_action = cfg.training.long_samples
    evaluation = None
    if eval_ds is not None:
        evaluation = preparer.prepare(masker.tokenize(eval_ds), "eval")
    return PreparedData(train=train, eval=evaluation, eval_rows=eval_ds, report=report, lengths=counts["lengths"],
                        trained_tokens=counts["trained_tokens"], shots=shots)


def _loss_tokens(tokenizer, tokenized, rows, max_length: int, completion_only: bool = True) \
        -> tuple[list[int], list[int], list[int]]:
    """Each sample's tokens, its tokens that carry loss, and how many of those maxLength cuts off: from the masks
    made here, or, for rows TRL masks itself, from the prompt and completion tokenized apart."""
    if tokenized is not rows and "assistant_masks" in tokenized.column_names:
        lengths, loss, cut = [], [], []
        for ids, mask in zip(tokenized["input_ids"], tokenized["assistant_masks"]):
            lengths.append(len(ids))
            loss.append(sum(mask))
            cut.append(sum(mask[max_length:]))
        return lengths, loss, cut
    if "completion" in rows.column_names and isinstance(rows[0]["completion"], str) and \
            completion_only:
        prompt = [len(x) for x in tokenizer(list(rows["prompt"]), add_special_tokens=True)["input_ids"]]
        answer = [len(x) for x in tokenizer(list(rows["completion"]), add_special_tokens=False)["input_ids"]]
        lengths = [p + a for p, a in zip(prompt, answer)]
        return lengths, answer, [min(a, max(0, p + a - max_length)) for p, a in zip(prompt, answer)]
    return [], [], []  # every token carries loss (plain text, or completionOnlyLoss off): no answer to cut


def _token_checks(cfg: TrainerConfig, tokenizer, tokenized, rows, data, report):
    """The quality checks that need tokens (sftop_trainer.quality.token_findings): rows whose answer maxLength cuts
    and rows left with no loss, decided by the policy; dropped rows leave both the tokenized and the plain rows.
    With longSamples: drop every overlong row is dropped anyway (and counted as overlong)."""
    from sftop_trainer import quality

    max_length = cfg.training.max_length
    lengths, loss, cut = _loss_tokens(tokenizer, tokenized, rows, max_length,
                                      cfg.training.completion_only_loss is not False)
    if not lengths:
        return tokenized, rows
    if cfg.training.long_samples == "drop":
        cut = [0 if n > max_length else c for n, c in zip(lengths, cut)]
        loss = [1 if n > max_length else x for n, x in zip(lengths, loss)]
    findings = quality.token_findings(lengths, loss, cut, data.numbers, max_length)
    quality.decide(findings, cfg.dataset.quality)
    for f in findings:
        log.warning("data quality: %s %s: %s", f.action, f.check, f.message)
    data.findings += findings
    drop = quality.dropped(findings, "train")
    if drop:
        kept = [i for i, n in enumerate(data.numbers) if n not in drop]
        if not kept:
            raise data_mod.DataError(f"no usable rows: dataset.quality dropped every one of the {len(lengths)} "
                                     "row(s)")
        tokenized = tokenized.select(kept) if tokenized is not rows else None
        rows = rows.select(kept)
        tokenized = rows if tokenized is None else tokenized
        data.numbers = [data.numbers[i] for i in kept]
        report.quality["dropped"]["train"] += len(lengths) - len(kept)
        report.rows_train = len(rows)
        report.sha256 = data_mod.fingerprint(rows, *([data.evaluation] if data.evaluation is not None else []))
    report.quality["findings"] = quality.report(data.findings, report.quality["nearDuplicates"],
                                                report.quality["dropped"])["findings"]
    quality.raise_failures(findings)
    return tokenized, rows


def save_prepared(data, folder: Path, fingerprint: str) -> None:
    """The prepared datasets, in Arrow files the run memory-maps: loading them took 3 ms where preparing 20,000
    conversations again took 21 s (bench/RESULTS.md)."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("train", "eval", "eval_rows"):
        value = getattr(data, name)
        if value is not None:
            value.save_to_disk(str(tmp / name))
    meta = {"configSha256": fingerprint, "report": dataclasses.asdict(data.report), "lengths": data.lengths,
            "trainedTokens": data.trained_tokens, "shots": data.shots}
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def load_prepared(folder: Path, fingerprint: str):
    """The data validation prepared for this very config, or None."""
    import datasets

    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("configSha256") != fingerprint:
        return None
    report = data_mod.DataReport(**meta["report"])
    loaded = {name: datasets.load_from_disk(str(folder / name)) if (folder / name).is_dir() else None
              for name in ("train", "eval", "eval_rows")}
    return PreparedData(train=loaded["train"], eval=loaded["eval"], eval_rows=loaded["eval_rows"],
                        report=report, lengths=meta["lengths"], trained_tokens=meta["trainedTokens"],
                        shots=meta.get("shots") or [])
