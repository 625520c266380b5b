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
