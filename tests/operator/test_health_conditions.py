"""kstatus' Ready, Reconciling and Stalled on the statuses the operator writes, read by kstatus (the rules of
kubernetes-sigs/cli-utils), Argo CD's health script and Flux's CEL health checks, through every phase and across
a spec change; and `kubectl wait --for=condition=Ready` against the API server."""

import asyncio
import json
from pathlib import Path

import yaml

from harness import argocd, flux, kstatus
from harness.apiserver import SFTJOBS
from harness.cluster import (NS, PLAN, Operator, apply, condition, finish, job_status, make_pod, obj, objs, oom_killed,
                             patch, pod_status, running, sftjob, status_of, terminated, wait_for)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "examples/argocd/resource_customizations/sftop.dev/SFTJob/health.lua").read_text()
CEL = yaml.safe_load((ROOT / "examples/flux/kustomization.yaml").read_text())["spec"]["healthCheckExprs"][0]
PATH = f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/chat"


def read(emu):
    """(kstatus, Argo CD health, Flux CEL) of the SFTJob as stored now."""
    o = obj(emu, SFTJOBS, "chat")
    return kstatus.compute(o).status, argocd.health(SCRIPT, o)["status"], flux.evaluate(CEL, o)


def standard(status):
    return {k: (condition(status, k) or {}).get("status") for k in ("Ready", "Reconciling", "Stalled")}


async def phase(emu, name):
    return await wait_for(lambda: status_of(emu).get("phase") == name and status_of(emu),
                          explain=lambda: json.dumps(status_of(emu))[:800])


