"""Evaluation users can read: greedy answers to held-out prompts, compared with the expected answers.

Eval loss says little to someone who wants a model that does a task. At each evaluation (and before training and
at the end) the trainer answers up to `evaluation.prompts` held-out prompts greedily, as a served model would,
and scores the answers:

    exactMatch   answers equal to the expected ones: for an expected answer that is JSON, equal parsed values
                 (key order and spacing do not matter); otherwise equal text, ignoring surrounding whitespace
    validJson    of the prompts whose expected answer is a JSON object or array, answers that parse as JSON

A few (prompt, expected, answer) samples go to the result, so a reader sees what the numbers mean.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_AUTO_NEW_TOKENS = 1024
SAMPLE_CHARS = 300  # a sample's prompt, expected and answer are cut to this many characters in the result


@dataclass
class HeldOut:
    prompt: list[dict[str, Any]] | str  # messages before the answer, or a plain-text prompt
    expected: str


def held_out(rows, limit: int) -> list[HeldOut]:
    """The first `limit` eval rows as (prompt, expected answer): a conversation's last assistant turn is the
    answer and what precedes it the prompt; prompt-completion rows are that already. Plain text has no prompt."""
    out: list[HeldOut] = []
    for row in rows:
        if len(out) >= limit:
            break
        messages = row.get("messages")
        if isinstance(messages, list):
            last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
            if last:
                out.append(HeldOut(messages[:last], messages[last].get("content") or ""))
            continue
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, list) and isinstance(completion, list):
            answer = next((m.get("content") or "" for m in completion if m.get("role") == "assistant"), None)
            if answer is not None:
                out.append(HeldOut(prompt, answer))
        elif isinstance(prompt, str) and isinstance(completion, str):
            out.append(HeldOut(prompt, completion))
    return out


def with_examples(item: HeldOut, shots: list[HeldOut]) -> HeldOut:
    """The held-out prompt with training rows before it as worked examples (few-shot prompting): for chat, each
    example a user turn and its assistant answer after the prompt's system turns; for plain text, each example's
    prompt and answer, a blank line apart."""
    if isinstance(item.prompt, list):
        system = [m for m in item.prompt if m.get("role") == "system"]
        rest = [m for m in item.prompt if m.get("role") != "system"]
        examples = [m for shot in shots if isinstance(shot.prompt, list)
                    for m in [*(t for t in shot.prompt if t.get("role") != "system"),
                              {"role": "assistant", "content": shot.expected}]]
        return HeldOut(system + examples + rest, item.expected)
    text = "".join(f"{shot.prompt}{shot.expected}\n\n" for shot in shots if isinstance(shot.prompt, str))
    return HeldOut(text + item.prompt, item.expected)


def _json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except (ValueError, TypeError):
        return False, None


def structured(expected: str) -> bool:
    """Whether an expected answer is a JSON object or array (the answers validJson is about)."""
    ok, value = _json(expected)
    return ok and isinstance(value, (dict, list))


def matches(expected: str, answer: str) -> bool:
    ok, want = _json(expected)
    if ok:
        got_ok, got = _json(answer)
        return got_ok and got == want
    return answer.strip() == expected.strip()


def score(items: list[HeldOut], answers: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"prompts": len(items)}
    if not items:
        return out
    out["exactMatch"] = round(sum(matches(h.expected, a) for h, a in zip(items, answers)) / len(items), 4)
    json_items = [(h, a) for h, a in zip(items, answers) if structured(h.expected)]
    if json_items:
        out["validJson"] = round(sum(_json(a)[0] for _, a in json_items) / len(json_items), 4)
    return out


def _cut(text: Any) -> str:
    if not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False)
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


def samples(items: list[HeldOut], answers: list[str], count: int) -> list[dict[str, Any]]:
    """The first `count` (prompt, expected, answer) triples, the prompt shown as its last user message."""
    out = []
    for h, a in list(zip(items, answers))[:count]:
        prompt = h.prompt
        if isinstance(prompt, list):
            users = [m.get("content") for m in prompt if m.get("role") == "user"]
            prompt = users[-1] if users else prompt
        out.append({"prompt": _cut(prompt), "expected": _cut(h.expected), "answer": _cut(a),
                    "match": matches(h.expected, a)})
    return out


def max_new_tokens(tokenizer, items: list[HeldOut], setting: int | None) -> int:
    """`setting`, or twice the longest expected answer plus 16 tokens: an answer longer than that cannot match,
    so generating further only costs time (a model that has not learnt to stop rambles to the limit)."""
    if setting:
        return setting
    longest = max((len(tokenizer(h.expected, add_special_tokens=False)["input_ids"]) for h in items), default=0)
    return min(MAX_AUTO_NEW_TOKENS, 2 * longest + 16)


def stop_ids(model, tokenizer) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos and the model's generation eos ids."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _encode(tokenizer, prompt: list[dict[str, Any]] | str) -> list[int]:
    if isinstance(prompt, list):
        out = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(out["input_ids"])
    return list(tokenizer(prompt)["input_ids"])  # as TRL tokenizes a plain-text prompt


# A sample answer that can no longer score still shows how it began: at least this many tokens.
MIN_TOKENS = 16
LITERALS = ("true", "false", "null", "NaN", "Infinity")  # the JSON values json.loads reads that are words


def can_still_score(expected: str, answer: str) -> bool:
    """Whether `answer`, a prefix of what the model is writing, can still become an exact match or, for an expected
    answer that is JSON, valid JSON. When it cannot, generating further changes no score.

    A JSON answer is dead once it starts with a character no JSON value starts with, or once a whole value was
    followed by anything but whitespace (json.loads would say "Extra data"); a text answer once it stops being a
    prefix of the expected text."""
    if answer.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
        return True
    text = answer.lstrip()
    if not text:
        return True
    if _json(expected)[0]:
        if text[0] not in '{["-0123456789tfnNI':
            return False
        if text[0] in "tfnNI" and not any(word.startswith(text) or text.startswith(word) for word in LITERALS):
            return False
        try:
            value, end = json.JSONDecoder().raw_decode(text)
        except ValueError:
            return True  # incomplete so far (or broken: left to the token limit, as before)
        if end == len(text) or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                and text[end] in ".eE"):
            return True  # a number may go on: "12." before "12.5", "1e" before "1e3"
        return not text[end:].strip()
    wanted = expected.strip()
    return wanted.startswith(text) or text.rstrip() == wanted


@contextlib.contextmanager
def serving_form(model):
    """The model as a server runs it, for the length of a generation, and exactly as it was afterwards.

    A LoRA adapter that is still all zeros (before training) is switched off: the base alone gives the same logits
    without the adapter's extra matrix products. A trained adapter on a CPU is merged into the base weights, as
    serving stacks without LoRA kernels do, and the base weights are put back bit for bit afterwards (a copy of
    each merged weight; subtracting the adapter again would leave rounding errors in the frozen base). On a GPU,
    and for 4-bit bases, the adapter stays as it is: merging there costs a copy of GPU memory or loses precision."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        yield model
        return
    layers = [m for m in model.modules() if hasattr(m, "lora_B") and hasattr(m, "merge") and not m.merged]
    # the B matrices (zero until trained): Linear layers keep them in lora_B, Embedding layers in lora_embedding_B
    adapters = [b.weight for m in layers for b in m.lora_B.values()] + \
        [b for m in layers for b in getattr(m, "lora_embedding_B", {}).values()]
    if not adapters or any(type(w).__name__ != "Parameter" for w in adapters):  # sharded (FSDP) or unusual: as is
        yield model
        return
    if all(float(w.detach().abs().max()) == 0.0 for w in adapters):
        with model.disable_adapter():
            yield model
        return
    weights = [m.get_base_layer().weight for m in layers]
    if any(w.device.type != "cpu" or not w.dtype.is_floating_point or w.element_size() < 2 for w in weights) or \
            any(type(w).__name__ != "Parameter" for w in weights):
        yield model
        return
    saved = [w.detach().clone() for w in weights]
    for m in layers:
        m.merge()
    try:
        yield model
    finally:
        for m in layers:
            m.merged_adapters = []  # the base weight is restored below, not by subtracting the adapter
        with torch_no_grad():
            for w, original in zip(weights, saved):
                w.data.copy_(original)


