"""How held-out answers are scored: what counts as a match, what counts as valid JSON, what a prompt is."""

from sftop_trainer.evaluate import HeldOut, held_out, matches, samples, score


def test_json_answers_match_by_parsed_value_not_spelling():
    expected = '{"action": "create", "title": "water the plants", "due": null}'
    assert matches(expected, '{"title":"water the plants","action":"create","due":null}')
    assert not matches(expected, '{"action": "create", "title": "water the plant", "due": null}')
    assert not matches(expected, 'Sure! {"action": "create", "title": "water the plants", "due": null}')
    assert not matches(expected, "")


def test_text_answers_match_exactly_but_for_surrounding_whitespace():
    assert matches("Paris", "  Paris\n")
    assert not matches("Paris", "paris")
    assert not matches("Paris", "Paris.")


def test_scores_count_valid_json_only_where_json_is_expected():
    items = [HeldOut("a", '{"x": 1}'), HeldOut("b", '{"x": 2}'), HeldOut("c", "[1, 2]"), HeldOut("d", "yes")]
    answers = ['{"x": 1}', '{"x": 3}', "not json", "yes"]
    assert score(items, answers) == {"prompts": 4, "exactMatch": 0.5, "validJson": round(2 / 3, 4)}
    assert score([HeldOut("q", "yes")], ["no"]) == {"prompts": 1, "exactMatch": 0.0}


def test_prompts_are_the_conversation_before_its_last_answer():
    rows = [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                      {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                      {"role": "assistant", "content": "a2"}]},
        {"prompt": [{"role": "user", "content": "p"}], "completion": [{"role": "assistant", "content": "c"}]},
        {"prompt": "Request: x\nCall: ", "completion": "{}"},
        {"text": "no prompt here"},
    ]
    items = held_out(rows, 10)
    assert [(len(i.prompt) if isinstance(i.prompt, list) else i.prompt, i.expected) for i in items] == [
        (4, "a2"), (1, "c"), ("Request: x\nCall: ", "{}")]
    assert len(held_out(rows, 2)) == 2


def test_samples_show_the_last_user_message_and_cut_long_text():
    items = [HeldOut([{"role": "system", "content": "s"}, {"role": "user", "content": "Remind me"}], '{"a": 1}')]
    (sample,) = samples(items, ["x" * 1000], 3)
    assert sample["prompt"] == "Remind me" and sample["expected"] == '{"a": 1}' and sample["match"] is False
    assert len(sample["answer"]) == 300 and sample["answer"].endswith("…")


def test_an_answer_is_given_up_only_once_no_token_can_change_its_scores():
    from sftop_trainer.evaluate import can_still_score

    call = '{"action": "create", "title": "water the plants"}'
    assert can_still_score(call, "")
    assert can_still_score(call, '{"action": "cre')  # a JSON value under way
    assert can_still_score(call, '  {"title": "x"} \n')  # valid JSON so far: a stop token may follow
    assert can_still_score(call, "tr")  # may become `true`: valid JSON, counted by validJson
    assert not can_still_score(call, "I'm ready to help")  # no JSON value starts with "I"
    assert not can_still_score(call, '{"action": "create"} and then')  # json.loads would say "Extra data"
    assert can_still_score("12.5", "12.") and can_still_score("1e3", "1e")  # a number under way
    assert can_still_score('"positive"', '"pos')  # a JSON string
    assert not can_still_score("12.5", "12 apples")
    assert can_still_score("Paris", " Par")
    assert can_still_score("Paris", "Paris \n")
    assert not can_still_score("Paris", "Paris is")
    assert not can_still_score("Paris", "The capital")
    assert can_still_score("Paris", "Par\ufffd")  # half a character: wait for the rest


def test_giving_up_early_and_the_serving_form_change_no_score(tiny_model):
    """The tiny random model rambles: answers cut as soon as they cannot score, from the adapter merged into the base,
    score exactly as answers generated to the token limit by the unmerged adapter; and training resumes on the very
    same weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftop_trainer import evaluate, taskapi

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    items = held_out(taskapi.rows(24, seed=5), 24)
    items += [HeldOut(i.prompt, "Paris") for i in items[:6]]  # text answers too
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    fresh = evaluate.generate(model, tokenizer, items, 40)
    with model.disable_adapter():
        assert evaluate.generate(model, tokenizer, items, 40) == fresh, "a zero adapter is the base"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def to_the_limit(new_tokens):  # one prompt at a time, the adapter unmerged, up to the token limit or a stop token
        answers = []
        for item in items:
            ids = torch.tensor([evaluate._encode(tokenizer, item.prompt)])
            with torch.no_grad():
                out = model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False,
                                     eos_token_id=evaluate.stop_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id)
            answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
        return answers

    model.eval()
    full = to_the_limit(40)
    # some expected answers are exactly what the model writes: those must survive to the end
    items = [HeldOut(i.prompt, f) if n % 3 == 0 else i for n, (i, f) in enumerate(zip(items, full))]
    cut = evaluate.generate(model, tokenizer, items, 40)
    assert evaluate.score(items, cut) == evaluate.score(items, full)
    assert evaluate.score(items, cut)["exactMatch"] >= 0.3
    assert sum(len(a) for a in cut) < sum(len(a) for a in full), "rambling answers stopped early"
    assert all(f.startswith(c) for c, f in zip(cut, full)), "an answer cut short is the beginning of the full one"
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "the weights are back bit for bit"
    assert not any(getattr(m, "merged", False) for m in model.modules())
