"""What a platform team allows: the SFTPolicy refuses a violating SFTJob at `kubectl apply` (the chart's
ValidatingAdmissionPolicy, run by the emulated API server as a real one runs it) and again in the operator before
anything is created; GPU profiles place a run and size its plan; namespaces override the cluster's rules."""

import asyncio
import copy
from pathlib import Path

import pytest
import yaml

from harness.cluster import NS, apply, condition, kubectl, objs, patch, status_of, wait_for
from sftop import policy

ROOT = Path(__file__).resolve().parents[2]
POLICY = {
    "images": ["ghcr.io/acme/trainer:"],
    "hubOrganizations": ["Qwen", "HuggingFaceTB"],
    "claims": ["models", "datasets"],
    "maxGpusPerJob": 8,
    "priorityClasses": ["batch-low"],
    "workloadPriorityClasses": ["research"],
    "nodeSelectorKeys": ["nvidia.com/gpu.product"],
    "tolerationKeys": ["nvidia.com/gpu"],
    "allowAffinity": False,
    "maxActiveDeadlineSeconds": 86400,
    "defaultActiveDeadlineSeconds": 43200,
    "profiles": {"a100-80g": {"nodeSelector": {"pool": "a100"}, "gpuMemory": "80Gi", "queueName": "gpu",
                              "tolerations": [{"key": "pool", "operator": "Equal", "value": "a100",
                                               "effect": "NoSchedule"}],
                              "cpuPerGpu": "8", "memoryPerGpu": "120Gi"},
                 "l4-24g": {"nodeSelector": {"pool": "l4"}, "gpuMemory": "24Gi"},
                 "research-h100": {"nodeSelector": {"pool": "research"}, "gpuMemory": "80Gi"}},
    "allowedProfiles": ["a100-80g", "l4-24g"],
    "outputClaims": ["adapters"],
    "namespaces": {"research": {"maxGpusPerJob": 32, "trustRemoteCode": True, "allowedProfiles": ["*"]}},
}


def sftjob(name="chat", namespace=NS, **spec):
    base = {"model": {"hub": {"id": "Qwen/Qwen2.5-0.5B-Instruct"}},
            "dataset": {"inline": [{"prompt": "hi", "completion": "hello"}]},
            "training": {"maxSteps": 10},
            "output": {"pvc": {"claimName": "adapters", "create": {"size": "1Gi"}}},
            "validation": {"enabled": False}}
    base.update(spec)
    return {"apiVersion": "sftop.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name, "namespace": namespace},
            "spec": base}


# (rule, the spec fields that break it)
BROKEN = [
    ("image", {"image": "docker.io/someone/trainer:latest"}),
    ("image", {"image": "ghcr.io/acme/trainer-evil:1"}),  # a prefix ends at ':' so a look-alike repository fails
    ("trustRemoteCode", {"model": {"hub": {"id": "Qwen/Qwen2.5-0.5B-Instruct"}, "trustRemoteCode": True}}),
    ("hubOrganizations", {"model": {"hub": {"id": "someone/llama-uncensored"}}}),
    ("hubOrganizations", {"dataset": {"hub": {"name": "someone/leaked-data"}}}),
    ("claims", {"dataset": {"pvc": {"claimName": "payroll", "path": "rows.jsonl"}}}),
    ("claims", {"warmStart": {"pvc": {"claimName": "other-teams-adapters", "path": "run/adapter"}}}),
    ("outputClaims", {"output": {"pvc": {"claimName": "datasets"}}}),
    ("maxGpusPerJob", {"resources": {"gpus": 5}, "distribution": {"nodes": 2}, "output": {"pvc": {
        "claimName": "adapters", "create": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}}}),
    ("priorityClasses", {"resources": {"priorityClassName": "system-cluster-critical"}}),
    ("workloadPriorityClasses", {"queueName": "gpu", "workloadPriorityClassName": "production-urgent"}),
    ("nodeSelectorKeys", {"resources": {"nodeSelector": {"kubernetes.io/hostname": "reserved-node-1"}}}),
    ("tolerationKeys", {"resources": {"tolerations": [{"operator": "Exists"}]}}),
    ("allowAffinity", {"resources": {"affinity": {"nodeAffinity": {}}}}),
    ("maxActiveDeadlineSeconds", {"runPolicy": {"activeDeadlineSeconds": 604800}}),
    ("profiles", {"resources": {"profile": "h100-80g"}}),
    ("allowedProfiles", {"resources": {"profile": "research-h100"}}),
]


