"""Loss on exactly what the model writes, on real chat templates: SmolLM2's (with its real tokenizer) and every
text chat template that ships inside the installed TRL (read from the package, with SmolLM2's tokenizer given
the template's special tokens). For each assistant turn, the training tokens before it are exactly the tokens
`apply_chat_template(history, add_generation_prompt=True)` gives at inference, and its loss covers the answer and
its end-of-turn token, nothing of the system or user turns."""

import re
from pathlib import Path

import pytest

from sftop_trainer import chat

SYSTEM = "You turn requests into Task API calls."
CHAT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Remind me to water the plants"},
    {"role": "assistant", "content": '{"action": "create", "title": "water the plants"}'},
    {"role": "user", "content": "Done with water the plants"},
    {"role": "assistant", "content": '{"action": "complete", "title": "water the plants"}'},
]
SINGLE = CHAT[1:3]

# Templates for images (their content is a list of parts), and reasoning templates whose generation prompt opens
# a thinking block that earlier turns never show: assistant-only loss on them is an error that says so.
VISION = {"idefics3", "smolvlm", "llava_next", "qwen2_5_vl", "qwen3_vl", "lfm2_2_5_vl"}
CANNOT_SPLIT = {"deepseek_r1_distill", "deepseekv3", "nemotron_3_nano", "nemotron_3_super", "nemotron_3_ultra",
                "nemotron_3_5_lightning"}
# A newline that ends the generation prompt ("\n\n" in Llama 3's, "<think>\n" in Qwen 3.8's) merges with the
# answer's first characters in SmolLM2's byte-level tokenizer once the answer is history (Llama 3's own tokenizer
# splits it): no one token sequence then matches every turn's inference prompt, and the last turn's is matched.
MERGES_ACROSS_TURNS = {"llama3", "llama3_1", "llama3_2", "qwen3_8"}
# Templates that end an assistant turn with no special token (the model stops on the next role's token).
NO_END_TOKEN = {"glm4moe"}


def trl_templates() -> dict[str, str]:
    import trl

    folder = Path(trl.__file__).parent / "chat_templates"
    return {p.stem: p.read_text() for p in sorted(folder.glob("*.jinja"))
            if not p.stem.endswith("_training") and p.stem not in VISION}


_TOKENIZERS: dict[str, object] = {}


def with_template(smollm2_tokenizer, template: str):
    """SmolLM2's tokenizer with `template` and the special tokens it uses (<|...|>, <...>, [INST], ...)."""
    if template not in _TOKENIZERS:
        _TOKENIZERS[template] = _build(smollm2_tokenizer, template)
    return _TOKENIZERS[template]


def _build(smollm2_tokenizer, template: str):
    tokenizer = smollm2_tokenizer.__class__.from_pretrained(smollm2_tokenizer.name_or_path)
    literals = set(re.findall(r"<\|[^|<>\s]+\|>|<[a-z_/]+>|<\|[a-z_]+>|<[a-z_]+\|>|\[/?INST\]|<｜[^｜]+｜>", template))
    tokenizer.add_special_tokens({"additional_special_tokens": sorted(literals - {"<br>"})})
    tokenizer.chat_template = template
    return tokenizer


