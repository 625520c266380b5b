"""The SFTPolicy's pure parts: the rule values a namespace gets, a profile resolved into a run's placement and plan,
and the admission policy the chart installs (tests/operator/test_policy.py runs it in the emulated API server)."""

import pytest

from sftop import api, policy, render

POLICY = policy.policy_object({
    "maxGpusPerJob": 8, "maxActiveDeadlineSeconds": 7200,
    "profiles": {"a100-80g": {"nodeSelector": {"pool": "a100"}, "gpuMemory": "80Gi", "queueName": "gpu",
                              "tolerations": [{"key": "pool", "operator": "Exists"}], "cpuPerGpu": "7500m",
                              "memoryPerGpu": "120Gi", "gpuResourceName": "nvidia.com/mig-7g.80gb"}},
    "namespaces": {"research": {"maxGpusPerJob": 32, "trustRemoteCode": True}}})


def spec(**fields):
    base = {"model": {"hub": {"id": "Qwen/Qwen2.5-0.5B-Instruct"}}, "dataset": {"inline": [{"text": "x"}]},
            "output": {"pvc": {"claimName": "o"}}}
    return api.SFTJobSpec.model_validate({**base, **fields})


def test_a_namespace_override_replaces_only_the_rules_it_sets():
    research, other = policy.effective(POLICY, "research"), policy.effective(POLICY, "team-a")
    assert research["maxGpusPerJob"] == 32 and research["trustRemoteCode"] is True
    assert other["maxGpusPerJob"] == 8 and other["trustRemoteCode"] is False
    assert research["maxActiveDeadlineSeconds"] == other["maxActiveDeadlineSeconds"] == 7200
    assert other["images"] == [] and other["hubOrganizations"] == ["*"], "defaults where nothing is set"


def test_a_profile_fills_in_placement_resources_queue_and_the_plans_gpu_memory():
    placed = policy.place(spec(resources={"gpus": 2, "profile": "a100-80g", "nodeSelector": {"zone": "b"}}), POLICY,
                          "team-a")
    res = placed.resources
    assert res.node_selector == {"pool": "a100", "zone": "b"}
    assert [t.key for t in res.tolerations] == ["pool"]
    assert (res.cpu, res.memory, res.gpu_resource_name) == ("15000m", "240Gi", "nvidia.com/mig-7g.80gb")
    assert placed.queue_name == "gpu"
    assert placed.run_policy.active_deadline_seconds == 7200, "the longest allowed, when no default is set"
    hardware = render.hardware(placed)
    assert hardware.gpu_memory == 80 * 2**30 and hardware.gpus == 2
    assert hardware.gpu_memory_source == "GPU profile a100-80g: 80Gi"
    # what the user set wins over the profile
    own = policy.place(spec(queueName="mine", resources={"profile": "a100-80g", "cpu": "4", "gpuMemory": "40Gi"},
                            runPolicy={"activeDeadlineSeconds": 60}), POLICY, "team-a")
    assert (own.queue_name, own.resources.cpu, own.resources.gpu_memory) == ("mine", "4", "40Gi")
    assert own.run_policy.active_deadline_seconds == 60
    # and the run id is the user's spec: the profile's contents are not in it
    assert render.run_id(spec(resources={"profile": "a100-80g"})) != render.run_id(spec())


@pytest.mark.parametrize("fields,rule", [
    ({"image": "ghcr.io/sftop/sftop-trainer:1"}, "image"),
    ({"resources": {"gpus": 9}}, "maxGpusPerJob"),
    ({"runPolicy": {"activeDeadlineSeconds": 7201}}, "maxActiveDeadlineSeconds"),
])
def test_the_operator_reads_the_admission_policys_own_rules(fields, rule):
    body = {"spec": spec(**fields).dump()}
    assert [r for r, _ in policy.violations(POLICY, body, "team-a")] == [rule]
    assert policy.violations(POLICY, {"spec": spec().dump()}, "team-a") == []


def test_every_rule_the_admission_policy_checks_has_a_validation_and_a_variable():
    vap = policy.admission_policy()
    names = [v["name"] for v in vap["spec"]["variables"]]
    assert set(names) | {"maxGpusPerNamespace", "defaultActiveDeadlineSeconds", "cacheClaim"} == set(policy.DEFAULTS)
    assert len(vap["spec"]["validations"]) == len(policy.VALIDATIONS)
    assert all(v["reason"] == "Forbidden" and v["messageExpression"] for v in vap["spec"]["validations"])