async def install(emu, spec=POLICY, binding=True):
    """The chart's policy objects: the SFTPolicy, and (binding) the ValidatingAdmissionPolicy and its binding."""
    resp = await emu.post("/apis/sftop.dev/v1alpha1/sftpolicies", json=policy.policy_object(spec))
    assert resp.status == 201, await resp.text()
    if binding:
        vap = yaml.safe_load((ROOT / "helm" / "sftop" / "files" / "admission-policy.yaml").read_text())
        for path, body in (("validatingadmissionpolicies", vap),
                           ("validatingadmissionpolicybindings", policy.admission_binding())):
            resp = await emu.post(f"/apis/admissionregistration.k8s.io/v1/{path}", json=body)
            assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("rule,fields", BROKEN, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BROKEN)])
async def test_each_rule_refuses_the_sftjob_at_apply_naming_the_rule_and_what_is_allowed(apiserver, rule, fields):
    await install(apiserver)
    resp = await apply(apiserver, sftjob(**fields))
    body = await resp.json()
    assert resp.status == 403 and body["reason"] == "Forbidden", body
    assert body["message"].startswith('sftjobs.sftop.dev "chat" is forbidden: ValidatingAdmissionPolicy \'sftop\' '
                                      "with binding 'sftop' denied request: policy rule " + rule + ":"), body
    assert objs(apiserver, "sftop.dev/v1alpha1/sftjobs") == []


