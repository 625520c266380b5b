"""The promotion gate (spec.promotion), decided from what was observed (pure): which run the stable path holds, the
promotion Job that switches it, the Promoted condition, and what kstatus, Argo CD and Flux make of a run its gate
refuses."""

import pytest

from harness import argocd, flux, kstatus
from sftop import api, lifecycle, promotion
from sftop.decide import decide
from sftop.settings import Settings
from test_decide import COMPLETE, NAME, NOW, NS, job_of, recorded, seen, spec_of
from test_gitops_health import FLUX, SCRIPT

FP = "f" * 64


def result(exact=0.9, loss=0.5, fingerprint=FP, parity=None, rid="r"):
    evaluation = {"prompts": 50, "fingerprint": fingerprint,
                  "after": {"step": 100, "exactMatch": exact, "validJson": 1.0, "evalLoss": loss}}
    if parity is not None:
        evaluation["parity"] = parity
    return {"steps": 100, "evalLoss": loss, "evaluation": evaluation,
            "adapterPath": f"adapters:team-a/chat/{rid}/adapter",
            "serving": {"baseModel": "HuggingFaceTB/SmolLM2-135M", "loraRank": 8, "vllmMaxLoraRank": 8,
                        "targetModules": ["q_proj"]}}


def promoted_record(rid="0badc0de", exact=0.9, loss=0.5, fingerprint=FP):
    return {"runId": rid, "path": "adapters:team-a/chat/promoted", "adapterPath": f"adapters:team-a/chat/{rid}/adapter",
            "metrics": {"exactMatch": exact, "validJson": 1.0, "evalLoss": loss}, "fingerprint": fingerprint,
            "time": "2026-11-22T09:00:00Z"}


GATE = {"minimum": {"exactMatch": 0.8}, "maximum": {"evalLoss": 2.0}, "tolerance": {"exactMatch": 0.02}}


@pytest.mark.parametrize("res,promoted,passed,reason,said", [
    (result(), None, True, "Promoted", "passed"),
    (result(exact=0.7), None, False, "BelowThreshold", "exactMatch 0.7 < 0.8 (spec.promotion.minimum)"),
    (result(exact=0.89), promoted_record(exact=0.9), True, "Promoted", "passed"),  # within the tolerance
    (result(exact=0.85), promoted_record(exact=0.9), False, "Regressed",
     "exactMatch 0.85 is worse than the promoted run 0badc0de's 0.9 beyond the tolerance 0.02"),
    (result(loss=0.6), promoted_record(loss=0.5), False, "Regressed", "evalLoss 0.6 is worse"),
    (result(fingerprint="e" * 64), promoted_record(), False, "NotComparable", "other held-out data"),
    (result(parity={"prompts": 50, "differing": 2, "firstDifference": {"prompt": "p", "trainer": "a", "served": "b"}}),
     None, False, "ServingMismatch", "2 of 50 answers of the adapter folder, loaded as a server loads it, differ"),
    ({"steps": 100, "evalLoss": 0.5}, None, False, "MetricMissing", "exactMatch was not measured"),
])
def test_the_gate_passes_a_run_only_on_its_bars_its_parity_and_the_promoted_runs_scores(res, promoted, passed,
                                                                                        reason, said):
    p = api.PromotionSpec.model_validate(GATE)
    ok, why, message, checks = promotion.gate(p, "1234abcd", res, promoted)
    assert (ok, why) == (passed, reason) and said in message
    assert all(api.PromotionCheck.model_validate(c) for c in checks)
    if not ok:
        assert any(not c["passed"] for c in checks)


def test_the_same_run_again_is_never_compared_with_itself_and_none_compares_with_nothing():
    p = api.PromotionSpec.model_validate({"notWorseThan": "none"})
    assert promotion.gate(p, "1234abcd", result(exact=0.1, fingerprint="e" * 64), promoted_record())[0]


def gated(**promotion_spec):
    return spec_of(promotion={**GATE, **promotion_spec}, dataset={"pvc": {"claimName": "data", "path": "t.jsonl"},
                                                                 "evalSplit": {"file": "e.jsonl"}})


