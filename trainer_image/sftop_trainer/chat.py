"""Loss only on what the model should learn: the assistant's turns, on any chat template.

At inference a chat model sees `apply_chat_template(history, add_generation_prompt=True)`, tokenized, and writes
the answer and its end-of-turn token. Training puts the loss on exactly those tokens, after exactly those prompt
tokens. For each assistant turn of a conversation:

- its span is the text the model writes: what follows `history + generation prompt` in the rendered conversation,
  through the turn's last special token (its end-of-turn marker: `<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`,
  `</s>`); what the template puts after it (a newline between turns) is the template's, not the model's. A
  template that marks assistant turns with `{% generation %}` states its spans itself, and they are used instead
  (ending at their end-of-turn token too).
- its tokens: the prompt is tokenized on its own, as at inference, and the answer's tokens follow. Tokenizing the
  whole conversation at once can merge characters across the prompt/answer boundary (`"\\n\\n{"`), and then the
  model would learn after prompt tokens it never sees at inference.

Every assistant turn of a multi-turn conversation carries loss; system, user and tool turns do not. Where a
tokenizer merges an earlier answer's first characters with its prompt once the answer is history, no one token
sequence matches every turn's inference prompt; the last turn's is matched. The span method needs a template
that renders earlier turns the same way whatever follows them. Most do; for those that
do not (Qwen3's, which drops the reasoning of earlier turns), TRL's training version of the template
(`trl.chat_template_utils.get_training_chat_template`), which renders history consistently, renders the
conversations instead. A template that cannot be split either way is an error that says what to do.

TRL's own assistant masks (its training templates' `{% generation %}` markers) are not used for the spans: they
put loss on tokens the model never writes (Qwen 2.5's newline after the assistant header and after `<|im_end|>`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from sftop_trainer.errors import ConfigError

log = logging.getLogger(__name__)

MARKERS, TURNS, TRL_TURNS = "markers", "turns", "trl-turns"

_FIX = ("set training.assistantOnlyLoss: false to train on every token, or give spec.chatTemplate (with "
        "{% generation %} markers around what the assistant writes)")


class TemplateSplitError(ConfigError):
    """A conversation cannot be split into its turns with the chat template."""


@dataclass
class AssistantMask:
    """How assistant turns are found for one tokenizer. `method`: markers (the template's `{% generation %}`
    blocks), turns (each turn rendered with the model's template) or trl-turns (with TRL's training version of it);
    `template`: the chat template the conversations are rendered with."""

    method: str
    template: str
    specials: list[str] = field(default_factory=list)
    warned: set[str] = field(default_factory=set)

    def describe(self) -> str:
        return {MARKERS: "assistant turns, as the chat template's {% generation %} blocks mark them",
                TURNS: "assistant turns, found by rendering each turn with the chat template",
                TRL_TURNS: "assistant turns, found by rendering each turn with TRL's training version of the chat "
                           "template (the model's own renders earlier turns differently once later ones follow)",
                }[self.method]

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message)


def _own_template(tokenizer) -> str | None:
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named variants: apply_chat_template uses the default one
        template = template.get("default") or next(iter(template.values()), None)
    return template


def _special_tokens(tokenizer) -> list[str]:
    """The tokenizer's special tokens as text, longest first (so `<|im_end|>` wins over any shorter prefix)."""
    found = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    found.update(t for t in tokenizer.all_special_tokens if t)
    return sorted((t for t in found if t.strip()), key=len, reverse=True)


_PROBES = (  # conversations a template must split, with a system turn and without (Gemma's has no system role)
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say yes."},
     {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "Say no."},
     {"role": "assistant", "content": "No."}],
    [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."},
     {"role": "user", "content": "Say no."}, {"role": "assistant", "content": "No."}],
)


def _splits(tokenizer, mask: AssistantMask) -> TemplateSplitError | None:
    """None when the template splits a probe conversation (with a system turn or without), else the error."""
    error = None
    for messages in _PROBES:
        try:
            assistant_spans(tokenizer, mask, messages)
            return None
        except TemplateSplitError as e:
            error = error or e
    return error