async def test_what_the_policy_allows_is_admitted_and_namespaces_override_the_cluster(apiserver):
    await install(apiserver)
    allowed = sftjob(image="ghcr.io/acme/trainer:2.1", queueName="gpu", workloadPriorityClassName="research",
                     resources={"gpus": 8, "profile": "a100-80g", "priorityClassName": "batch-low",
                                "nodeSelector": {"nvidia.com/gpu.product": "A100-SXM4-80GB"},
                                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
                     runPolicy={"activeDeadlineSeconds": 3600})
    resp = await apply(apiserver, allowed)
    assert resp.status == 201, await resp.text()
    big = {"resources": {"gpus": 16}, "model": {"hub": {"id": "Qwen/Qwen2.5-7B"}, "trustRemoteCode": True}}
    resp = await apply(apiserver, sftjob("big", "research", **big))
    assert resp.status == 201, await resp.text()
    resp = await apply(apiserver, sftjob("big", NS, **big))
    assert resp.status == 403 and "policy rule trustRemoteCode" in (await resp.json())["message"]
    # editing a stored SFTJob is judged too; writing its status is not (the operator must always report)
    path = f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/chat"
    merge = {"Content-Type": "application/merge-patch+json"}
    resp = await apiserver.patch(path, json={"spec": {"image": "docker.io/x/y:1"}}, headers=merge)
    assert resp.status == 403 and "policy rule image" in (await resp.json())["message"]
    resp = await apiserver.patch(path + "/status", json={"status": {"phase": "Pending"}}, headers=merge)
    assert resp.status == 200, await resp.text()


async def test_a_run_the_policy_has_since_tightened_against_can_still_be_suspended_and_relabelled(apiserver):
    """Updates that change nothing the rules read are not judged again; one that does is."""
    await install(apiserver)
    resp = await apply(apiserver, sftjob(resources={"gpus": 8}))
    assert resp.status == 201, await resp.text()
    await patch(apiserver, "/apis/sftop.dev/v1alpha1/sftpolicies/default", {"spec": {"maxGpusPerJob": 4}})
    path = f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/chat"
    await patch(apiserver, path, {"spec": {"suspend": True}, "metadata": {"labels": {"team": "a"}}})
    merge = {"Content-Type": "application/merge-patch+json"}
    resp = await apiserver.patch(path, json={"spec": {"resources": {"gpus": 6}}}, headers=merge)
    assert resp.status == 403 and "policy rule maxGpusPerJob" in (await resp.json())["message"]


async def test_without_its_sftpolicy_sftjobs_are_admitted_for_the_operator_to_hold(apiserver):
    """parameterNotFoundAction Allow: a policy briefly absent (an upgrade re-creating it) refuses no write."""
    await install(apiserver)
    resp = await apiserver.delete("/apis/sftop.dev/v1alpha1/sftpolicies/default")
    assert resp.status < 300
    resp = await apply(apiserver, sftjob(image="docker.io/x/y:1"))
    assert resp.status == 201, await resp.text()


@pytest.fixture
async def policed(apiserver, monkeypatch):
    """The operator enforcing the SFTPolicy `default` (SFTOP_POLICY, as the chart sets it), on a cluster whose API
    server runs no admission policy (they are off, or the binding was left out)."""
    from harness.cluster import Operator

    monkeypatch.setenv("SFTOP_POLICY", "default")
    monkeypatch.setenv("SFTOP_K8S_SERVER", str(apiserver.url).rstrip("/"))
    monkeypatch.setenv("SFTOP_RESYNC_INTERVAL", "5")
    monkeypatch.setenv("SFTOP_TRAINER_IMAGE", "ghcr.io/sftop/sftop-trainer:test")
    monkeypatch.setenv("SFTOP_METRICS_PORT", "0")
    op = Operator(apiserver)
    await op.start()
    try:
        yield op
    finally:
        await op.stop()


async def test_the_operator_refuses_what_admission_let_through_before_creating_anything(apiserver, policed):
    await install(apiserver, binding=False)
    for i, (rule, fields) in enumerate(BROKEN):
        resp = await apply(apiserver, sftjob(f"bad-{i}", **fields))
        assert resp.status == 201, await resp.text()
    for i, (rule, _) in enumerate(BROKEN):
        status = await wait_for(lambda: status_of(apiserver, f"bad-{i}").get("phase") == "Failed" and
                                status_of(apiserver, f"bad-{i}"), timeout=20,
                                explain=lambda: status_of(apiserver, f"bad-{i}"))
        accepted = condition(status, "Accepted")
        assert accepted["status"] == "False" and accepted["reason"] == "PolicyViolation"
        assert f"policy rule {rule}:" in status["message"], (rule, status["message"])
    for resource in ("batch/v1/jobs", "v1/configmaps", "v1/persistentvolumeclaims"):
        assert objs(apiserver, resource) == [], f"a refused run created {resource}"
    # never retried: one event each, then the refusal stands through a resync (5 s here) without another write
    await wait_for(lambda: len([e for e in objs(apiserver, "v1/events") if e.get("reason") == "PolicyViolation"])
                   == len(BROKEN), timeout=10)
    before = len(apiserver.log)
    await asyncio.sleep(6)
    assert [r.url.path for r in apiserver.log[before:] if r.method.value.upper() in ("POST", "PATCH", "PUT")] == []
    assert all(status_of(apiserver, f"bad-{i}")["phase"] == "Failed" for i in range(len(BROKEN)))


async def test_a_refused_run_is_judged_again_once_its_spec_changes(apiserver, policed):
    """queueName is no training input: fixing it keeps the run id, and the run is judged again all the same."""
    await install(apiserver, {**POLICY, "requireQueue": True}, binding=False)
    resp = await apply(apiserver, sftjob())
    assert resp.status == 201, await resp.text()
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Failed" and status_of(apiserver),
                            timeout=20)
    assert "policy rule requireQueue" in status["message"]
    rid = status["run"]["id"]
    await patch(apiserver, f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/chat", {"spec": {"queueName": "gpu"}})
    job = await wait_for(lambda: next(iter(objs(apiserver, "batch/v1/jobs")), None), timeout=20,
                         explain=lambda: status_of(apiserver))
    assert job["metadata"]["labels"]["sftop.dev/run"] == rid
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Queued" and status_of(apiserver),
                            timeout=20)
    assert condition(status, "Failed") is None and condition(status, "Accepted")["status"] == "True", \
        "nothing of the refusal stays"