def torch_no_grad():
    import torch

    return torch.no_grad()


def give_up_criterion(tokenizer, expected: list[str], shown: list[bool], width: int):
    """A transformers StoppingCriteria: a row of the batch stops once no further token can change its scores (a row
    shown as a sample once it also has MIN_TOKENS to show). Generation ends when every row has ended, by its stop
    token or by this."""
    import torch
    from transformers import StoppingCriteria

    class GiveUp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = [(not show or len(row) - width >= MIN_TOKENS) and not can_still_score(
                want, tokenizer.decode(row[width:], skip_special_tokens=True))
                for row, want, show in zip(input_ids, expected, shown)]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return GiveUp()


def generate(model, tokenizer, items: list[HeldOut], new_tokens: int, batch_size: int = 32,
             bar: str | None = None, shown: int = 0) -> list[str]:
    """Greedy answers, batched (left-padded, similar lengths together), in the order of `items`; `bar`: the label
    of a progress bar on the terminal (None: no bar); `shown`: the first items are samples a reader sees."""
    import torch
    from transformers import StoppingCriteriaList

    encoded = [_encode(tokenizer, h.prompt) for h in items]
    order = sorted(range(len(items)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(items)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = stop_ids(model, tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    progress = _bar(bar, len(items))
    try:
        with serving_form(model) as served:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                    attention[row, width - len(encoded[i]):] = 1
                give_up = give_up_criterion(tokenizer, [items[i].expected for i in batch], [i < shown for i in batch],
                                            width)
                with torch.no_grad():
                    out = served.generate(input_ids=ids.to(device), attention_mask=attention.to(device),
                                          max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos,
                                          pad_token_id=pad, use_cache=True,
                                          stopping_criteria=StoppingCriteriaList([give_up]))
                for row, i in enumerate(batch):
                    answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
                if progress is not None:
                    progress.update(len(batch))
    finally:
        if progress is not None:
            progress.close()
        model.train(was_training)
    return answers


def _bar(label: str | None, total: int):
    if label is None:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="prompt", leave=True)


class AnswerEval:
    """Held-out prompts answered and scored at each evaluation of one run."""

    def __init__(self, tokenizer, rows, prompts: int, max_new_tokens_setting: int | None, sample_count: int,
                 progress_bar: bool = False):
        self.tokenizer = tokenizer
        self.progress_bar = progress_bar  # a bar on the terminal while answering
        self.items = held_out(rows, prompts) if rows is not None else []
        self.new_tokens = max_new_tokens(tokenizer, self.items, max_new_tokens_setting) if self.items else 0
        self.sample_count = sample_count
        self.latest: dict[str, Any] | None = None  # scores and samples of the latest evaluation
        self.step: int | None = None
        self.batch_size = 32  # many answers at once: on a CPU a decoding step costs about the same for 1 or 32
        self.shots, self.shot_rows = 0, None  # few-shot prompting, measured with the baseline (evaluation.fewShot)
        self.few_shot_scores: dict[str, Any] | None = None
        self.latest_answers: list[str] | None = None  # every answer of the latest evaluation (serving parity)

    def __bool__(self) -> bool:
        return bool(self.items)

    def _generate(self, model, step: int, items: list[HeldOut] | None = None, label: str | None = None) -> list[str]:
        """Answers in batches of `batch_size`, halved after running out of GPU memory: evaluation must never be
        what fails a run."""
        import torch

        label = label or f"held-out prompts, {'before training' if step == 0 else f'step {step}'}"
        bar = label if self.progress_bar else None
        while True:
            try:
                return generate(model, self.tokenizer, self.items if items is None else items, self.new_tokens,
                                self.batch_size, bar=bar, shown=self.sample_count if items is None else 0)
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                torch.cuda.empty_cache()
                log.warning("out of GPU memory answering held-out prompts; retrying %d at a time", self.batch_size)

    def few_shot(self, model) -> dict[str, Any] | None:
        """The base model prompted with `shots` training rows as examples, scored on the same held-out prompts:
        what prompting alone does, beside zero-shot before training and fine-tuned after. Run with the baseline
        (the same process, dtype and model form); as many examples as fit the model's context with the answer;
        never what fails a run."""
        examples = held_out(self.shot_rows or [], self.shots)
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        try:
            while examples:
                items = [with_examples(h, examples) for h in self.items]
                if not limit or max(len(_encode(self.tokenizer, h.prompt)) for h in items) + self.new_tokens <= limit:
                    break
                examples = examples[:-1]
            if not examples or not self.items:
                return None
            answers = self._generate(model, 0, items, f"held-out prompts, {len(examples)}-shot")
        except Exception as e:  # a measurement beside the run: it must not fail the run
            log.warning("few-shot prompting not measured: %s", e)
            return None
        scores = score(items, answers)
        log.info("%d-shot prompting: exact match %.1f%%", len(examples), 100 * scores.get("exactMatch", math.nan))
        return {"shots": len(examples), **{k: v for k, v in scores.items() if k != "prompts"}}

    def run(self, model, step: int) -> dict[str, Any]:
        if self.step == step and self.latest is not None:  # the final evaluation right after a periodic one
            return self.latest
        answers = self._generate(model, step)
        if step == 0 and self.shots and self.few_shot_scores is None:
            self.few_shot_scores = self.few_shot(model)
        scores = score(self.items, answers)
        self.latest = {**scores, "samples": samples(self.items, answers, self.sample_count)}
        self.latest_answers = answers
        self.step = step
        log.info("step %d: %d held-out answers, exact match %.1f%%", step, len(answers),
                 100 * scores.get("exactMatch", math.nan))
        return self.latest


def fingerprint(rows, prompts: int, max_new_tokens: int | None) -> str:
    """sha256 of the evaluation data and how it is answered: two runs with the same fingerprint were measured on
    the same held-out rows, alike, so their scores can be compared (a promotion gate compares only those)."""
    import hashlib

    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(dict(row), sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    digest.update(json.dumps({"prompts": prompts, "maxNewTokens": max_new_tokens}).encode())
    return digest.hexdigest()


class EvaluationRecord:
    """What one run measured on its evaluation data: before training, at each evaluation, at the end. Kept in
    `<output>/evaluation.json` as it grows, so a resumed run keeps its baseline and history."""

    FILE = "evaluation.json"

    def __init__(self, folder, answers: AnswerEval | None):
        from pathlib import Path

        self.path = Path(folder) / self.FILE
        self.answers = answers
        saved: dict[str, Any] = {}
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError):
                saved = {}
        self.before: dict[str, Any] | None = saved.get("before")
        self.before_answers: list[str] = saved.get("beforeAnswers", [])
        self.few_shot: dict[str, Any] | None = saved.get("fewShot")
        self.history: list[dict[str, Any]] = saved.get("history", [])
        self.step_override: int | None = None  # the step an evaluation of reloaded (best) weights is recorded at
        self.fingerprint: str | None = None  # of the held-out data (`fingerprint`)
        self.parity: dict[str, Any] | None = None  # the served adapter's answers against the trainer's

    @staticmethod
    def entry(step: int, logs: dict[str, Any]) -> dict[str, Any]:
        names = {"evalLoss": "eval_loss", "meanTokenAccuracy": "eval_mean_token_accuracy",
                 "exactMatch": "eval_exact_match", "validJson": "eval_valid_json"}
        out: dict[str, Any] = {"step": step}
        for key, name in names.items():
            value = logs.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[key] = round(float(value), 6)
        return out

    def observe(self, step: int, logs: dict[str, Any]) -> None:
        """An evaluation's logged metrics (eval_loss, eval_mean_token_accuracy, eval_exact_match, ...)."""
        self.history = sorted([h for h in self.history if h["step"] != step] + [self.entry(step, logs)],
                              key=lambda h: h["step"])
        self.save()

    def mark_baseline(self) -> None:
        """The evaluation just observed ran before training: it is the baseline."""
        if self.history and self.history[0]["step"] == 0:
            self.before = self.history.pop(0)
            if self.answers and self.answers.latest:
                self.before_answers = [s["answer"] for s in self.answers.latest["samples"]]
            if self.answers and self.answers.few_shot_scores is not None:
                self.few_shot = self.answers.few_shot_scores
            self.save()

    def save(self) -> None:
        if os.environ.get("RANK", "0") == "0":  # one writer per run
            self.path.write_text(json.dumps({"before": self.before, "beforeAnswers": self.before_answers,
                                             "fewShot": self.few_shot, "history": self.history}, indent=2) + "\n")

    def summary(self, step: int | None = None) -> dict[str, Any] | None:
        """The result's `evaluation`: prompts answered, before, after (the evaluation at `step`, the result's
        weights; the last one by default), the history, and samples with the answers before and after."""
        if not self.history and self.before is None:
            return None
        out: dict[str, Any] = {"prompts": len(self.answers.items) if self.answers else 0}
        if self.fingerprint:
            out["fingerprint"] = self.fingerprint
        if self.parity is not None:
            out["parity"] = self.parity
        if self.before is not None:
            out["before"] = {k: v for k, v in self.before.items() if k != "step"}
        if self.few_shot is not None:
            out["fewShot"] = self.few_shot
        if self.history:
            at = [h for h in self.history if h["step"] == step]
            out["after"] = at[-1] if at else self.history[-1]
            out["history"] = self.history
        latest = self.answers.latest if self.answers else None
        if latest:
            samples = [dict(s) for s in latest["samples"]]
            for sample, before in zip(samples, self.before_answers):
                sample["before"] = before
            out["samples"] = samples
        return out