def loss_runs(ids: list[int], mask: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for k, bit in enumerate(mask + [0]):
        if bit and start is None:
            start = k
        elif not bit and start is not None:
            runs.append((start, k))
            start = None
    return runs


def inference_prompt(tokenizer, messages) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def check_turns(tokenizer, messages, *, prompts_match: str = "all") -> list[str]:
    """The loss runs, one per assistant turn, each after the inference prompt's exact tokens (every turn's, the
    last turn's, or none); returns their text."""
    mask = chat.choose(tokenizer)
    out = chat.encode(tokenizer, mask, messages)
    ids, bits = out["input_ids"], out["assistant_masks"]
    runs = loss_runs(ids, bits)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert len(runs) == len(turns), f"{len(runs)} loss runs for {len(turns)} assistant turns"
    texts = []
    for (start, end), turn in zip(runs, turns):
        text = tokenizer.decode(ids[start:end])
        assert messages[turn]["content"] in text
        for other in messages:
            if other["role"] != "assistant":
                assert other["content"] not in text
        if prompts_match == "all" or (prompts_match == "last" and turn == turns[-1]):
            assert ids[:start] == inference_prompt(tokenizer, messages[:turn]), f"turn {turn}: prompt tokens differ"
        texts.append(text)
    return texts


def test_smollm2_every_assistant_turn_and_its_end_token_carry_loss(smollm2_tokenizer):
    texts = check_turns(smollm2_tokenizer, CHAT)
    assert texts == [m["content"] + "<|im_end|>" for m in CHAT if m["role"] == "assistant"]
    assert chat.choose(smollm2_tokenizer).method == chat.TURNS  # its template has no {% generation %} markers


def test_smollm2_training_tokens_are_the_inference_prompt_plus_the_answer(smollm2_tokenizer):
    out = chat.encode(smollm2_tokenizer, chat.choose(smollm2_tokenizer), CHAT)
    for turn in (2, 4):
        prompt = inference_prompt(smollm2_tokenizer, CHAT[:turn])
        answer = smollm2_tokenizer(CHAT[turn]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        end = len(prompt) + len(answer)
        assert out["input_ids"][:end] == prompt + answer
        assert out["assistant_masks"][len(prompt):end] == [1] * len(answer)
        assert not any(out["assistant_masks"][:len(prompt)][len(prompt) - 10:])  # the header before it has none


def test_smollm2_default_system_line_is_in_the_prompt_never_in_the_loss(smollm2_tokenizer):
    """Without a system message the template adds its own line, as it does at inference."""
    out = chat.encode(smollm2_tokenizer, chat.choose(smollm2_tokenizer), SINGLE)
    ((start, _),) = loss_runs(out["input_ids"], out["assistant_masks"])
    assert smollm2_tokenizer.decode(out["input_ids"][:start]).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert out["input_ids"][:start] == inference_prompt(smollm2_tokenizer, SINGLE[:1])


@pytest.mark.parametrize("name", sorted(set(trl_templates()) - CANNOT_SPLIT))
def test_trl_templates_single_turn_prompt_and_loss(name, smollm2_tokenizer):
    tokenizer = with_template(smollm2_tokenizer, trl_templates()[name])
    (text,) = check_turns(tokenizer, SINGLE)
    if name not in NO_END_TOKEN:
        specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        assert any(text.endswith(s) for s in specials), f"{text!r} does not end with an end-of-turn token"


@pytest.mark.parametrize("name", sorted(set(trl_templates()) - CANNOT_SPLIT))
def test_trl_templates_multi_turn_loss_on_each_assistant_turn(name, smollm2_tokenizer):
    tokenizer = with_template(smollm2_tokenizer, trl_templates()[name])
    messages = CHAT if "System role not supported" not in trl_templates()[name] else CHAT[1:]
    mask = chat.choose(tokenizer)
    # Templates that rewrite earlier turns (Qwen3 drops their reasoning) render with TRL's training version, whose
    # history differs from what the model's own template shows a later turn; single turns still match exactly.
    if mask.method == chat.TRL_TURNS:
        check_turns(tokenizer, messages, prompts_match="none")
    else:
        check_turns(tokenizer, messages, prompts_match="last" if name in MERGES_ACROSS_TURNS else "all")


@pytest.mark.parametrize("name", sorted(CANNOT_SPLIT))
def test_templates_that_cannot_be_split_say_what_to_do(name, smollm2_tokenizer):
    tokenizer = with_template(smollm2_tokenizer, trl_templates()[name])
    with pytest.raises(chat.TemplateSplitError, match="assistantOnlyLoss: false.*spec.chatTemplate"):
        chat.choose(tokenizer)


def test_qwen3_renders_with_trls_training_template(smollm2_tokenizer):
    tokenizer = with_template(smollm2_tokenizer, trl_templates()["qwen3"])
    assert chat.choose(tokenizer).method == chat.TRL_TURNS


MISTRAL_STYLE = (  # written here: no template of this family ships with the installed packages
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def test_mistral_style_template_without_generation_prompt(smollm2_tokenizer):
    tokenizer = with_template(smollm2_tokenizer, MISTRAL_STYLE)
    texts = check_turns(tokenizer, CHAT[1:])
    assert texts == [m["content"] + tokenizer.eos_token for m in CHAT[1:] if m["role"] == "assistant"]


def test_rows_a_template_cannot_render_are_skipped_and_named(smollm2_tokenizer):
    tokenizer = with_template(smollm2_tokenizer, MISTRAL_STYLE)
    masker = chat.TurnMasker(tokenizer, None, None)
    assert masker.check({"messages": CHAT[1:]}) is None
    assert masker.check({"messages": CHAT}) == "the chat template cannot render it"  # a system turn: not alternating


def test_template_markers_are_used_when_the_template_has_them(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    mask = chat.choose(tokenizer)
    assert mask.method == chat.MARKERS
    texts = check_turns(tokenizer, CHAT)
    assert texts == [m["content"] + "<|im_end|>" for m in CHAT if m["role"] == "assistant"]
