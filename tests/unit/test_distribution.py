"""Multi-node runs, rendered and observed without a cluster: the spec's rules, the Indexed Job and its headless
Service, the trainer's torchrun command, and the phase of a group of pods."""

import kubernetes_validate
import pytest

from sftop import api, lifecycle, render, validate
from sftop.settings import Settings
from sftop_trainer.launch import Group, launch_command, worst
from sftop_trainer.errors import ExitCode

BASE = {"model": {"hub": {"id": "Qwen/Qwen2.5-7B-Instruct"}}, "dataset": {"hub": {"name": "trl-lib/Capybara"}},
        "method": "full", "resources": {"gpus": 8},
        "output": {"pvc": {"claimName": "shared", "create": {"size": "100Gi", "accessModes": ["ReadWriteMany"]}}}}


def sftjob(name="big", **spec):
    return {"apiVersion": "sftop.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name, "namespace": "ml"},
            "spec": {**BASE, **spec}}


def problems(doc):
    return [str(p) for p in validate.validate_document(doc)]


def test_two_nodes_render_an_indexed_job_and_a_headless_service_that_validate():
    doc = sftjob(distribution={"nodes": 2, "strategy": "FSDP"})
    doc["spec"]["resources"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert problems(doc) == []
    spec = api.SFTJob.model_validate(doc).spec
    rid = render.run_id(spec)
    job = render.job("big", "ml", spec, rid, Settings())
    service = render.service("big", "ml", rid)
    for obj in (job, service):
        kubernetes_validate.validate(obj, "1.32.0", strict=True)
    s = job["spec"]
    assert s["completionMode"] == "Indexed" and s["completions"] == s["parallelism"] == 2
    pod = s["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == f"big-{rid}"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "GPU placement kept"
    # the Service selects exactly the run's trainer pods, and names them before they are ready
    labels = s["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["SFTOP_RENDEZVOUS"]["value"] == f"big-{rid}-0.big-{rid}.ml.svc:29400"
    assert env["SFTOP_NODE_ADDRESS"]["value"] == f"big-{rid}-$(JOB_COMPLETION_INDEX).big-{rid}.ml.svc"
    names = [e["name"] for e in pod["containers"][0]["env"]]
    assert names.index("JOB_COMPLETION_INDEX") < names.index("SFTOP_NODE_ADDRESS"), "kubelet expands earlier ones"
    assert {"name": "rendezvous", "containerPort": 29400, "protocol": "TCP"} in pod["containers"][0]["ports"]
    # 8 GPUs on each pod; Kueue sees parallelism 2 and admits 16 at once
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    ignored = [r for r in s["podFailurePolicy"]["rules"] if r["action"] == "Ignore" and "onExitCodes" in r][0]
    assert ExitCode.PEER_LOST in ignored["onExitCodes"]["values"]
    config = render.trainer_config("big", "ml", spec, rid)
    assert config.distribution.nodes == 2 and config.distribution.strategy == "FSDP"


def test_a_single_node_run_is_unchanged_and_keeps_its_run_id():
    spec = api.SFTJob.model_validate(sftjob()).spec
    stated = api.SFTJob.model_validate(sftjob(distribution={"nodes": 1, "strategy": "DataParallel"})).spec
    assert render.run_id(spec) == render.run_id(stated), "stating the defaults starts no new run"
    two = api.SFTJob.model_validate(sftjob(distribution={"nodes": 2})).spec
    assert render.run_id(two) != render.run_id(spec), "more nodes change the effective batch: a new run"
    job = render.job("big", "ml", spec, render.run_id(spec), Settings())
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    assert job["spec"]["completions"] == 1


def test_a_name_starting_with_a_digit_gets_a_service_name_kubernetes_accepts():
    spec = api.SFTJob.model_validate(sftjob("7b-run", distribution={"nodes": 2})).spec
    rid = render.run_id(spec)
    service = render.service("7b-run", "ml", rid)
    kubernetes_validate.validate(service, "1.32.0", strict=True)
    assert render.job("7b-run", "ml", spec, rid, Settings())["spec"]["template"]["spec"]["subdomain"] == \
        service["metadata"]["name"] == f"s7b-run-{rid}"


@pytest.mark.parametrize("spec, field, words", [
    ({"distribution": {"strategy": "FSDP"}, "resources": {"gpus": 1}}, "spec", "distribution.strategy FSDP shards"),
    ({"distribution": {"cpuOffload": True}}, "spec.distribution", "cpuOffload applies only to strategy FSDP"),
    ({"method": "qlora", "distribution": {"nodes": 2, "strategy": "FSDP"}}, "spec", "cannot shard 4-bit weights"),
    ({"distribution": {"nodes": 2, "strategy": "FSDP"}, "resources": {"gpus": 0}}, "spec", "FSDP needs GPUs"),
    ({"distribution": {"nodes": 2}, "output": {"pvc": {"claimName": "x", "create": {"size": "1Gi"}}}}, "spec",
     "ReadWriteMany"),
    ({"distribution": {"nodes": 65}}, "spec.distribution.nodes", "64"),
])
def test_combinations_that_cannot_work_are_refused_with_the_field_named(spec, field, words):
    found = problems(sftjob(**spec))
    assert any(p.startswith(field) and words in p for p in found), found


def test_a_multi_node_name_leaves_room_for_the_pods_hostnames():
    long = "n" * (api.MAX_MULTI_NODE_NAME_LENGTH + 1)
    assert any("hostname" in p for p in problems(sftjob(long, distribution={"nodes": 2})))
    assert problems(sftjob(long)) == [], "a single-node run may use the longer name"
    assert problems(sftjob(long[:-1], distribution={"nodes": 64})) == []


def test_the_trainer_launches_torchrun_with_c10d_on_pod_0():
    host = Group(nodes=2, index=0, rendezvous="big-0.big.ml.svc:29400", address="big-0.big.ml.svc", run_id="abc")
    cmd = launch_command(8, "/etc/sftop/config.json", "/tmp/s/rank", host)
    text = " ".join(cmd)
    assert "--nnodes 2 --rdzv-backend c10d --rdzv-endpoint big-0.big.ml.svc:29400 --rdzv-id abc" in text
    assert "--rdzv-conf is_host=true,join_timeout=1800,read_timeout=60 --local-addr big-0.big.ml.svc" in text
    assert "--nproc_per_node 8" in text
    worker = launch_command(8, "/c.json", "/tmp/s/rank", Group(2, 1, host.rendezvous, "big-1.big.ml.svc", "abc"))
    assert "is_host=false" in " ".join(worker) and "--standalone" not in worker


def test_a_pod_exits_with_its_own_failure_before_a_lost_peer():
    assert worst([0, ExitCode.PEER_LOST]) == ExitCode.PEER_LOST
    assert worst([ExitCode.PEER_LOST, ExitCode.OUT_OF_MEMORY]) == ExitCode.OUT_OF_MEMORY
    assert worst([ExitCode.UNEXPECTED, ExitCode.INVALID_DATA]) == ExitCode.INVALID_DATA
    assert worst([0, 0]) == 0


def pod(name, index, phase, ip=None, created="2026-01-01T00:00:00Z", exit_code=None, message=None):
    status = {"phase": phase, "podIP": ip}
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {
            "exitCode": exit_code, "message": message or ""}}}]
    return {"metadata": {"name": name, "creationTimestamp": created,
                         "annotations": {lifecycle.COMPLETION_INDEX: str(index)}}, "status": status}