def choose(tokenizer) -> AssistantMask:
    """How to find assistant turns with `tokenizer`'s chat template: the template's own markers, else rendering
    turns with the template, else with TRL's training version of it."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    own = _own_template(tokenizer)
    if not own:
        raise ConfigError("assistant-only loss needs a chat template and the tokenizer has none; set "
                          "spec.chatTemplate")
    specials = _special_tokens(tokenizer)
    if has_generation_markers(own):
        return AssistantMask(MARKERS, own, specials)
    mask = AssistantMask(TURNS, own, specials)
    own_error = _splits(tokenizer, mask)
    if own_error is None:
        return mask
    try:
        training = get_training_chat_template(tokenizer)
    except ValueError:  # TRL has no training version of this template
        training = None
    if training is None:
        raise TemplateSplitError(f"{own_error}. {_FIX}")
    mask = AssistantMask(TRL_TURNS, training, specials)
    trl_error = _splits(tokenizer, mask)
    if trl_error is not None:
        raise TemplateSplitError(f"{own_error}; TRL's training version of the template fails too: {trl_error}. "
                                 f"{_FIX}")
    log.info("the chat template renders earlier turns differently once later turns follow; conversations are "
             "rendered with TRL's training version of it")
    return mask


class TurnMasker:
    """Assistant-only (and completion-only) loss on conversational rows, for one run.

    `check(row)` runs while the data is converted: a row the template cannot split is skipped and counted like
    any unusable row. `tokenize(dataset)` then gives SFTTrainer `input_ids` and `assistant_masks`. Rows it does not
    mask (plain text, string prompt-completion, or loss on every token) pass through to TRL's own handling."""

    def __init__(self, tokenizer, assistant_only_loss: bool | None, completion_only_loss: bool | None):
        self.tokenizer = tokenizer
        self.assistant_only = assistant_only_loss is not False
        self.completion_only = completion_only_loss is not False
        self._mask: AssistantMask | None = None

    @property
    def mask(self) -> AssistantMask:
        if self._mask is None:
            self._mask = choose(self.tokenizer)
        return self._mask

    def split(self, row: dict[str, Any]) -> tuple[list[dict[str, Any]], int] | None:
        """(messages, index of the first message whose assistant turns carry loss), or None for a row left to TRL."""
        if isinstance(row.get("messages"), list):
            return (row["messages"], 0) if self.assistant_only else None
        if isinstance(row.get("prompt"), list) and isinstance(row.get("completion"), list):
            return (row["prompt"] + row["completion"], len(row["prompt"])) if self.completion_only else None
        return None

    def check(self, row: dict[str, Any]) -> str | None:
        """None when the row can be masked (or is not masked here), else why not (a skip reason)."""
        found = self.split(row)
        if found is None or not self.tokenizer.chat_template:  # without a template the trainer says so, once
            return None
        mask = self.mask  # a template that cannot be split at all fails the run here, not row by row
        try:
            _, spans = assistant_spans(self.tokenizer, mask, *found)
        except TemplateSplitError as e:
            return "the chat template cannot render it" if "cannot render" in str(e) else \
                "the chat template cannot split it into turns"
        return None if spans else "no assistant turn to train on"

    def applies(self, dataset) -> bool:
        return len(dataset) > 0 and self.split(dataset[0]) is not None

    def tokenize(self, dataset):
        """The dataset as SFTTrainer's tokenized rows (`input_ids`, `assistant_masks`), when this masker applies."""
        if dataset is None or not self.applies(dataset):
            return dataset
        return dataset.map(lambda row: encode(self.tokenizer, self.mask, *self.split(row)),
                           remove_columns=dataset.column_names)

    def describe(self, dataset) -> str:
        """What carries loss, in words, for the data report."""
        if self.applies(dataset):
            part = "assistant turns" if "messages" in dataset.column_names else "the completion's assistant turns"
            return self.mask.describe().replace("assistant turns", part, 1)
        columns = dataset.column_names
        if "prompt" in columns and self.completion_only:
            return "the completion"
        return "every token"


