"""Training data: load it, recognise its format, convert it to what TRL's SFTTrainer takes, split off eval rows.

TRL takes three shapes as they are: conversational `messages`, `prompt`/`completion` (strings or message lists)
and plain `text`. Instruction data (`instruction`, `input`, `output`) becomes prompt/completion, ShareGPT
(`conversations` of `from`/`value`) becomes `messages` with its roles mapped. Rows that cannot train (no
assistant turn, an empty completion, a malformed message) are skipped, counted and named by row number; a
dataset with nothing left is an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sftop_trainer.config import DataSource
from sftop_trainer.causes import hub_unreachable
from sftop_trainer.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

# format -> the columns that identify it (in detection order)
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt-completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),
    "text": ("text",),
}
ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "bot": "assistant", "chatgpt": "assistant", "tool": "tool",
                  "function_response": "tool", "observation": "tool"}
# Alpaca's prompt, for instruction data on a model without a chat template.
ALPACA = ("Below is an instruction that describes a task{with_input}. Write a response that appropriately completes "
          "the request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n")
NAMED_ROWS = 10  # how many row numbers a report names per reason
Check = Callable[[dict[str, Any]], "str | None"]  # a converted row -> why it cannot train, or None


@dataclass
class DataReport:
    """What the trainer made of the data; it goes to result.json."""

    source: str
    format: str
    rows_read: int = 0
    rows_train: int = 0
    rows_eval: int = 0
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)  # reason -> {count, rows}
    overlong: int = 0
    overlong_action: str = "truncate"
    loss: str = ""  # what carries loss, in words
    sha256: str = ""
    roles: dict[str, int] = field(default_factory=dict)  # "human → user" -> turns mapped
    quality: dict[str, Any] = field(default_factory=dict)  # sftop_trainer.quality.report

    def as_dict(self) -> dict[str, Any]:
        """camelCase keys, like the rest of result.json."""
        from pydantic.alias_generators import to_camel

        return {to_camel(k): v for k, v in asdict(self).items()}


# ------------------------------------------------------------------------------------------- loading


def _jsonl_problem(path: Path) -> str | None:
    """The first line of a JSON-lines file that is not a JSON object, as 'line N: why'."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return f"line {number}: not valid JSON ({e})"
            if not isinstance(value, dict):
                return f"line {number}: a row must be a JSON object, got {type(value).__name__}"
    return None


def _load_file(path: Path) -> Dataset:
    from datasets import Dataset, load_dataset

    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(suffix)
    if builder is None:
        raise DataError(f"dataset file {path}: unknown type {suffix!r}; use .jsonl, .json, .parquet or .csv")
    if suffix == ".jsonl":
        # Check every line first: a malformed line is named by its number, which Arrow's reader does not do.
        problem = _jsonl_problem(path)
        if problem:
            raise DataError(f"dataset file {path.name}: {problem}")
    if suffix == ".json":
        try:
            value = json.loads(path.read_text())
        except json.JSONDecodeError:
            problem = _jsonl_problem(path)  # not one JSON document: it may still be JSON lines
            if problem:
                raise DataError(f"dataset file {path.name}: {problem}") from None
        else:
            if isinstance(value, dict) and isinstance(value.get("data"), list):
                value = value["data"]
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise DataError(f"dataset file {path.name}: a .json dataset is a list of row objects (or JSON lines)")
            return Dataset.from_list(value)
    try:
        return load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # Arrow's readers raise many types; all mean the file cannot be read
        raise DataError(f"dataset file {path.name}: cannot be read as {suffix[1:]}: {e}") from e


def _load_hub(src: DataSource, split: str) -> Dataset:
    from datasets import load_dataset

    hub = src.hub
    assert hub is not None
    try:
        return load_dataset(hub.name, hub.config, split=split, revision=hub.revision)
    except Exception as e:
        if hub_unreachable(e):
            raise DataError(f"Hub dataset {hub.name}: the Hugging Face Hub cannot be reached from here and the "
                            f"dataset is not in the cache. Without internet access, put the data on a claim "
                            f"(spec.dataset.pvc) or in a ConfigMap; a gated or private dataset also needs "
                            f"spec.hubTokenSecret.") from e
        if isinstance(e, (FileNotFoundError, ValueError)):
            raise DataError(f"Hub dataset {hub.name} (config {hub.config}, split {split}, revision "
                            f"{hub.revision}): {e}") from e
        if type(e).__name__ in ("DatasetNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError"):
            raise DataError(f"Hub dataset {hub.name}: {e}") from e
        raise