JOB = {"metadata": {"name": "big-1"}, "spec": {}, "status": {"active": 2}}


def test_a_group_runs_once_every_pod_runs_and_follows_pod_0():
    one = lifecycle.observe(False, False, JOB, [pod("a", 0, "Running", "10.0.0.5"), pod("b", 1, "Pending")], 2)
    assert one.phase == "Pending" and one.message.startswith("pod 1 of 2")
    both = lifecycle.observe(False, False, JOB, [pod("b", 1, "Running", "10.0.0.9"), pod("a", 0, "Running",
                                                                                          "10.0.0.5")], 2)
    assert both.phase == "Running" and both.pod_ip == "10.0.0.5" and "2 pods" in both.message


def test_a_group_reports_the_lost_pod_not_the_one_that_stopped_with_it():
    pods = [pod("a", 0, "Failed", exit_code=137, created="2026-01-01T00:00:00Z"),
            pod("b", 1, "Failed", exit_code=ExitCode.PEER_LOST, created="2026-01-01T00:00:01Z",
                message='{"status":"Failed","reason":"PeerLost","message":"another training process went away"}'),
            pod("c", 0, "Running", "10.0.0.7", created="2026-01-01T00:01:00Z"),
            pod("d", 1, "Running", "10.0.0.8", created="2026-01-01T00:01:00Z")]
    seen = lifecycle.observe(False, False, JOB, pods, 2)
    assert seen.phase == "Running" and seen.pod_ip == "10.0.0.7" and "Killed" in seen.message


