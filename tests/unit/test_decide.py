"""What the operator does about an SFTJob, decided from what it observed (pure): a table of situations, each with
the writes, the phase and reason, the events and the next look it leads to."""

import copy
import json

import pytest

from harness.cluster import PLAN, running, sftjob, terminated
from sftop import api, lifecycle, render
from sftop.decide import decide
from sftop.kueue import QueueView
from sftop.patch import worth_writing
from sftop.records import Observed, Reading
from sftop.settings import Settings

NOW = "2026-11-22T10:10:00Z"
NAME, NS = "chat", "team-a"


def spec_of(**changes):
    return api.SFTJobSpec.model_validate(sftjob(NAME, **changes)["spec"])


def run_of(spec):
    return render.run_id(spec)


def job_of(spec, status=None, suspend=False, validation=False):
    rid = run_of(spec)
    name = render.validation_job_name(NAME, rid) if validation else render.job_name(NAME, rid)
    return {"metadata": {"name": name, "namespace": NS, "uid": "job-uid",
                         "labels": render.child_labels(NAME, rid, "validation" if validation else "trainer")},
            "spec": {"suspend": suspend}, "status": status or {}}


def pod_of(spec, state, validation=False, name="chat-pod-1"):
    return {"metadata": {"name": name, "namespace": NS, "creationTimestamp": "2026-11-22T10:00:00Z",
                         "labels": render.child_labels(NAME, run_of(spec), "validation" if validation else "trainer")},
            "status": state}


def recorded(spec, phase, **run):
    """A status that already records the current run in `phase`."""
    rid = run_of(spec)
    return {"phase": phase, "observedGeneration": 1, "run": {"id": rid, "jobName": render.job_name(NAME, rid),
                                                             "outputPath": render.output_path(spec, NS, NAME, rid),
                                                             "attempts": 1, **run},
            "conditions": [{"type": phase, "status": "True", "reason": "Training" if phase == "Running" else phase,
                            "message": "", "lastTransitionTime": "2026-11-22T10:00:00Z"}]}


def seen(spec=None, status=None, **kw):
    spec = spec or spec_of()
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": NAME, "namespace": NS,
                                                                          "uid": "sftjob-uid", "generation": 1},
            "spec": spec.model_dump(by_alias=True, exclude_none=True)}
    return Observed(namespace=NS, name=NAME, generation=1, body=body, spec=spec, problems=[],
                    status=status or {}, now=NOW, settings=Settings(), **kw)


COMPLETE = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True",
                                            "lastTransitionTime": "2026-11-22T10:05:00Z"}]}
VALIDATING = spec_of(validation={"enabled": True})
FIT = {**PLAN, "downloadBytes": 15 * 2**30, "memory": {**PLAN["memory"], "gpuMemory": 80.0, "fits": True}}
TOO_BIG = {**PLAN, "memory": {**PLAN["memory"], "gpuMemory": 8.0, "gpuMemorySource": "resources.gpuMemory",
                              "fits": False, "wouldFit": ["method qlora"]}}
BASE, OTHER = spec_of(), spec_of(training={"maxSteps": 20})
QUEUED = spec_of(queueName="team-a")
RUNNING_POD = running("10.0.0.7")
ONE_RETRY = spec_of(runPolicy={"backoffLimit": 1})


def evicted_for_disk(name):
    """A trainer pod kubelet's eviction manager evicted for the node's disk (pkg/kubelet/eviction): Failed, reason
    Evicted, with the DisruptionTarget condition the Job's podFailurePolicy ignores."""
    said = "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, available: 1Gi. "
    return pod_of(ONE_RETRY, {"phase": "Failed", "reason": "Evicted", "message": said, "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet", "message": said}],
        "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]},
        name=name)