def load_raw(src: DataSource) -> Dataset:
    from datasets import Dataset

    if src.rows is not None:
        bad = [i for i, r in enumerate(src.rows, start=1) if not isinstance(r, dict)]
        if bad:
            raise DataError(f"inline rows must be objects; rows {_rows(bad)} are not")
        try:
            return Dataset.from_list(src.rows)
        except Exception as e:
            raise DataError(f"inline rows do not share one shape: {e}") from e
    if src.path is not None:
        return _load_file(Path(src.path))
    assert src.hub is not None
    return _load_hub(src, src.hub.split)


def describe_source(src: DataSource) -> str:
    if src.hub is not None:
        return f"hub:{src.hub.name}" + (f"@{src.hub.revision}" if src.hub.revision else "")
    if src.path is not None:
        return f"file:{Path(src.path).name}"
    return "inline"


# ------------------------------------------------------------------------------------------- formats


def detect_format(columns: list[str]) -> str:
    for fmt, needed in FORMAT_COLUMNS.items():
        if all(c in columns for c in needed):
            return fmt
    accepted = "; ".join(f"{fmt} ({', '.join(cols)})" for fmt, cols in FORMAT_COLUMNS.items())
    raise DataError(f"cannot tell the dataset's format from its columns {sorted(columns)}; accepted formats "
                    f"(with their columns): {accepted}. Rename the columns or set dataset.format.")


VALID_ROLES = (f"valid roles: {', '.join(sorted(ROLES))}; mapped: human → user, gpt/bot/model/chatgpt → assistant, "
               f"function_response/observation → tool")


def _check_messages(messages: Any, roles: dict[str, str] | None = None,
                    mapped: Counter | None = None) -> tuple[list[dict] | None, str | None]:
    """(messages in role/content form, None) or (None, the reason the row cannot train). A role outside the
    four that has a usual meaning (ShareGPT's, `SHAREGPT_ROLES`) is mapped to it and counted in `mapped`."""
    if not isinstance(messages, list) or not messages:
        return None, "malformed messages: not a list of turns"
    out = []
    for m in messages:
        if not isinstance(m, dict):
            return None, "malformed messages: a turn is not an object"
        if roles is not None:
            said, content = str(m.get("from", "")), m.get("value")
        else:
            said, content = m.get("role"), m.get("content")
        role = said if said in ROLES else SHAREGPT_ROLES.get(str(said).lower())
        if role is None:
            return None, f"unknown role {said!r} ({VALID_ROLES})"
        if role != said and roles is None and mapped is not None:
            mapped[f"{said} → {role}"] += 1
        if not (content is None or isinstance(content, str)):
            return None, "malformed messages: a turn's content is not text"
        out.append({"role": role, "content": content or ""})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        return None, "no assistant turn"
    return out, None


def _convert_row(row: dict[str, Any], fmt: str, conversational: bool,
                 mapped: Counter | None = None) -> tuple[dict[str, Any] | None, str | None]:
    if fmt in ("messages", "sharegpt"):
        key = "messages" if fmt == "messages" else "conversations"
        messages, why = _check_messages(row.get(key), SHAREGPT_ROLES if fmt == "sharegpt" else None, mapped)
        return ({"messages": messages}, None) if messages else (None, why)
    if fmt == "prompt-completion":
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, str) and isinstance(completion, str):
            return ({"prompt": prompt, "completion": completion}, None) if completion.strip() \
                else (None, "empty completion")
        if isinstance(prompt, list) and isinstance(completion, list):
            p, _ = _check_messages(prompt + [{"role": "assistant", "content": "x"}])
            c, why = _check_messages(completion)
            if p is None or c is None:
                return None, why or "malformed messages"
            return {"prompt": p[:-1], "completion": c}, None
        return None, "prompt and completion must both be strings or both message lists"
    if fmt == "instruction":
        instruction, extra, output = row.get("instruction"), row.get("input") or "", row.get("output")
        if not isinstance(instruction, str) or not instruction.strip() or not isinstance(extra, str):
            return None, "empty instruction"
        if not isinstance(output, str) or not output.strip():
            return None, "empty output"
        if conversational:
            content = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
            return {"prompt": [{"role": "user", "content": content}],
                    "completion": [{"role": "assistant", "content": output}]}, None
        prompt = ALPACA.format(with_input=", paired with an input that provides further context" if extra else "",
                               instruction=instruction, input_block=f"### Input:\n{extra}\n\n" if extra else "")
        return {"prompt": prompt, "completion": output}, None
    text = row.get("text")
    return ({"text": text}, None) if isinstance(text, str) and text.strip() else (None, "empty text")