async def test_a_profile_places_the_run_fills_its_resources_and_queue_and_the_default_deadline(apiserver, policed):
    await install(apiserver, binding=False)
    resp = await apply(apiserver, sftjob(resources={"gpus": 2, "profile": "a100-80g"}))
    assert resp.status == 201, await resp.text()
    job = await wait_for(lambda: next(iter(objs(apiserver, "batch/v1/jobs")), None), timeout=20,
                         explain=lambda: status_of(apiserver))
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert {"key": "pool", "operator": "Equal", "value": "a100", "effect": "NoSchedule"} in pod["tolerations"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["cpu"] == "16" and limits["memory"] == "240Gi" and limits["nvidia.com/gpu"] == "2"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu" and job["spec"]["suspend"] is True
    assert job["spec"]["activeDeadlineSeconds"] == 43200
    assert job["metadata"]["annotations"]["sftop.dev/gpus"] == "2"
    header, row = (await kubectl(apiserver, "get", "sftjobs")).splitlines()[:2]
    assert row[header.index("PROFILE"):].split()[0] == "a100-80g"
    # the run id is the user's spec: the platform team editing the profile does not start a new run
    rid = (await wait_for(lambda: status_of(apiserver).get("run"), timeout=10))["id"]
    changed = copy.deepcopy(POLICY)
    changed["profiles"]["a100-80g"]["nodeSelector"] = {"pool": "a100-new"}
    await patch(apiserver, "/apis/sftop.dev/v1alpha1/sftpolicies/default", {"spec": changed})
    await asyncio.sleep(6)  # a resync
    assert status_of(apiserver)["run"]["id"] == rid and len(objs(apiserver, "batch/v1/jobs")) == 1
    # the queue the profile gave stays the Job's, even with the policy gone: Kueue still holds it
    resp = await apiserver.delete("/apis/sftop.dev/v1alpha1/sftpolicies/default")
    assert resp.status < 300
    await asyncio.sleep(6)
    job, = objs(apiserver, "batch/v1/jobs")
    assert job["spec"]["suspend"] is True and status_of(apiserver)["phase"] == "Queued"


async def test_a_namespace_at_its_gpu_limit_holds_the_next_run_until_one_finishes(apiserver, policed):
    spec = {**POLICY, "namespaces": {NS: {"maxGpusPerNamespace": 4}}}
    await install(apiserver, spec, binding=False)
    for name in ("first", "second"):
        resp = await apply(apiserver, sftjob(name, resources={"gpus": 3}))
        assert resp.status == 201, await resp.text()
        await wait_for(lambda: status_of(apiserver, name).get("phase"), timeout=20)
    waiting = await wait_for(lambda: next((n for n in ("first", "second")
                                           if lambda_reason(status_of(apiserver, n)) == "WaitingForGpuQuota"), None),
                             timeout=20)
    assert len(objs(apiserver, "batch/v1/jobs")) == 1
    assert "hold 3 of the 4 GPUs" in status_of(apiserver, waiting)["message"]
    running = ({"first", "second"} - {waiting}).pop()
    job = objs(apiserver, "batch/v1/jobs")[0]
    assert job["metadata"]["labels"]["sftop.dev/sftjob"] == running
    resp = await apiserver.delete(f"/apis/sftop.dev/v1alpha1/namespaces/{NS}/sftjobs/{running}")
    assert resp.status < 300
    await wait_for(lambda: any(j["metadata"]["labels"]["sftop.dev/sftjob"] == waiting
                               for j in objs(apiserver, "batch/v1/jobs")), timeout=40,
                   explain=lambda: status_of(apiserver, waiting))


def lambda_reason(status):
    from sftop import lifecycle

    return lifecycle.phase_reason(status) if status else None


async def test_a_missing_sftpolicy_holds_new_runs_until_it_exists(apiserver, policed):
    resp = await apply(apiserver, sftjob())
    assert resp.status == 201
    status = await wait_for(lambda: status_of(apiserver).get("phase") == "Pending" and status_of(apiserver),
                            timeout=20)
    assert "the SFTPolicy default that this operator enforces (SFTOP_POLICY) does not exist" in status["message"]
    assert objs(apiserver, "batch/v1/jobs") == []
    await install(apiserver, binding=False)
    await wait_for(lambda: objs(apiserver, "batch/v1/jobs"), timeout=45, explain=lambda: status_of(apiserver))