async def test_every_phase_reads_right_in_kstatus_argocd_and_flux(apiserver, operator):
    await apply(apiserver, sftjob(validation={"enabled": True}))
    assert read(apiserver) == ("InProgress", "Progressing", "InProgress"), "before the operator wrote anything"
    status = await phase(apiserver, "Validating")
    assert standard(status) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert condition(status, "Ready")["reason"] == "Validating"
    assert read(apiserver) == ("InProgress", "Progressing", "InProgress")
    vjob = objs(apiserver, "batch/v1/jobs")[0]
    await finish(apiserver, vjob, 0, {"status": "Validated", "plan": PLAN})
    job = (await wait_for(lambda: [j for j in objs(apiserver, "batch/v1/jobs") if j["metadata"]["name"] !=
                                   vjob["metadata"]["name"]]))[0]
    pod = await make_pod(apiserver, job)
    await pod_status(apiserver, pod, {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes are available"}]})
    status = await wait_for(lambda: condition(status_of(apiserver), "Reconciling")["reason"] == "Unschedulable"
                            and status_of(apiserver))
    assert status["phase"] == "Pending" and condition(status, "Ready")["reason"] == "Pending"
    assert read(apiserver) == ("InProgress", "Progressing", "InProgress")

    await pod_status(apiserver, pod, running())
    status = await phase(apiserver, "Running")
    assert condition(status, "Reconciling")["reason"] == "Training"
    assert read(apiserver) == ("InProgress", "Progressing", "InProgress")

    await pod_status(apiserver, pod, terminated(0, json.dumps({"status": "Succeeded", "steps": 10})))
    await job_status(apiserver, job, {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-22T10:05:00Z"}]})
    status = await phase(apiserver, "Succeeded")
    assert standard(status) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    assert all(condition(status, k)["observedGeneration"] == 1 for k in ("Ready", "Reconciling", "Stalled"))
    assert read(apiserver) == ("Current", "Healthy", "Current")


async def test_a_failed_run_is_stalled(apiserver, operator):
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    await oom_killed(apiserver, job)
    status = await phase(apiserver, "Failed")
    assert standard(status) == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    assert condition(status, "Stalled")["reason"] == "OOMKilled" and condition(status, "Ready")["reason"] == "Failed"
    result = kstatus.compute(obj(apiserver, SFTJOBS, "chat"))
    assert result.status == "Failed" and "out of memory" in result.message
    assert read(apiserver) == ("Failed", "Degraded", "Failed")


async def test_an_invalid_spec_is_stalled(apiserver, operator):
    # a spec the CRD accepts but the operator's cross-field rules refuse
    bad = sftjob(training={"maxSteps": 10, "sftConfig": {"output_dir": "/tmp/elsewhere"}})
    assert (await apply(apiserver, bad)).status == 201
    status = await phase(apiserver, "Failed")
    assert condition(status, "Stalled")["reason"] == "InvalidSpec"
    assert read(apiserver) == ("Failed", "Degraded", "Failed")


async def test_queued_and_suspended_runs_are_in_progress_and_argocd_calls_them_suspended(apiserver, operator):
    await apply(apiserver, sftjob(queueName="team-a"))
    status = await phase(apiserver, "Queued")
    assert standard(status) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert read(apiserver) == ("InProgress", "Suspended", "InProgress")
    await patch(apiserver, PATH, {"spec": {"suspend": True}})
    status = await phase(apiserver, "Suspended")
    assert standard(status) == {"Ready": "False", "Reconciling": "False", "Stalled": "False"}
    assert read(apiserver) == ("InProgress", "Suspended", "InProgress")


async def test_a_spec_change_reads_in_progress_until_the_operator_observed_it(apiserver, operator):
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    await finish(apiserver, job, 0, {"status": "Succeeded", "steps": 10})
    await phase(apiserver, "Succeeded")
    assert read(apiserver) == ("Current", "Healthy", "Current")

    await operator.stop()  # nobody acts on the new generation yet
    await patch(apiserver, PATH, {"spec": {"training": {"maxSteps": 20}}})
    stale = obj(apiserver, SFTJOBS, "chat")
    assert stale["metadata"]["generation"] == 2 and stale["status"]["phase"] == "Succeeded"
    assert kstatus.compute(stale).reason == "LatestGenerationNotObserved"
    assert read(apiserver) == ("InProgress", "Progressing", "InProgress"), "the old run's success is not the new spec's"

    restarted = Operator(apiserver)
    await restarted.start()
    try:
        status = await wait_for(lambda: status_of(apiserver).get("observedGeneration") == 2 and status_of(apiserver))
        assert status["phase"] in ("Pending", "Validating") and status["previousRuns"][0]["phase"] == "Succeeded"
        assert condition(status, "Ready")["observedGeneration"] == 2
        assert read(apiserver) == ("InProgress", "Progressing", "InProgress")
    finally:
        await restarted.stop()


async def test_a_spec_change_that_starts_no_run_reads_current_again_once_observed(apiserver, operator):
    """A change that starts no new run (the validation settings) is current again as soon as the operator saw it."""
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    await finish(apiserver, job, 0, {"status": "Succeeded", "steps": 10})
    await phase(apiserver, "Succeeded")
    await patch(apiserver, PATH, {"spec": {"validation": {"cpu": "3"}}})
    status = await wait_for(lambda: status_of(apiserver).get("observedGeneration") == 2 and status_of(apiserver))
    assert status["phase"] == "Succeeded" and condition(status, "Ready")["observedGeneration"] == 2
    assert read(apiserver) == ("Current", "Healthy", "Current")


async def kubectl(emu, *args, timeout=60):
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--server", str(emu.url).rstrip("/"), "--namespace", NS, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode() + err.decode()


async def test_kubectl_wait_for_ready_returns_when_the_run_succeeded(apiserver, operator):
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    await wait_for(lambda: condition(status_of(apiserver), "Ready"))
    code, out = await kubectl(apiserver, "wait", "--for=condition=Ready", "sftjob/chat", "--timeout=1s")
    assert code != 0 and "timed out" in out, out  # Ready is False while the run has not succeeded
    waiting = asyncio.create_task(kubectl(apiserver, "wait", "--for=condition=Ready", "sftjob/chat", "--timeout=60s"))
    await asyncio.sleep(1.0)
    assert not waiting.done()
    await finish(apiserver, job, 0, {"status": "Succeeded", "steps": 10})
    code, out = await waiting
    assert code == 0 and "sftjob.sftop.dev/chat condition met" in out, out
    code, out = await kubectl(apiserver, "wait", "--for=condition=Stalled=false", "sftjob/chat", "--timeout=5s")
    assert code == 0, out


async def test_a_spec_change_mid_run_reads_in_progress_until_observed_then_follows_the_run(apiserver, operator):
    await apply(apiserver, sftjob())
    job = (await wait_for(lambda: objs(apiserver, "batch/v1/jobs")))[0]
    pod = await make_pod(apiserver, job)
    await pod_status(apiserver, pod, running())
    await phase(apiserver, "Running")
    await operator.stop()
    await patch(apiserver, PATH, {"spec": {"suspend": True}})
    stale = obj(apiserver, SFTJOBS, "chat")
    assert (stale["metadata"]["generation"], stale["status"]["observedGeneration"]) == (2, 1)
    result = kstatus.compute(stale)
    assert (result.status, result.reason) == ("InProgress", "LatestGenerationNotObserved")
    assert argocd.health(SCRIPT, stale)["message"].startswith("Waiting for the sftop operator to act on generation 2")
    restarted = Operator(apiserver)
    await restarted.start()
    try:
        status = await phase(apiserver, "Suspended")
        assert status["observedGeneration"] == 2 and condition(status, "Reconciling")["observedGeneration"] == 2
        assert read(apiserver) == ("InProgress", "Suspended", "InProgress")
    finally:
        await restarted.stop()