def _render(tokenizer, template: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja2 errors, and templates' own raise_exception() ("roles must alternate", ...)
        raise TemplateSplitError(f"the chat template cannot render the conversation up to message {len(messages)} "
                                 f"({type(e).__name__}: {e})") from e


def _marked_spans(tokenizer, mask: AssistantMask, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, indices = render_jinja_template(conversations=[messages], chat_template=mask.template,
                                                  return_assistant_tokens_mask=True, add_generation_prompt=False,
                                                  **tokenizer.special_tokens_map)
    except Exception as e:
        raise TemplateSplitError(f"the chat template cannot render the conversation ({type(e).__name__}: {e})") \
            from e
    return rendered[0], [tuple(span) for span in indices[0]]


_NEXT = {"role": "user", "content": "Next."}  # a message after a turn, to see how the template closes the turn


def _whole(text: str, specials: list[str]) -> str:
    """`text` without a trailing piece of a special token (a shared prefix can end inside one: `<|`)."""
    for cut in range(1, max((len(s) for s in specials), default=1)):
        tail = text[-cut:]
        if cut <= len(text) and any(s.startswith(tail) and s != tail for s in specials):
            return text[:-cut]
    return text


def _turn_end(turn: str, specials: list[str]) -> int | None:
    """Where the model stops writing in `turn`: after its last special token, when only whitespace follows it.
    None when the turn has no end-of-turn token there (text follows its last special token: a <think> block)."""
    found = [(turn.rfind(s) + len(s), s) for s in specials if s in turn]
    if not found:
        return None
    end = max(position for position, _ in found)
    return end if not turn[end:].strip() else None


def assistant_spans(tokenizer, mask: AssistantMask, messages: list[dict[str, Any]], first: int = 0) \
        -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the (start, end) characters of each assistant turn from message `first` on:
    what the model writes after the generation prompt, through the turn's end-of-turn token."""
    if mask.method == MARKERS:
        text, spans = _marked_spans(tokenizer, mask, messages)
        if first:
            prompt = _render(tokenizer, mask.template, messages[:first], add_generation_prompt=True)
            spans = [(a, b) for a, b in spans if a >= len(prompt)]
        # A marked span may reach past the end-of-turn token (LFM2.5 marks the newline after <|im_end|>): the
        # model stops at that token and never writes what follows it.
        trimmed = []
        for a, b in spans:
            end = _turn_end(text[a:b], mask.specials)
            trimmed.append((a, a + end) if end else (a, b))
        return text, trimmed
    full = _render(tokenizer, mask.template, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or i < first:
            continue
        prompt = _render(tokenizer, mask.template, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, mask.template, messages[: i + 1], add_generation_prompt=False)
        if not through.startswith(prompt):
            raise TemplateSplitError(f"the chat template renders assistant message {i + 1} without the generation "
                                     f"prompt it ends the conversation with at inference, so what the model writes "
                                     f"cannot be located")
        if not full.startswith(prompt):
            raise TemplateSplitError(f"the chat template renders the conversation before assistant message {i + 1} "
                                     f"differently once later messages follow, so what the model writes cannot be "
                                     f"located")
        start = len(prompt)
        try:
            followed = _render(tokenizer, mask.template, messages[: i + 1] + [_NEXT], add_generation_prompt=False)
        except TemplateSplitError:
            followed = through
        last = i == len(messages) - 1
        # The turn as the template closes it whether or not a message follows (Phi-3 adds an end-of-text after
        # the last turn only); the model stops after its end-of-turn token there.
        common = _whole(os.path.commonprefix([through[start:], followed[start:]]), mask.specials)
        end = _turn_end(common, mask.specials)
        if end is None:
            # The closing depends on what follows (gpt-oss ends the last turn with <|return|>, others with <|end|>;
            # GLM's turn ends with the next role's token): take the one this conversation renders.
            end = _turn_end(through[start:], mask.specials) if last else next(
                (len(common) + len(s) for s in mask.specials if full[start + len(common):].startswith(s)), None)
        if end is None:
            mask.warn_once("no-end", "the chat template ends assistant turns without a special token: a model "
                                     "trained on it may not learn where to stop")
            end = len(common.rstrip())
        content = message.get("content")
        if isinstance(content, str) and content.strip() and content.strip() not in full[start:start + end]:
            raise TemplateSplitError(f"the chat template renders assistant message {i + 1} differently when another "
                                     f"message follows it, so what the model writes cannot be located")
        if full[start:start + end] != (through if last else followed)[start:start + end]:
            raise TemplateSplitError(f"the chat template renders assistant message {i + 1} differently once later "
                                     f"messages follow, so what the model writes cannot be located")
        if end > 0:
            spans.append((start, start + end))
    return full, spans


def _ids(tokenizer, text: str) -> list[int]:
    # What apply_chat_template(tokenize=True) does with the rendered text.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode(tokenizer, mask: AssistantMask, messages: list[dict[str, Any]], first: int = 0) -> dict[str, list[int]]:
    """`input_ids` and `assistant_masks` (1 on the tokens that carry loss) for one conversation, the assistant turns
    from message `first` on carrying loss: each turn's prompt tokenized as at inference, its answer after it."""
    text, spans = assistant_spans(tokenizer, mask, messages, first)
    ids: list[int] = []
    labels: list[int] = []
    for start, end in spans:
        prompt = _ids(tokenizer, text[:start])
        if prompt[: len(ids)] != ids:
            # An earlier answer tokenizes differently once it is history (its first characters merge with the
            # prompt's last ones): no one sequence matches every turn's inference prompt. Match the last turn's.
            mask.warn_once("history", "a conversation's earlier turns tokenize differently once later turns follow; "
                                      "they are trained as the last turn's prompt shows them")
            return _encode_from_history(tokenizer, mask, text, spans)
        labels += [0] * (len(prompt) - len(ids))
        ids = prompt
        answer = _answer(tokenizer, mask, text, start, end, prompt)
        if answer is None:
            return _encode_whole(tokenizer, text, spans)
        ids = ids + answer
        labels += [1] * len(answer)
    return {"input_ids": ids, "assistant_masks": labels}


def _answer(tokenizer, mask: AssistantMask, text: str, start: int, end: int, prompt: list[int]) -> list[int] | None:
    """The answer's tokens after `prompt` (the tokens of text[:start]); None where no tokenization keeps both."""
    through = _ids(tokenizer, text[:end])
    if through[: len(prompt)] == prompt:
        return through[len(prompt):]
    # The tokenizer merges characters across the prompt/answer boundary. At inference the model reads the prompt's
    # own tokens and writes the answer after them: train it that way.
    answer = _ids(tokenizer, text[start:end])
    if tokenizer.decode(prompt + answer) == tokenizer.decode(through):
        return answer
    mask.warn_once("boundary", "the tokenizer changes the answer's first token when it follows the prompt (a prefix "
                               "space); those conversations follow the whole conversation's tokenization")
    return None


def _encode_from_history(tokenizer, mask: AssistantMask, text: str, spans: list[tuple[int, int]]) \
        -> dict[str, list[int]]:
    """The last turn's prompt tokenized whole, as inference does, earlier turns' loss on the tokens their text
    became there; then the last answer."""
    start, end = spans[-1]
    enc = tokenizer(text[:start], add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [int(any(a < e and b > s for s, e in spans[:-1])) for a, b in enc["offset_mapping"]]
    answer = _answer(tokenizer, mask, text, start, end, ids)
    if answer is None:
        return _encode_whole(tokenizer, text, spans)
    return {"input_ids": ids + answer, "assistant_masks": labels + [1] * len(answer)}


def _encode_whole(tokenizer, text: str, spans: list[tuple[int, int]]) -> dict[str, list[int]]:
    end = spans[-1][1] if spans else len(text)
    enc = tokenizer(text[:end], add_special_tokens=False, return_offsets_mapping=True)
    labels = [int(any(a < e and b > s for s, e in spans)) for a, b in enc["offset_mapping"]]
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": labels}