def succeeded(spec, res, **status):
    return {**recorded(spec, "Succeeded"), "result": res, **status}


def conditions(decision):
    status = decision.status
    return {c["type"]: c for c in lifecycle.standard_conditions(status, 1, NOW, decision.reason)}


def test_a_run_that_passes_is_switched_by_a_promotion_job_then_recorded_as_promoted():
    spec = gated()
    rid = promotion.target(spec, succeeded(spec, result()), NS, NAME)[0]["id"]
    first = decide(seen(spec, succeeded(spec, result(rid=rid))))
    job, = [a for a in first.actions if a.verb == "ensure_job"]
    assert job.name == promotion.job_name(NAME, rid, None)
    pod = job.body["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["--promote", f"/output/{NS}/{NAME}", "--run", rid, "--kind", "adapter"]
    assert [v["name"] for v in pod["volumes"]] == ["output", "tmp"] and "nvidia.com/gpu" not in str(pod)
    assert pod["containers"][0]["image"] == Settings().trainer_image and "nodeSelector" not in pod
    assert job.body["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [64]
    assert job.body["metadata"]["ownerReferences"][0]["kind"] == "SFTJob"
    cond = conditions(first)
    assert (cond["Promoted"]["status"], cond["Promoted"]["reason"]) == ("Unknown", "Promoting")
    assert cond["Ready"]["status"] == "False" and cond["Reconciling"]["status"] == "True"

    done = {**job.body, "status": COMPLETE}
    second = decide(seen(spec, first.status, promotion_job=done))
    promoted = second.status["promoted"]
    assert promoted["runId"] == rid and promoted["path"] == f"adapters:{NS}/{NAME}/promoted"
    assert promoted["metrics"] == {"exactMatch": 0.9, "validJson": 1.0, "evalLoss": 0.5}
    assert promoted["serving"]["vllmLoraModules"] == \
        '{"name":"chat","path":"/adapters/team-a/chat/promoted","base_model_name":"HuggingFaceTB/SmolLM2-135M"}'
    assert ("Normal", "Promoted", f"run {rid} is promoted at adapters:{NS}/{NAME}/promoted") in second.events
    assert second.status["result"]["serving"]["path"] == f"{NS}/{NAME}/promoted"  # serving config never changes
    assert first.status["result"]["serving"] == result(rid=rid)["serving"], "not before it is promoted"
    cond = conditions(second)
    assert cond["Ready"]["status"] == "True" and cond["Promoted"]["status"] == "True"
    assert not [a for a in decide(seen(spec, second.status)).actions if a.verb == "ensure_job"], "switched once"


def test_a_run_its_gate_refuses_keeps_the_promoted_adapter_and_is_unhealthy_for_every_gitops_tool():
    spec = gated()
    status = succeeded(spec, result(exact=0.5), promoted=promoted_record())
    decision = decide(seen(spec, status))
    assert not [a for a in decision.actions if a.verb == "ensure_job"]
    assert decision.status["promoted"] == promoted_record()
    assert decision.status["promotion"]["reason"] == "BelowThreshold"
    cond = conditions(decision)
    assert cond["Promoted"]["status"] == "False" and cond["Promoted"]["reason"] == "BelowThreshold"
    assert "the promoted adapter is still run 0badc0de's" in cond["Promoted"]["message"]
    assert (cond["Ready"]["status"], cond["Stalled"]["status"], cond["Reconciling"]["status"]) == \
        ("False", "True", "False")
    obj = {"apiVersion": api.API_VERSION, "kind": "SFTJob", "metadata": {"name": NAME, "generation": 1},
           "status": {**decision.status, "conditions": list(cond.values())}}
    health = argocd.health(SCRIPT, obj)
    assert health["status"] == "Degraded" and "exactMatch 0.5 < 0.8" in health["message"]
    assert kstatus.compute(obj).status == "Failed"
    assert flux.evaluate(FLUX["spec"]["healthCheckExprs"][0], obj) == "Failed"
    assert [e for e in decision.events if e[1] == "BelowThreshold"]


def test_a_pin_promotes_an_earlier_run_without_its_gate_and_names_the_runs_it_could_be():
    spec = gated(pin="0badc0de")
    earlier = {"id": "0badc0de", "jobName": "chat-0badc0de", "phase": "Succeeded",
               "outputPath": f"adapters:{NS}/{NAME}/0badc0de",
               "result": {"adapterPath": f"adapters:{NS}/{NAME}/0badc0de/adapter",
                          "metrics": {"exactMatch": 0.9}, "fingerprint": FP}}
    status = succeeded(spec, result(exact=0.95), previousRuns=[earlier], promoted=promoted_record("12345678"))
    decision = decide(seen(spec, status))
    job, = [a for a in decision.actions if a.verb == "ensure_job"]
    assert job.body["spec"]["template"]["spec"]["containers"][0]["args"][3] == "0badc0de"
    done = decide(seen(spec, decision.status, promotion_job={**job.body, "status": COMPLETE}))
    assert done.status["promoted"]["runId"] == "0badc0de" and done.status["promoted"]["pinned"] is True
    assert done.status["promoted"]["replaced"] == "12345678" and done.status["promoted"]["metrics"] == \
        {"exactMatch": 0.9}
    assert conditions(done)["Promoted"]["reason"] == "Pinned"

    unknown = decide(seen(gated(pin="99999999"), status))
    cond = conditions(unknown)
    assert cond["Promoted"]["reason"] == "PinNotFound" and cond["Stalled"]["status"] == "True"
    assert f"its successful runs: {status['run']['id']}, 0badc0de" in cond["Promoted"]["message"]


def test_a_failed_switch_says_why_and_promotion_settings_are_not_training_inputs():
    spec = gated()
    first = decide(seen(spec, succeeded(spec, result())))
    job, = [a for a in first.actions if a.verb == "ensure_job"]
    failed = {**job.body, "status": {"failed": 3, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit", "lastTransitionTime": NOW}]}}
    decision = decide(seen(spec, first.status, promotion_job=failed))
    assert conditions(decision)["Promoted"]["reason"] == "PromotionFailed"
    assert "promoted" not in decision.status
    assert job_of(gated())["metadata"]["name"] == job_of(gated(minimum={"exactMatch": 0.1}))["metadata"]["name"]
    assert job_of(gated())["metadata"]["name"] != job_of(spec_of(
        promotion=GATE, dataset={"pvc": {"claimName": "data", "path": "t.jsonl"}, "evalSplit": {"file": "e.jsonl"},
                                 "version": "2026-12-05"}))["metadata"]["name"], "dataset.version retrains"


def test_one_switch_at_a_time_and_a_pin_must_be_beside_the_stable_path():
    spec = gated()
    status = succeeded(spec, result())
    waiting = decide(seen(spec, status, promotion_jobs=["chat-p0000000"]))
    assert not [a for a in waiting.actions if a.verb == "ensure_job"]
    assert "waiting for the switch in Job chat-p0000000" in conditions(waiting)["Promoted"]["message"]
    assert waiting.requeue == 5.0

    earlier = {"id": "0badc0de", "jobName": "chat-0badc0de", "phase": "Succeeded",
               "outputPath": "other-claim:team-a/chat/0badc0de", "result": {"metrics": {}}}
    elsewhere = decide(seen(gated(pin="0badc0de"), {**status, "previousRuns": [earlier]}))
    assert conditions(elsewhere)["Promoted"]["reason"] == "PinNotFound"
    assert "not beside the stable path adapters:team-a/chat/promoted" in conditions(elsewhere)["Promoted"]["message"]


def test_non_regression_compares_the_metrics_the_gate_names_and_not_a_baseline_without_a_fingerprint():
    p = api.PromotionSpec.model_validate({"tolerance": {"exactMatch": 0.0}})
    # evalLoss is worse, but only exactMatch is named
    assert promotion.gate(p, "1234abcd", result(loss=0.9), promoted_record(loss=0.5))[0]
    old = {**promoted_record(exact=0.99), "fingerprint": None}
    ok, _, _, checks = promotion.gate(p, "1234abcd", result(), old)
    assert ok and any(c.get("detail", "").startswith("the promoted run has no evaluation fingerprint") for c in checks)
