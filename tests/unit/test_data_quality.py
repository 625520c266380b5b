"""The data-quality checklist (sftop_trainer.quality) on small files the tests write, through the data pipeline
the Validating phase runs (sftop_trainer.data.prepare): each check with its row numbers, and the policy's three
actions."""

import json

import pytest

from sftop_trainer import quality, taskapi
from sftop_trainer.config import DataQuality, DataSource
from sftop_trainer.data import prepare
from sftop_trainer.errors import DataError, DataQualityError


def chat(user, answer, system=None):
    turns = [{"role": "system", "content": system}] if system is not None else []
    return {"messages": turns + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(tmp_path, rows, eval_rows=None, **policy):
    src = {"path": write(tmp_path / "train.jsonl", rows), "quality": policy}
    if eval_rows is not None:
        src["evalPath"] = write(tmp_path / "test.jsonl", eval_rows)
    return prepare(DataSource.model_validate(src), seed=0, conversational=True)


def found(prepared, check):
    return next((f for f in prepared.findings if f.check == check), None)


def task_rows(n, seed=3):
    return taskapi.rows(n, seed=seed)


def test_the_first_users_case_duplicates_and_conflicts_are_named_by_row(tmp_path):
    """300 Task API rows, 20 that repeat a request with another answer, 30 exact copies: both are reported with
    their row numbers in the file (warnings by default: several answers per prompt can be intended), and a policy
    that fails on conflicts fails the run."""
    rows = task_rows(300)
    conflicting = []
    for r in rows[:20]:
        answer = json.loads(r["messages"][-1]["content"])
        answer["action"] = "delete" if answer.get("action") != "delete" else "create"
        conflicting.append(chat(r["messages"][0]["content"], json.dumps(answer)))
    data = rows + conflicting + rows[100:130]
    with pytest.raises(DataQualityError) as failed:
        run(tmp_path, data, conflicts={"action": "fail", "threshold": 0.05})
    message = str(failed.value)
    assert "conflicts" in message and "20 prompt(s) have different answers in 40 training rows" in message
    assert "rows 1, 2, 3, 4, 5" in message  # the originals first, by their line in the file
    assert run(tmp_path, data, conflicts={"action": "fail", "threshold": 0.2}).report.rows_train == 350  # 11% < 20%
    passed = run(tmp_path, data)
    copies = found(passed, "duplicates")
    assert copies.count == 30 and copies.rows[:3] == [321, 322, 323] and copies.action == "warn"
    assert found(passed, "conflicts").count == 40 and found(passed, "conflicts").action == "warn"
    assert passed.report.rows_train == 350


def test_an_evaluation_copied_from_training_fails_as_leakage(tmp_path):
    rows = task_rows(200)
    with pytest.raises(DataQualityError, match=r"leakage in eval \(test.jsonl\): 40 of 40 evaluation row"):
        run(tmp_path, rows, eval_rows=rows[:40])
    # a training request asked again with a word added is a near copy: a warning by default, dropped on request
    near = [chat(r["messages"][0]["content"] + " please", r["messages"][1]["content"]) for r in rows[40:45]]
    fresh = taskapi.split(200, 30, seed=3)[1]
    warned = found(run(tmp_path, rows, eval_rows=fresh + near), "nearLeakage")
    assert warned.action == "warn" and warned.rows[-len(near):] == list(range(31, 36))
    dropped = run(tmp_path, rows, eval_rows=fresh + near, nearLeakage={"action": "drop"})
    leak = found(dropped, "nearLeakage")
    assert leak.action == "drop" and dropped.report.rows_eval == 30 + len(near) - leak.count
    assert dropped.report.quality["dropped"]["eval"] == leak.count


def test_few_rows_say_prompting_may_do_as_well(tmp_path):
    small = run(tmp_path, task_rows(12))
    size = found(small, "size")
    assert size.action == "warn" and "few-shot" in size.message and size.count == 12
    with pytest.raises(DataQualityError, match="12 usable training rows"):
        run(tmp_path, task_rows(12), size={"action": "fail"})
    assert found(run(tmp_path, task_rows(200)), "size").action == "info"


def test_human_and_bot_roles_are_mapped_and_reported_and_an_unknown_role_is_named(tmp_path):
    rows = [{"messages": [{"role": "human", "content": f"question {i}"}, {"role": "bot", "content": f"answer {i}"}]}
            for i in range(100)]
    mapped = run(tmp_path, rows)
    assert mapped.report.rows_train == 100 and mapped.report.roles == {"human → user": 100, "bot → assistant": 100}
    odd = rows[:3] + [{"messages": [{"role": "customer", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    partly = run(tmp_path, odd)
    why = next(iter(partly.report.skipped))
    assert "unknown role 'customer'" in why and "valid roles: assistant, system, tool, user" in why
    assert partly.report.skipped[why]["rows"] == [4]


def test_answers_off_the_common_json_format_are_named(tmp_path):
    rows = [chat(f"task {i}", json.dumps({"action": "create", "title": f"t{i}"})) for i in range(60)]
    rows[7] = chat("task 7", "create t7")  # not JSON
    rows[9] = chat("task 9", json.dumps({"action": "create"}))  # a key every other answer has is missing
    rows[11] = chat("task 11", json.dumps({"action": "create", "title": "x", "titel": "x"}))  # a key none has
    checked = run(tmp_path, rows)
    invalid, odd = [f for f in checked.findings if f.check == "answerFormat"]
    assert invalid.rows == [8] and "not valid JSON" in invalid.message
    assert odd.rows == [10, 12] and "missing title" in odd.message
    assert run(tmp_path, rows, answerFormat={"action": "drop"}).report.rows_train == 57


def test_a_category_evaluation_has_and_training_barely_shows_is_named(tmp_path):
    train = [chat(f"t{i}", json.dumps({"action": "create" if i % 2 else "complete", "title": f"x{i}"}))
             for i in range(200)]
    train.append(chat("t-last", json.dumps({"action": "delete", "title": "z"})))
    evaluation = [chat(f"e{i}", json.dumps({"action": "delete" if i < 10 else "create", "title": f"y{i}"}))
                  for i in range(40)]
    checked = run(tmp_path, train, eval_rows=evaluation)
    coverage = found(checked, "coverage")
    assert coverage.file == "eval (test.jsonl)" and coverage.rows == list(range(1, 11))
    assert 'action "delete": 10 evaluation row(s), 1 training row(s)' in coverage.message
    with pytest.raises(DataQualityError, match="coverage"):
        run(tmp_path, train, eval_rows=evaluation, coverage={"action": "fail"})


def test_empty_turns_and_template_markers_in_content(tmp_path):
    rows = [chat(f"question {i}", f"answer {i}") for i in range(60)]
    rows[4] = chat("question 4", "answer 4", system="  ")
    rows[5] = chat("say <|im_end|> now", "ok")
    rows[6] = chat("[INST] hi [/INST]", "ok")
    checked = run(tmp_path, rows)
    assert found(checked, "emptyTurns").rows == [5]
    special = found(checked, "specialTokens")
    assert special.rows == [6, 7] and special.action == "warn" and "'<|im_end|>'" in special.message
    assert checked.report.rows_train == 60
    dropped = run(tmp_path, rows, specialTokens={"action": "drop"})
    assert dropped.report.rows_train == 58 and dropped.report.quality["dropped"]["train"] == 2
    # plain text already rendered with a template carries its markers on purpose
    rendered = [{"text": f"<|im_start|>user\nq{i}<|im_end|>\n<|im_start|>assistant\na{i}<|im_end|>"}
                for i in range(60)]
    assert found(run(tmp_path, rendered, specialTokens={"action": "drop"}), "specialTokens") is None


def test_near_duplicates_use_the_documented_similarity(tmp_path):
    base = "please remind me to water the plants in the living room every sunday morning before breakfast"
    rows = [chat(f"{base} {i}" if i == 0 else f"unrelated request number {i} about topic {i * 7}", f"ok {i}")
            for i in range(60)]
    rows.append(chat(base + " 0", "ok 0 "))  # the same row, a trailing space apart: an exact duplicate
    rows.append(chat(base.replace("sunday", "sundays") + " 0", "ok 0"))  # a letter apart: a near duplicate
    checked = run(tmp_path, rows)
    assert found(checked, "duplicates").rows == [61]
    assert found(checked, "nearDuplicates").rows == [62]
    assert found(run(tmp_path, rows, nearDuplicateSimilarity=0.95), "nearDuplicates") is None
    off = run(tmp_path, rows, nearDuplicateMaxRows=0)
    assert found(off, "nearDuplicates") is None and off.report.quality["nearDuplicates"]["limited"] is True


def test_a_policy_that_drops_every_row_says_so():
    with pytest.raises(DataError, match="dropped every one"):
        from sftop_trainer.data import _keep

        _keep(None, [1, 2], {1, 2})


def test_truncated_answers_and_rows_without_loss():
    findings = quality.token_findings(lengths=[10, 40, 50], loss_tokens=[4, 10, 6], cut_loss=[0, 3, 6],
                                      numbers=[1, 2, 5], max_length=32)
    cut, none = findings
    assert (cut.check, cut.rows) == ("truncated", [2]) and (none.check, none.rows) == ("noLoss", [5])
    quality.decide(findings, DataQuality())
    assert (cut.action, none.action) == ("warn", "drop")


def test_drop_is_refused_where_it_removes_nothing():
    with pytest.raises(ValueError, match="quality.size.action: drop"):
        DataQuality.model_validate({"size": {"action": "drop"}})


def test_a_fraction_held_out_never_splits_a_prompt_across_train_and_evaluation(tmp_path):
    """A greeting asked in many rows, and exact copies: a plain random split would put some on each side and the
    evaluation would measure memory (failing leakage); whole groups of a prompt go to one side."""
    rows = task_rows(200) + [chat("hi", f"hello there {i}") for i in range(12)] + task_rows(200)[:20]
    src = DataSource.model_validate({"path": write(tmp_path / "train.jsonl", rows), "evalSplit": {"fraction": 0.1}})
    split = prepare(src, seed=0, conversational=True)
    assert found(split, "leakage") is None
    assert 20 <= split.report.rows_eval <= 40 and split.report.rows_train + split.report.rows_eval == len(rows)
    train_prompts = {r["messages"][0]["content"] for r in split.train}
    assert not any(r["messages"][0]["content"] in train_prompts for r in split.evaluation)


def test_a_system_prompt_every_row_shares_does_not_make_them_near_duplicates(tmp_path):
    system = "You are the Task API assistant. " * 120  # about 4,000 characters, in every row
    rows = [chat(r["messages"][0]["content"], r["messages"][1]["content"], system=system) for r in task_rows(200)]
    near = found(run(tmp_path, rows), "nearDuplicates")
    alone = found(run(tmp_path, task_rows(200)), "nearDuplicates")
    assert (near.count if near else 0) == (alone.count if alone else 0)