CASES = [
    # (what happens, observed, writes, phase, reason, events, next look)
    ("a new SFTJob gets its claim, ConfigMap and Job", seen(),
     ["ensure_claim", "ensure_config_map", "ensure_job"], "Pending", "WaitingForPod", ["WaitingForPod"], 30.0),
    ("a missing ConfigMap: nothing is created, the run waits and says which", seen(
        BASE, missing=("ConfigMapNotFound", "spec.dataset.configMap: ConfigMap data does not exist")),
     [], "Pending", "ConfigMapNotFound", ["ConfigMapNotFound"], 20.0),
    ("a changed spec stops the unfinished run and starts a new one", seen(
        OTHER, recorded(BASE, "Running")),
     ["stop_job", "ensure_claim", "ensure_config_map", "ensure_job"], "Pending", "WaitingForPod",
     ["NewRun", "WaitingForPod"], 30.0),
    ("a finished run stays finished", seen(BASE, recorded(BASE, "Succeeded")), [], "Succeeded", None, [], None),
    ("validation comes first: its Job, not the training Job", seen(VALIDATING),
     ["ensure_claim", "ensure_config_map", "ensure_job"], "Validating", "Validating", ["Validating"], 30.0),
    ("a validation that passed creates the training Job", seen(
        VALIDATING, validation_job=job_of(VALIDATING, COMPLETE, validation=True),
        validation_pods=[pod_of(VALIDATING, terminated(0, json.dumps({"status": "Succeeded", "plan": FIT})),
                                validation=True)]),
     ["ensure_claim", "ensure_config_map", "ensure_job"], "Pending", "WaitingForPod", ["Validated", "WaitingForPod"],
     30.0),
    ("a plan that does not fit the GPU fails the run before any GPU is asked for", seen(
        VALIDATING, validation_job=job_of(VALIDATING, COMPLETE, validation=True),
        validation_pods=[pod_of(VALIDATING, terminated(0, json.dumps({"status": "Succeeded", "plan": TOO_BIG})),
                                validation=True)]),
     [], "Failed", "InsufficientGPUMemory", ["InsufficientGPUMemory"], None),
    ("spec.suspend suspends a running Job", seen(
        spec_of(suspend=True), recorded(spec_of(suspend=True), "Running"),
        job=job_of(spec_of(suspend=True), {"active": 1}), pods=[pod_of(spec_of(suspend=True), RUNNING_POD)]),
     ["suspend_job"], "Suspended", "Suspended", ["Suspended"], None),
    ("a queued run in a cluster without Kueue says so", seen(
        QUEUED, job=job_of(QUEUED, suspend=True), queue=QueueView(absent=True)),
     [], "Queued", "KueueNotInstalled", ["KueueNotInstalled"], 30.0),
    ("a running trainer that answers: progress in status, its endpoint followed", seen(
        BASE, recorded(BASE, "Running"), job=job_of(BASE, {"active": 1}), pods=[pod_of(BASE, RUNNING_POD)],
        progress=Reading(ip="10.0.0.7", data={"step": 5, "totalSteps": 10, "loss": 1.5}, stamp=NOW)),
     [], "Running", "Training", [], None),
    ("a running trainer that stopped answering: progress unavailable, said once", seen(
        BASE, recorded(BASE, "Running"), job=job_of(BASE, {"active": 1}), pods=[pod_of(BASE, RUNNING_POD)],
        progress=Reading(ip="10.0.0.7", data={"step": 5, "totalSteps": 10}, stamp="2026-11-22T10:02:00Z",
                         failures=2, error="no answer within 1s", retry_in=60.0)),
     [], "Running", "Training", ["ProgressUnavailable"], None),
    ("a succeeded run: the result, with the GPU-seconds of its attempt", seen(
        BASE, recorded(BASE, "Running"), job=job_of(BASE, COMPLETE),
        pods=[pod_of(BASE, terminated(0, json.dumps({"status": "Succeeded", "steps": 10, "adapterPath": "adapter",
                                                     "trainedTokens": 900})))]),
     [], "Succeeded", "Succeeded", ["Succeeded"], None),
    ("a pod evicted for the node's disk is retried, and says why", seen(
        ONE_RETRY, recorded(ONE_RETRY, "Running"), job=job_of(ONE_RETRY, {"active": 0}),
        pods=[evicted_for_disk("chat-pod-1")]),
     [], "Pending", "Retrying", ["Retrying"], 30.0),
    ("evicted more times than runPolicy.backoffLimit: the run fails with the eviction's reason and its Job stops, "
     "which the Job controller would retry without end", seen(
        ONE_RETRY, recorded(ONE_RETRY, "Running"), job=job_of(ONE_RETRY, {"active": 0}),
        pods=[evicted_for_disk("chat-pod-1"), evicted_for_disk("chat-pod-2")]),
     ["stop_job"], "Failed", "EvictedForDisk", ["EvictedForDisk"], None),
]