def test_the_result_comes_from_pod_0_even_when_another_pod_ended_last():
    done = {**JOB, "status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 2}}
    pods = [pod("a", 0, "Succeeded", exit_code=0, message='{"status":"Succeeded","steps":40}'),
            pod("b", 1, "Succeeded", exit_code=0, message='{"status":"Succeeded"}', created="2026-01-01T00:00:09Z")]
    seen = lifecycle.observe(False, False, done, pods, 2)
    assert seen.phase == "Succeeded" and seen.result == {"status": "Succeeded", "steps": 40}


def test_a_group_whose_pod_0_finished_first_is_completing_not_waiting():
    pods = [pod("a", 0, "Succeeded", exit_code=0, message='{"status":"Succeeded","steps":40}'),
            pod("b", 1, "Running", "10.0.0.9")]
    seen = lifecycle.observe(False, False, JOB, pods, 2)
    assert (seen.phase, seen.reason) == ("Running", "Completing")


def test_a_process_that_dies_without_a_word_makes_its_pod_fail_as_a_counted_failure():
    """A rank killed by a signal writes no status; the survivors stopped by torchrun say Interrupted or PeerLost,
    which podFailurePolicy ignores: without this a crash that repeats would retry forever."""
    from sftop_trainer.launch import died_silently, pod_outcome

    survivor = [{"exitCode": ExitCode.PEER_LOST, "localRank": 0, "round": 0, "time": 1.0}]
    assert "local rank 1 ended without a word" in died_silently(survivor, 2, signalled=False)
    assert died_silently(survivor, 2, signalled=True) is None, "the pod was told to stop: an interruption"
    both = survivor + [{"exitCode": ExitCode.PEER_LOST, "localRank": 1, "round": 0, "time": 2.0}]
    assert died_silently(both, 2, signalled=False) is None, "every process spoke: another pod was lost"
    own = [{"exitCode": ExitCode.INVALID_DATA, "localRank": 0, "round": 0, "time": 1.0}]
    assert died_silently(own, 2, signalled=False) is None and pod_outcome(own)[0] == ExitCode.INVALID_DATA
    assert died_silently([], 2, signalled=False) is None, "nothing spoke and none was seen ending: torchrun's failure"
    # torchrun killed a survivor that did not stop in time: neither spoke, and the watch saw rank 1 die first
    assert "local rank 1 ended without a word" in died_silently([], 2, signalled=False, first=[1])
    assert "local rank 1 ended" in died_silently(survivor, 2, signalled=False, first=[1])


def test_only_the_latest_torchrun_round_counts(tmp_path):
    import json

    from sftop_trainer.launch import read_statuses

    (tmp_path / "rank-0.json").write_text(json.dumps({"exitCode": 0, "localRank": 0, "round": 2, "time": 5}))
    (tmp_path / "rank-1.json").write_text(json.dumps({"exitCode": 71, "localRank": 1, "round": 1, "time": 3}))
    assert [s["localRank"] for s in read_statuses(tmp_path)] == [0]
