"""The data-quality checklist, run on every row before any GPU is asked for (the Validating phase, `sftop plan`,
`sftop run --local`): consistent, correct, complete, clean, representative.

Each check finds rows (by their row number in their file) and reports a count, a share and the first row numbers;
the dataset's policy (`dataset.quality`, `config.DataQuality`) then says, per check, whether the rows are only
reported (`warn`), removed (`drop`) or fail the run (`fail`) when their share is above the rule's threshold.

| check | finds |
|---|---|
| duplicates | training rows equal to an earlier one after whitespace is normalised |
| nearDuplicates | training rows whose character 5-grams' Jaccard similarity to an earlier row's is ≥ the threshold (MinHash LSH, then exact) |
| conflicts | rows whose prompt (every turn before the answer, normalised) recurs with another answer |
| leakage | evaluation rows whose prompt or whole row occurs in training |
| nearLeakage | evaluation rows nearly equal to a training row (as nearDuplicates) |
| size | fewer than 50 usable training rows, fewer than 500 |
| answerFormat | where most answers are JSON (objects with one key set), the answers that are not (or lack or add keys) |
| coverage | values of a categorical JSON answer field common in evaluation but rare or absent in training |
| truncated, noLoss | rows whose answer maxLength cuts, rows with no token left to learn from (`token_findings`) |
| emptyTurns | rows with an empty or whitespace-only turn |
| specialTokens | the tokenizer's special tokens or the template's markers written inside a row's text |

Unknown roles are not a check: the conversion maps the usual ones (`human` → `user`, `gpt`/`bot`/`model` →
`assistant`) and reports them (`sftop_trainer.data`), and skips a row with a role it cannot map, naming the
valid ones.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from sftop_trainer.config import DataQuality
from sftop_trainer.errors import DataQualityError

SHOWN_ROWS = 10
FEW_ROWS, SMALL_ROWS = 50, 500
NUM_PERM = 128  # MinHash permutations: a Jaccard estimate within ±0.04 (one standard deviation at 0.8)
SHINGLE = 5  # characters per shingle
# Chat-template markers of the common families, beside the tokenizer's own special tokens.
MARKERS = re.compile(r"<\|[a-z_]+\|>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>")
CATEGORICAL_VALUES = 20  # a JSON field with at most this many distinct values (each seen twice on average)
RARE_IN_TRAIN, COMMON_IN_EVAL = 0.01, 0.05  # shares
REQUIRED_SHARE, RARE_KEY_SHARE = 0.9, 0.01  # a JSON key nearly every answer has; one almost none has (a typo)


@dataclass
class Finding:
    check: str
    file: str  # which file the rows are numbers of: "train" or "eval" (and the file's name)
    count: int
    share: float  # of that file's usable rows
    rows: list[int]
    message: str
    action: str = "warn"  # the policy's verdict: warn, drop or fail; "info" for what no rule governs
    drop: list[int] = field(default_factory=list, repr=False)  # row numbers a drop removes (not reported)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("drop")
        out["rows"] = out["rows"][:SHOWN_ROWS]
        out["share"] = round(self.share, 4)
        return out


def normalise(text: str) -> str:
    return " ".join(text.split())


def _content(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _turns(row: dict[str, Any]) -> list[dict[str, Any]]:
    if isinstance(row.get("messages"), list):
        return row["messages"]
    if isinstance(row.get("prompt"), list):
        return list(row["prompt"]) + list(row.get("completion") or [])
    return []


def split_row(row: dict[str, Any]) -> tuple[str, str | None]:
    """(the prompt: every turn before the answer, normalised; the answer, normalised, or None for plain text)."""
    if isinstance(row.get("messages"), list):
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            return "\n".join(f"{m.get('role')}: {normalise(_content(m.get('content')))}" for m in messages), None
        prompt = "\n".join(f"{m.get('role')}: {normalise(_content(m.get('content')))}" for m in messages[:last])
        return prompt, normalise(_content(messages[last].get("content")))
    if "prompt" in row:
        prompt, completion = row["prompt"], row.get("completion")
        if isinstance(prompt, list):
            prompt = "\n".join(f"{m.get('role')}: {normalise(_content(m.get('content')))}" for m in prompt)
            completion = " ".join(normalise(_content(m.get("content"))) for m in completion or [])
        return normalise(_content(prompt)), normalise(_content(completion))
    return normalise(_content(row.get("text"))), None


NEAR_CHARS = 2000  # of a row's text the near-duplicate search reads: its first and last thousand characters


def _near_text(row: dict[str, Any]) -> str:
    """What near duplicates are compared on: the row without its system turns (a long system prompt shared by every
    row would make them all alike), its first and last NEAR_CHARS / 2 characters (a 20,000-character row costs
    what a 2,000-character one does)."""
    turns = _turns(row)
    if turns:
        text = "\n".join(f"{m.get('role')}: {normalise(_content(m.get('content')))}" for m in turns
                         if m.get("role") != "system")
    else:
        prompt, answer = split_row(row)
        text = prompt + "\n=> " + (answer or "")
    half = NEAR_CHARS // 2
    return text if len(text) <= NEAR_CHARS else text[:half] + text[-half:]


def _texts(row: dict[str, Any]) -> list[str]:
    turns = _turns(row)
    if turns:
        return [_content(m.get("content")) for m in turns]
    return [_content(row.get(k)) for k in ("prompt", "completion", "text") if isinstance(row.get(k), str)]


def _share(count: int, total: int) -> float:
    return count / total if total else 0.0


def _rows_text(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:SHOWN_ROWS]))
    return shown + (f", … ({len(numbers)} in all)" if len(numbers) > SHOWN_ROWS else "")


class _Rows:
    """One file's converted rows, with their row numbers and what the checks compare."""

    def __init__(self, rows: list[dict[str, Any]], numbers: list[int], name: str):
        self.rows, self.numbers, self.name = rows, numbers, name
        self.parts = [split_row(r) for r in rows]
        self.whole = [p + "\n=> " + (a or "") for p, a in self.parts]
        self.near = [_near_text(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def finding(self, check: str, found: list[int], message: str, drop: list[int] | None = None) -> Finding:
        numbers = [self.numbers[i] for i in found]
        return Finding(check, self.name, len(found), _share(len(found), len(self)), numbers,
                       f"{message} (rows {_rows_text(numbers)})",
                       drop=[self.numbers[i] for i in (found if drop is None else drop)])


@functools.lru_cache(maxsize=20_000)  # rows compared again and again (a group's first row) are split once
def _grams(text: str):
    """The distinct byte 5-grams of the lowercased text, each as one integer (5 bytes fit in 40 bits, so two
    grams are equal exactly when their integers are): sorted, as a numpy array."""
    import numpy as np

    data = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    if len(data) < SHINGLE:
        data = np.concatenate([data, np.zeros(SHINGLE - len(data), dtype=np.uint64)])
    grams = np.zeros(len(data) - SHINGLE + 1, dtype=np.uint64)
    for k in range(SHINGLE):
        grams = (grams << np.uint64(8)) | data[k:len(data) - SHINGLE + 1 + k]
    return np.unique(grams)


def jaccard(a: str, b: str) -> float:
    """The exact Jaccard similarity of two texts' 5-gram sets."""
    import numpy as np

    x, y = _grams(a), _grams(b)
    common = len(np.intersect1d(x, y, assume_unique=True))
    return common / (len(x) + len(y) - common)


class _NearIndex:
    """Near duplicates by MinHash LSH, vectorised with numpy: each row's MinHash signature (NUM_PERM
    multiply-shift hashes of its 5-grams, the minimum of each), cut into bands of `rows` values; rows whose band
    agrees are candidates, the signatures' agreement (an estimate of their Jaccard similarity) keeps those within
    ESTIMATE_MARGIN of the threshold, and the exact Jaccard similarity of their 5-gram sets decides. So no row is
    called near, or missed, on an estimate's noise, and 100,000 rows take seconds (bench/data_quality.py; a
    per-row LSH in Python, datasketch's, took about ten times longer).

    Each row is compared with the row just before it and the first row in each band's group of equal keys: rows
    that agree on a band with many others (templated data) are not compared with every one of them."""

    ESTIMATE_MARGIN = 0.08  # over two standard deviations of the estimate at 0.8
    CHUNK = 200_000  # candidate pairs compared at once (bounded memory)

    def __init__(self, texts: list[str], similarity: float):
        import numpy as np

        self.texts, self.similarity = texts, similarity
        self.rows = _band_rows(similarity)
        self.sigs = _signatures(texts)
        _grams.cache_clear()  # kept for the candidates' exact comparisons only
        self.keys = _band_keys(self.sigs, self.rows)  # (bands, n)
        self.order = np.argsort(self.keys, axis=1, kind="stable")  # by key, then by row: earlier rows first
        self.sorted = np.take_along_axis(self.keys, self.order, axis=1)
        pairs = []
        for band in range(self.keys.shape[0]):
            keys, order = self.sorted[band], self.order[band]
            same = np.flatnonzero(keys[1:] == keys[:-1]) + 1  # positions with an earlier row of the same key
            if not len(same):
                continue
            starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
            first = starts[np.searchsorted(starts, same, side="right") - 1]
            pairs.append(np.stack([order[same], order[same - 1]], axis=1))
            pairs.append(np.stack([order[same], order[first]], axis=1))
        self.later = sorted({int(j) for j, _ in self._verified(pairs, self.sigs, texts)})

    def _verified(self, pairs: list, sigs, texts: list[str]) -> list[tuple[int, int]]:
        """The candidate (row, earlier or training row) pairs whose exact similarity reaches the threshold."""
        import numpy as np

        if not pairs:
            return []
        both = np.unique(np.concatenate(pairs), axis=0)
        both = both[both[:, 0] != both[:, 1]] if sigs is self.sigs else both
        out, done = [], set()
        for start in range(0, len(both), self.CHUNK):
            chunk = both[start:start + self.CHUNK]
            agree = (sigs[chunk[:, 0]] == self.sigs[chunk[:, 1]]).mean(axis=1)
            for j, i in chunk[agree >= self.similarity - self.ESTIMATE_MARGIN]:
                if j in done:
                    continue
                if jaccard(texts[j], self.texts[i]) >= self.similarity:
                    out.append((int(j), int(i)))
                    done.add(j)
        return out

    def matches(self, texts: list[str]) -> list[int]:
        """The given rows (evaluation rows) that nearly equal a row of the index: each compared with the first
        training row of each band's group of equal keys."""
        import numpy as np

        if not texts:
            return []
        sigs = _signatures(texts)
        _grams.cache_clear()
        keys = _band_keys(sigs, self.rows)
        pairs = []
        for band in range(keys.shape[0]):
            at = np.searchsorted(self.sorted[band], keys[band], side="left")
            found = (at < self.sorted.shape[1]) & (self.sorted[band][np.minimum(at, self.sorted.shape[1] - 1)]
                                                   == keys[band])
            rows = np.flatnonzero(found)
            pairs.append(np.stack([rows, self.order[band][at[rows]]], axis=1))
        return sorted({j for j, _ in self._verified(pairs, sigs, texts)})


def _band_rows(similarity: float) -> int:
    """Values per band: the most that still makes rows at the threshold candidates with probability ≥ 0.95
    (1 - (1 - s^r)^b, b = NUM_PERM / r), so that few dissimilar rows are."""
    best = 1
    for rows in range(1, NUM_PERM + 1):
        if 1 - (1 - similarity ** rows) ** (NUM_PERM // rows) >= 0.95:
            best = rows
    return best


_MULTIPLIERS = None


def _permutations():
    """NUM_PERM multiply-shift hash functions (odd 64-bit multipliers and offsets), fixed: the same data gives the
    same report on every machine."""
    import numpy as np

    global _MULTIPLIERS
    if _MULTIPLIERS is None:
        rng = np.random.default_rng(20261204)
        a = rng.integers(1, 2**63, size=(NUM_PERM, 1), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        b = rng.integers(0, 2**63, size=(NUM_PERM, 1), dtype=np.uint64)
        _MULTIPLIERS = (a, b)
    return _MULTIPLIERS


def _signatures(texts: list[str]):
    """Each text's MinHash signature: for each of the NUM_PERM hash functions, the smallest hash of its 5-grams."""
    import numpy as np

    a, b = _permutations()
    out = np.empty((len(texts), NUM_PERM), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for i, text in enumerate(texts):
            out[i] = ((a * _grams(text)[None, :] + b) >> np.uint64(32)).min(axis=1)
    return out


def _band_keys(sigs, rows: int):
    """One 64-bit key per band of `rows` signature values, per text: (bands, texts)."""
    import numpy as np

    bands = NUM_PERM // rows
    mix = _permutations()[0][:rows, 0]
    with np.errstate(over="ignore"):
        parts = sigs[:, :bands * rows].astype(np.uint64).reshape(len(sigs), bands, rows)
        return (parts * mix).sum(axis=2).T.copy()


def _json_answer(answer: str | None) -> Any:
    if not answer or answer[0] not in "{[":
        return None
    try:
        return json.loads(answer)
    except ValueError:
        return None


def _answer_format(t: _Rows) -> tuple[list[Finding], list[dict[str, Any] | None]]:
    answers = [a for _, a in t.parts]
    parsed = [_json_answer(a) for a in answers]
    with_answer = [i for i, a in enumerate(answers) if a is not None]
    as_json = [i for i in with_answer if parsed[i] is not None]
    if not with_answer or len(as_json) * 2 <= len(with_answer):
        return [], [None] * len(t)
    out = []
    invalid = [i for i in with_answer if parsed[i] is None]
    if invalid:
        out.append(t.finding("answerFormat", invalid, f"{len(invalid)} answer(s) are not valid JSON where "
                                                      f"{len(as_json)} of {len(with_answer)} are"))
    objects = [i for i in as_json if isinstance(parsed[i], dict)]
    if len(objects) * 2 > len(as_json):
        seen = Counter(k for i in objects for k in parsed[i])
        required = {k for k, n in seen.items() if n >= REQUIRED_SHARE * len(objects)}
        rare = {k for k, n in seen.items() if n <= max(1.0, RARE_KEY_SHARE * len(objects))} \
            if len(objects) >= 50 else set()
        odd = [i for i in objects if not required <= set(parsed[i]) or rare & set(parsed[i])]
        if odd:
            first = set(parsed[odd[0]])
            detail = "; ".join(x for x in (f"missing {', '.join(sorted(required - first))}" if required - first
                                           else "", f"rare {', '.join(sorted(rare & first))}" if rare & first
                                           else "") if x)
            out.append(t.finding("answerFormat", odd, f"{len(odd)} JSON answer(s) lack a key nearly every answer "
                                                      f"has ({', '.join(sorted(required)) or 'none'}) or have a key "
                                                      f"almost none has (the first: {detail})"))
    return out, [parsed[i] if isinstance(parsed[i], dict) else None for i in range(len(t))]


def _coverage(t: _Rows, e: _Rows, train_json: list, eval_json: list) -> list[Finding]:
    train_objects = [o for o in train_json if o is not None]
    eval_objects = [o for o in eval_json if o is not None]
    if not train_objects or not eval_objects:
        return []
    out = []
    for key in sorted(set().union(*map(set, train_objects))):
        values = Counter(o[key] for o in train_objects if isinstance(o.get(key), (str, bool, int)))
        if not values or len(values) > CATEGORICAL_VALUES or len(values) * 2 > sum(values.values()):
            continue  # free text or numbers, not a category
        in_eval = Counter(o[key] for o in eval_objects if isinstance(o.get(key), (str, bool, int)))
        for value, count in in_eval.most_common():
            trained = values.get(value, 0)
            if count >= max(2, COMMON_IN_EVAL * len(eval_objects)) and trained <= RARE_IN_TRAIN * len(train_objects):
                found = [i for i, o in enumerate(eval_json) if o is not None and o.get(key) == value]
                out.append(e.finding("coverage", found, f"{key} {json.dumps(value)}: {count} evaluation row(s), "
                                                        f"{trained} training row(s); the score on them measures the "
                                                        f"data, not the training"))
    return out


def _special(texts: list[str], pattern: re.Pattern | None) -> bool:
    return pattern is not None and any(pattern.search(x) for x in texts)


def special_pattern(tokenizer) -> re.Pattern | None:
    """The tokenizer's special tokens and the template markers of the common families, as one pattern."""
    if tokenizer is None:
        return MARKERS
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            tokens.add(str(added))
    tokens = {t for t in tokens if len(t) >= 3 and not t.isalnum()}
    parts = [re.escape(t) for t in sorted(tokens, key=len, reverse=True)] + [MARKERS.pattern]
    return re.compile("|".join(parts))


def check(train: list[dict[str, Any]], train_numbers: list[int], evaluation: list[dict[str, Any]] | None,
          eval_numbers: list[int] | None, policy: DataQuality, tokenizer=None, names: tuple[str, str] = ("train", "eval"),
          ) -> tuple[list[Finding], dict[str, Any]]:
    """The findings over the converted rows (train, and evaluation when there is one), with their actions decided;
    and what the near-duplicate search covered."""
    t = _Rows(train, train_numbers, names[0])
    e = _Rows(evaluation or [], eval_numbers or [], names[1]) if evaluation is not None else None
    findings: list[Finding] = []

    first: dict[str, int] = {}
    exact = [i for i, w in enumerate(t.whole) if first.setdefault(w, i) != i]
    if exact:
        findings.append(t.finding("duplicates", exact, f"{len(exact)} training row(s) repeat an earlier row"))

    limit = policy.near_duplicate_max_rows
    searched = min(len(t), limit)
    near_info = {"similarity": policy.near_duplicate_similarity, "searchedRows": searched,
                 "limited": searched < len(t)}
    index = _NearIndex(t.near[:searched], policy.near_duplicate_similarity) if searched else None
    if index is not None:
        exact_set = set(exact)
        near = [i for i in index.later if i not in exact_set]
        if near:
            findings.append(t.finding("nearDuplicates", near, f"{len(near)} training row(s) nearly repeat an "
                                                              f"earlier row (similarity ≥ "
                                                              f"{policy.near_duplicate_similarity})"))

    answers: dict[str, set[str]] = defaultdict(set)
    for p, a in t.parts:
        if a is not None:
            answers[p].add(a)
    conflicting = [i for i, (p, a) in enumerate(t.parts) if a is not None and len(answers[p]) > 1]
    if conflicting:
        prompts = len({t.parts[i][0] for i in conflicting})
        findings.append(t.finding("conflicts", conflicting, f"{prompts} prompt(s) have different answers in "
                                                            f"{len(conflicting)} training rows"))

    usable = len(t)
    if usable < SMALL_ROWS:
        few = usable < FEW_ROWS
        message = (f"{usable} usable training rows: with fewer than {FEW_ROWS}, few-shot prompting of an "
                   f"instruction-tuned model often does as well (evaluation.fewShot measures it)" if few else
                   f"{usable} usable training rows, fewer than {SMALL_ROWS}: enough for a narrow format, rarely "
                   f"for a new skill")
        findings.append(Finding("size", t.name, usable, 1.0, [], message, action="warn" if few else "info"))

    format_findings, train_json = _answer_format(t)
    findings += format_findings

    pattern = special_pattern(tokenizer)
    for rows in [t] + ([e] if e is not None else []):
        empty = [i for i, r in enumerate(rows.rows) if any(not x.strip() for x in _texts(r))]
        if empty:
            findings.append(rows.finding("emptyTurns", empty, f"{len(empty)} {rows.name} row(s) have an empty "
                                                              f"or whitespace-only turn"))
        # plain-text rows are often already rendered with a template: their markers are meant
        special = [i for i, r in enumerate(rows.rows) if "text" not in r and _special(_texts(r), pattern)]
        if special:
            found = next(pattern.search(x) for x in _texts(rows.rows[special[0]]) if pattern.search(x))
            findings.append(rows.finding("specialTokens", special, f"{len(special)} {rows.name} row(s) write "
                                                                  f"special tokens or template markers in their "
                                                                  f"text (the first: {found.group(0)!r})"))

    if e is not None and len(e):
        train_prompts, train_whole = {p for p, _ in t.parts}, set(t.whole)
        leaked = [i for i, (p, _) in enumerate(e.parts) if p in train_prompts or e.whole[i] in train_whole]
        if leaked:
            findings.append(e.finding("leakage", leaked, f"{len(leaked)} of {len(e)} evaluation row(s) repeat a "
                                                         f"training prompt or row exactly: their score measures "
                                                         f"memory"))
        if index is not None:
            exact = set(leaked)
            near = [i for i in index.matches(e.near) if i not in exact]
            if near:
                findings.append(e.finding("nearLeakage", near, f"{len(near)} of {len(e)} evaluation row(s) nearly "
                                                               f"repeat a training row (similarity ≥ "
                                                               f"{policy.near_duplicate_similarity}): their score "
                                                               f"partly measures memory"))
        _, eval_json = _answer_format(e)
        findings += _coverage(t, e, train_json, eval_json)
    decide(findings, policy)
    return findings, near_info


def token_findings(lengths: list[int], loss_tokens: list[int], cut_loss: list[int], numbers: list[int],
                   max_length: int, name: str = "train") -> list[Finding]:
    """`truncated` and `noLoss` from each sample's tokens: its length, the tokens that carry loss, and those of
    them maxLength cuts off."""
    total = len(lengths)
    cut = [i for i in range(total) if cut_loss[i] > 0 and loss_tokens[i] > cut_loss[i]]
    none = [i for i in range(total) if loss_tokens[i] <= cut_loss[i]]
    out = []
    if cut:
        rows = [numbers[i] for i in cut]
        out.append(Finding("truncated", name, len(cut), _share(len(cut), total), rows,
                           f"{len(cut)} row(s) have their answer cut by maxLength {max_length}: loss on a partial "
                           f"answer (rows {_rows_text(rows)})", drop=rows))
    if none:
        rows = [numbers[i] for i in none]
        out.append(Finding("noLoss", name, len(none), _share(len(none), total), rows,
                           f"{len(none)} row(s) have no token left that carries loss (answer beyond maxLength "
                           f"{max_length}, or none): they train nothing (rows {_rows_text(rows)})", drop=rows))
    return out


RULES = {"duplicates": "duplicates", "nearDuplicates": "near_duplicates", "conflicts": "conflicts",
         "leakage": "leakage", "nearLeakage": "near_leakage", "size": "size", "answerFormat": "answer_format", "coverage": "coverage",
         "truncated": "truncated", "noLoss": "no_loss", "emptyTurns": "empty_turns",
         "specialTokens": "special_tokens"}


def decide(findings: list[Finding], policy: DataQuality) -> None:
    """Each finding's action under the policy: the rule's when its share is above the threshold, else warn."""
    for f in findings:
        if f.action == "info":
            continue
        rule = getattr(policy, RULES[f.check])
        if f.check == "size":
            f.action = rule.action if f.action == "warn" else "info"
        else:
            f.action = rule.action if f.share > rule.threshold else "warn"


def dropped(findings: list[Finding], name: str) -> set[int]:
    """Row numbers of `name`'s file that the findings' drops remove."""
    return {n for f in findings if f.action == "drop" and f.file == name for n in f.drop}


def raise_failures(findings: list[Finding]) -> None:
    failed = [f for f in findings if f.action == "fail"]
    if failed:
        raise DataQualityError("the data fails its quality checks (dataset.quality): " + "; ".join(
            f"{f.check} in {f.file}: {f.message}" for f in failed))


def report(findings: list[Finding], near: dict[str, Any], dropped_rows: dict[str, int]) -> dict[str, Any]:
    """status.plan.data: the findings (fail, then drop, then warn, then info), what was dropped, and what the
    near-duplicate search covered."""
    order = {"fail": 0, "drop": 1, "warn": 2, "info": 3}
    return {"findings": [f.as_dict() for f in sorted(findings, key=lambda f: order[f.action])],
            "dropped": dropped_rows, "nearDuplicates": near}


def describe(data: dict[str, Any] | None) -> list[str]:
    """The report in lines, for a terminal."""
    if not data:
        return []
    lines = []
    for f in data.get("findings") or []:
        lines.append(f"quality   {f['action']:<5} {f['check']} ({f['file']}, {f['count']} = {f['share']:.1%}): "
                     f"{f['message']}")
    if not lines:
        lines.append("quality   no findings")
    near = data.get("nearDuplicates") or {}
    if near.get("limited"):
        lines.append(f"          near duplicates searched in the first {near['searchedRows']} training rows only "
                     f"(dataset.quality.nearDuplicateMaxRows)")
    return lines