@pytest.mark.parametrize("what,observed,writes,phase,reason,events,requeue", CASES, ids=[c[0] for c in CASES])
def test_decision_table(what, observed, writes, phase, reason, events, requeue):
    decision = decide(observed)
    assert [a.verb for a in decision.actions] == writes
    assert decision.status["phase"] == phase
    assert decision.reason == reason
    assert [e[1] for e in decision.events] == events
    assert decision.requeue == requeue


@pytest.mark.parametrize("what,observed,writes,phase,reason,events,requeue", CASES, ids=[c[0] for c in CASES])
def test_deciding_again_on_the_status_written_posts_no_event_and_writes_nothing(what, observed, writes, phase,
                                                                              reason, events, requeue):
    """One event per transition: once the status records a decision, the same observation changes nothing."""
    first = decide(observed)
    status = copy.deepcopy(first.status)
    status["conditions"] = lifecycle.standard_conditions(status, status.get("observedGeneration"), NOW, first.reason)
    again = copy.deepcopy(observed)
    again.status = status
    if first.actions and any(a.verb == "ensure_job" for a in first.actions):  # the created Job is now observed
        created = next(a.body for a in reversed(first.actions) if a.verb == "ensure_job")
        if created["metadata"]["labels"][render.COMPONENT_LABEL] == "validation":
            again.validation_job = created
        else:
            again.job = created
    for action in first.actions:
        if action.verb == "suspend_job":
            again.job = {**again.job, "spec": {"suspend": action.value}}
    second = decide(again)
    assert second.events == []
    assert [a.verb for a in second.actions if a.verb != "ensure_claim"] in ([], ["ensure_config_map", "ensure_job"])
    final = copy.deepcopy(second.status)
    final["conditions"] = lifecycle.standard_conditions(final, final.get("observedGeneration"), NOW, second.reason)
    assert worth_writing(status, final) == (False, False)


def test_details_of_the_running_rows():
    answering = decide(CASES[9][1])
    assert answering.track == "10.0.0.7"
    assert answering.status["progress"] == {"step": 5, "totalSteps": 10, "loss": 1.5, "updateTime": NOW}
    assert next(c for c in answering.status["conditions"] if c["type"] == "ProgressReported")["status"] == "True"
    silent = decide(CASES[10][1])
    cond = next(c for c in silent.status["conditions"] if c["type"] == "ProgressReported")
    assert cond["status"] == "False" and "10.0.0.7" in cond["message"] and "NetworkPolicy" in cond["message"]
    assert silent.status["progress"]["step"] == 5, "the last progress read stays, with its time"
    assert silent.status["progress"]["updateTime"] == "2026-11-22T10:02:00Z"
    done = decide(CASES[11][1])
    assert done.status["result"]["gpuSeconds"] == 300.0 and done.status["result"]["trainedTokens"] == 900
    assert done.status["run"]["podSeconds"] == {"chat-pod-1": 300.0}
    assert not any(c["type"] == "ProgressReported" for c in done.status["conditions"])


def test_gpu_seconds_sum_attempts_and_count_every_gpu():
    spec = spec_of(resources={"gpus": 4})
    first = pod_of(spec, terminated(1), name="chat-pod-1")
    second = pod_of(spec, {"phase": "Running", "podIP": "10.0.0.8", "containerStatuses": [
        {"name": "trainer", "state": {"running": {"startedAt": "2026-11-22T10:06:00Z"}}}]}, name="chat-pod-2")
    decision = decide(seen(spec, recorded(spec, "Running"), job=job_of(spec, {"active": 1, "failed": 1}),
                           pods=[first, second]))
    assert decision.status["run"]["podSeconds"] == {"chat-pod-1": 300.0, "chat-pod-2": 240.0}
    assert decision.status["run"]["gpuSeconds"] == 4 * 540.0
    # the first pod is gone (deleted after its failure): its seconds stay
    later = seen(spec, decision.status, job=job_of(spec, {"active": 1, "failed": 1}), pods=[second])
    assert decide(later).status["run"]["podSeconds"]["chat-pod-1"] == 300.0


