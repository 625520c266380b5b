"""Pod and Job states -> phase and reason (pure)."""

import json

from sftop.lifecycle import observe, phase_conditions, secret_problem, set_condition

JOB = {"metadata": {"name": "chat-abc", "labels": {}}, "spec": {"suspend": False}, "status": {}}


def pod(status, name="chat-abc-x", created="2026-11-22T10:00:00Z"):
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def waiting(reason, message=""):
    return {"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": reason,
                                                                                               "message": message}}}]}


def test_image_pull_backoff_is_a_warning_with_its_reason():
    seen = observe(False, False, JOB, [pod(waiting("ImagePullBackOff", "Back-off pulling image x"))])
    assert (seen.phase, seen.reason, seen.warning) == ("Pending", "ImagePullBackOff", True)


def test_retry_after_a_crash_says_which_attempt_and_why():
    failed = pod({"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "exitCode": 1, "message": json.dumps({"status": "Failed", "message": "RuntimeError: boom"})}}}]},
        created="2026-11-22T10:00:00Z")
    second = pod({"phase": "Running", "podIP": "10.0.0.7"}, name="chat-abc-y", created="2026-11-22T10:01:00Z")
    job = {**JOB, "status": {"failed": 1, "active": 1}}
    seen = observe(False, False, job, [second, failed])
    assert seen.phase == "Running" and seen.attempts == 2 and seen.pod_ip == "10.0.0.7"
    assert "attempt 2" in seen.message and "boom" in seen.message


def test_deadline_exceeded():
    job = {**JOB, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                             "message": "Job was active longer than specified deadline"}]}}
    seen = observe(False, False, job, [])
    assert (seen.phase, seen.reason) == ("Failed", "DeadlineExceeded") and "activeDeadlineSeconds" in seen.message


def test_suspended_and_queued():
    job = {**JOB, "spec": {"suspend": True}}
    assert observe(True, False, job, []).phase == "Suspended"
    assert observe(False, True, job, []).phase == "Queued"


def test_condition_transition_time_moves_only_on_change():
    conds = set_condition([], "Running", "True", "Training", "", 1, "t1")
    conds = set_condition(conds, "Running", "True", "Training", "still", 1, "t2")
    assert conds[0]["lastTransitionTime"] == "t1"
    conds = phase_conditions(conds, "Succeeded", "Succeeded", "done", 1, "t3")
    running = next(c for c in conds if c["type"] == "Running")
    assert running["status"] == "False" and running["lastTransitionTime"] == "t3"
    assert [c["type"] for c in conds] == ["Running", "Succeeded"]


def test_a_pod_that_succeeded_before_its_job_completes_is_completing_not_waiting():
    done = pod({"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "exitCode": 0, "message": json.dumps({"status": "Succeeded"})}}}]})
    seen = observe(False, False, {**JOB, "status": {"active": 0, "succeeded": 1}}, [done])
    assert (seen.phase, seen.reason) == ("Running", "Completing") and seen.pod_ip is None


def test_kubelets_secret_errors_become_the_sftjobs_words():
    assert secret_problem('secret "hf" not found', "team-a") == (
        "SecretNotFound", "spec.hubTokenSecret: Secret hf does not exist in namespace team-a; the run starts when it does")
    assert secret_problem("couldn't find key token in Secret team-a/hf", "team-a") == (
        "SecretKeyNotFound", "spec.hubTokenSecret: Secret hf has no key 'token'; the run starts when it does")
    assert secret_problem('configmap "data" not found', "team-a") is None


def test_a_cache_over_its_size_limit_fails_the_run_at_once_with_a_disk_reason():
    """kubelet evicts a pod whose emptyDir outgrew its sizeLimit with SIGTERM: the trainer, downloading, exits as
    interrupted (69), which the pod failure policy ignores, and each retry would outgrow the same limit. The first
    such eviction fails the run and stops its Job."""
    said = 'Usage of EmptyDir volume "cache" exceeds the limit "12Gi". '
    gone = pod({"phase": "Failed", "reason": "Evicted", "message": said, "containerStatuses": [
        {"name": "trainer", "state": {"terminated": {"exitCode": 69, "reason": "Error"}}}]})
    seen = observe(False, False, {**JOB, "status": {"failed": 0, "active": 0}}, [gone], backoff_limit=3)
    assert (seen.phase, seen.reason) == ("Failed", "EvictedForDisk") and seen.extra.get("stop")
    assert said.strip() in seen.message and "downloadBytes" in seen.message and "not retried" in seen.message


def test_preemptions_drains_and_node_shutdowns_are_not_counted_as_kubelet_evictions():
    preempted = pod({"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True",
                                                         "reason": "PreemptionByScheduler"}]})
    # a spot node's graceful shutdown: kubelet marks it TerminationByKubelet too, with status.reason Terminated
    shutdown = pod({"phase": "Failed", "reason": "Terminated", "message": "Pod was terminated in response to "
                    "imminent node shutdown.", "conditions": [{"type": "DisruptionTarget", "status": "True",
                                                               "reason": "TerminationByKubelet"}]})
    seen = observe(False, False, {**JOB, "status": {"active": 0}}, [preempted, shutdown, preempted, shutdown],
                   backoff_limit=1)
    assert seen.phase == "Pending" and not seen.extra.get("stop")