def is_conversational(ds: Dataset) -> bool:
    return "messages" in ds.column_names or (
        "prompt" in ds.column_names and len(ds) > 0 and isinstance(ds[0]["prompt"], list))


def convert(ds: Dataset, fmt: str, conversational: bool, report: DataReport, check: Check | None = None) \
        -> tuple[Dataset, list[int]]:
    """Rows in the shape TRL takes, and their row numbers in the file (1-based); skipped rows are counted in
    `report.skipped`, mapped roles in `report.roles`. `check` may reject a converted row with a reason (the chat
    template cannot render it, ...)."""
    from datasets import Dataset

    needed = FORMAT_COLUMNS[fmt]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DataError(f"dataset.format is {fmt}, which needs the columns {', '.join(needed)}; missing "
                        f"{', '.join(missing)} (columns found: {', '.join(sorted(ds.column_names))})")
    rows, numbers, skipped, mapped = [], [], {}, Counter()
    for number, row in enumerate(ds, start=1):
        converted, why = _convert_row(row, fmt, conversational, mapped)
        if converted is not None and check is not None:
            why = check(converted)
            converted = None if why else converted
        if converted is None:
            skipped.setdefault(why, []).append(number)
        else:
            rows.append(converted)
            numbers.append(number)
    for change, count in mapped.items():
        report.roles[change] = report.roles.get(change, 0) + count
        log.warning("mapped the role %s in %d turn(s) of the dataset", change, count)
    for why, numbers in skipped.items():
        report.skipped[why] = {"count": len(numbers), "rows": numbers[:NAMED_ROWS]}
        log.warning("skipped %d row(s) of the dataset: %s (rows %s)", len(numbers), why, _rows(numbers))
    if not rows:
        reasons = "; ".join(f"{why}: {len(n)} (rows {_rows(n)})" for why, n in skipped.items())
        raise DataError(f"no usable rows: every one of the {len(ds)} row(s) was skipped ({reasons or 'empty'})")
    return Dataset.from_list(rows), numbers


def _rows(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:NAMED_ROWS]))
    return shown + (f", … ({len(numbers)} in all)" if len(numbers) > NAMED_ROWS else "")


def fingerprint(*datasets: Dataset) -> str:
    """sha256 over the converted rows (canonical JSON lines): what exactly the model was trained on."""
    h = hashlib.sha256()
    for ds in datasets:
        for batch in ds.iter(batch_size=1000):
            columns = list(batch)
            for i in range(len(batch[columns[0]]) if columns else 0):
                h.update(json.dumps({c: batch[c][i] for c in columns}, sort_keys=True, ensure_ascii=False).encode())
                h.update(b"\n")
    return h.hexdigest()


def held_out_by_prompt(rows: list[dict[str, Any]], fraction: float, seed: int) -> set[int]:
    """The rows an evalSplit.fraction holds out: whole groups of rows that share a prompt (normalised), drawn in a
    seeded order until the fraction is reached, so that no prompt is on both sides (a prompt asked again, such as a
    greeting, or a duplicate row, would otherwise measure memory). With a single prompt in all, a plain split."""
    import math
    import random

    from sftop_trainer.quality import split_row

    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(split_row(row)[0], []).append(i)
    want = max(1, math.ceil(fraction * len(rows)))
    if len(groups) < 2:
        return set(random.Random(seed).sample(range(len(rows)), want))
    order = list(groups)
    random.Random(seed).shuffle(order)
    held: set[int] = set()
    for prompt in order[:-1]:  # at least one group trains
        if len(held) >= want:
            break
        held.update(groups[prompt])
    return held


ROW = "__sftop_row__"  # a converted row's number in its file, while rows are sampled