@pytest.mark.parametrize("old,new,expected", [
    ({"phase": "Running", "progress": {"step": 1, "updateTime": "a"}},
     {"phase": "Running", "progress": {"step": 1, "updateTime": "b"}}, (False, False)),
    ({"phase": "Running", "progress": {"step": 1}}, {"phase": "Running", "progress": {"step": 2}}, (True, True)),
    ({"phase": "Running", "run": {"id": "r", "gpuSeconds": 1.0}},
     {"phase": "Running", "run": {"id": "r", "gpuSeconds": 9.0}}, (False, False)),
    ({"phase": "Running", "progress": {"step": 1}, "run": {"id": "r", "gpuSeconds": 1.0}},
     {"phase": "Running", "progress": {"step": 2}, "run": {"id": "r", "gpuSeconds": 9.0}}, (True, True)),
    ({"phase": "Running", "progress": {"step": 1}}, {"phase": "Succeeded", "progress": {"step": 2}}, (True, False)),
    ({"phase": "Running"}, {"phase": "Running", "progress": {"step": 1}}, (True, False)),
    ({"phase": "Running", "progress": {"step": 1}},
     {"phase": "Running", "progress": {"step": 1}, "conditions": [{"type": "ProgressReported"}]}, (True, False)),
], ids=["a moved timestamp", "a new step", "GPU-seconds alone", "GPU-seconds with a step", "a phase", "the first progress", "a condition"])
def test_what_is_worth_a_write_and_what_waits_for_the_budget(old, new, expected):
    assert worth_writing(old, new) == expected


def test_the_cache_keeps_finished_sftjobs_as_text_and_returns_them_whole():
    from sftop.cache import SFTJobCache

    cache = SFTJobCache()
    done = {"metadata": {"name": "a"}, "spec": {"x": 1}, "status": {"phase": "Succeeded", "result": {"steps": 3}}}
    live = {"metadata": {"name": "b"}, "spec": {}, "status": {"phase": "Running"}}
    cache[("ns", "a")], cache[("ns", "b")] = done, live
    assert cache.get(("ns", "a")) == done and cache.get(("ns", "a")) is not done
    assert [k for k, _ in cache.active()] == [("ns", "b")]
    assert sorted(cache.phases()) == [(("ns", "a"), "Succeeded"), (("ns", "b"), "Running")]
    assert cache.pop(("ns", "a")) == done and ("ns", "a") not in cache and len(cache) == 1


async def test_new_and_changed_specs_are_reconciled_before_routine_looks():
    from sftop.workqueue import WorkQueue

    queue = WorkQueue()
    for i in range(3):
        queue.add(("ns", f"resync-{i}"))
    queue.add(("ns", "new"), urgent=True)
    queue.add(("ns", "resync-2"), urgent=True)  # its spec changed while it waited
    order = [await queue.get() for _ in range(4)]
    assert order == [("ns", "new"), ("ns", "resync-2"), ("ns", "resync-0"), ("ns", "resync-1")]
    assert len(queue) == 0


def test_spec_suspend_of_a_queued_run_deactivates_its_workload_and_leaves_the_job_to_kueue():
    workload = {"metadata": {"name": "job-chat-1a2b3", "namespace": "team-a"}, "spec": {"active": True}}
    suspended = spec_of(queueName="team-a", suspend=True)
    decision = decide(seen(suspended, recorded(suspended, "Running"), job=job_of(suspended, {"active": 1}),
                           pods=[pod_of(suspended, RUNNING_POD)], queue=QueueView(workload=workload)))
    assert [(a.verb, a.name, a.value) for a in decision.actions] == [("set_workload_active", "job-chat-1a2b3", False)]
    resumed = decide(seen(QUEUED, recorded(QUEUED, "Suspended"), job=job_of(QUEUED, suspend=True),
                          queue=QueueView(workload={**workload, "spec": {"active": False}})))
    assert [(a.verb, a.value) for a in resumed.actions] == [("set_workload_active", True)]


def test_the_training_job_after_validation_has_a_cache_sized_by_the_plan():
    """The plan's downloadBytes (a Hub model's weights) size the training pod's cache."""
    validated = decide(CASES[5][1])
    job = next(a.body for a in validated.actions if a.verb == "ensure_job")
    pod = job["spec"]["template"]["spec"]
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache["emptyDir"]["sizeLimit"] == "19Gi"  # 15 GiB × 1.1 + 2 GiB, rounded up