def _numbered(ds: Dataset, numbers: list[int], change: Callable[[Dataset], Dataset]) -> tuple[Dataset, list[int]]:
    """`change(ds)` (a split part, a sample), keeping track of the row numbers of the rows it keeps."""
    changed = change(ds.add_column(ROW, numbers))
    return changed.remove_columns(ROW), list(changed[ROW])


@dataclass
class Prepared:
    train: Dataset
    evaluation: Dataset | None
    report: DataReport
    numbers: list[int]  # each training row's number in its file
    findings: list = field(default_factory=list)  # sftop_trainer.quality.Finding, decided by the policy


def _keep(ds: Dataset, numbers: list[int], drop: set[int]) -> tuple[Dataset, list[int]]:
    if not drop:
        return ds, numbers
    kept = [i for i, n in enumerate(numbers) if n not in drop]
    if not kept:
        raise DataError(f"no usable rows: dataset.quality dropped every one of the {len(numbers)} row(s)")
    return ds.select(kept), [numbers[i] for i in kept]


def prepare(src: DataSource, seed: int, conversational: bool, check: Check | None = None, tokenizer=None) \
        -> Prepared:
    """Load, convert, check and split the data. `conversational` says whether a chat template is available
    (instruction data then becomes chat messages); `check` may reject converted rows with a reason. The quality
    checks (sftop_trainer.quality) run on every converted row, under the dataset's policy: dropped rows are
    removed, failures raise DataQualityError."""
    from sftop_trainer import quality

    raw = load_raw(src)
    report = DataReport(source=describe_source(src), format=src.format, rows_read=len(raw))
    fmt = detect_format(raw.column_names) if src.format == "auto" else src.format
    report.format = fmt
    train, numbers = convert(raw, fmt, conversational, report, check)
    evaluation, eval_numbers, eval_name = None, None, "eval"
    if src.eval_split is not None and src.eval_split.fraction is not None:
        if len(train) < 2:
            raise DataError(f"evalSplit.fraction needs at least 2 usable rows; there is {len(train)}")
        held = held_out_by_prompt(train.to_list(), src.eval_split.fraction, seed)
        kept = [i for i in range(len(train)) if i not in held]
        evaluation, eval_numbers = train.select(sorted(held)), [numbers[i] for i in sorted(held)]
        train, numbers = train.select(kept), [numbers[i] for i in kept]
        eval_name = "eval (held out from train)"
    elif src.eval_split is not None and src.eval_split.name is not None:
        eval_report = DataReport(source=report.source, format=fmt)
        evaluation, eval_numbers = convert(_load_hub(src, src.eval_split.name), fmt, conversational, eval_report,
                                           check)
        eval_name = f"eval (split {src.eval_split.name})"
    elif src.eval_path is not None:
        eval_raw = _load_file(Path(src.eval_path))
        eval_report = DataReport(source=f"file:{Path(src.eval_path).name}", format=fmt)
        evaluation, eval_numbers = convert(eval_raw, fmt, conversational, eval_report, check)
        eval_name = f"eval ({Path(src.eval_path).name})"
    names = ("train", eval_name)
    findings, near = quality.check(train.to_list(), numbers, evaluation.to_list() if evaluation is not None else None,
                                   eval_numbers, src.quality, tokenizer, names)
    before = (len(train), len(evaluation) if evaluation is not None else 0)
    train, numbers = _keep(train, numbers, quality.dropped(findings, names[0]))
    if evaluation is not None:
        evaluation, eval_numbers = _keep(evaluation, eval_numbers, quality.dropped(findings, names[1]))
    report.quality = quality.report(findings, near, {
        "train": before[0] - len(train), "eval": before[1] - (len(evaluation) if evaluation is not None else 0)})
    for f in findings:
        if f.action in ("warn", "drop"):
            log.warning("data quality: %s %s: %s", f.action, f.check, f.message)
    quality.raise_failures(findings)
    if src.max_samples is not None and len(train) > src.max_samples:
        train, numbers = _numbered(train, numbers, lambda d: d.shuffle(seed=seed).select(range(src.max_samples)))
    report.rows_train, report.rows_eval = len(train), len(evaluation) if evaluation is not None else 0
    report.sha256 = fingerprint(train, *([evaluation] if evaluation is not None else []))
    return Prepared(train, evaluation, report, numbers, findings)
