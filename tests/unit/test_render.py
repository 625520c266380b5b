"""The run's children, rendered from SFTJob specs without a cluster."""

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from harness.cluster import sftjob
from harness.pss import restricted_violations
from sftop import api, render
from sftop.settings import Settings, SettingsError
from sftop_trainer.config import TrainerConfig
from sftop_trainer.errors import ExitCode

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SFTJOBS = [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
           if d and d.get("kind") == "SFTJob"]


def parse(doc):
    job = api.SFTJob.model_validate(doc)
    return job.metadata.name, job.metadata.namespace or "default", job.spec


@pytest.mark.parametrize("doc", SFTJOBS, ids=[d["metadata"]["name"] for d in SFTJOBS])
def test_every_example_renders_a_valid_restricted_job_and_config(doc):
    name, ns, spec = parse(doc)
    rid = render.run_id(spec)
    job = render.job(name, ns, spec, rid, Settings())
    kubernetes_validate.validate(job, "1.32.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    config_map = render.config_map(name, ns, spec, rid, Settings())
    kubernetes_validate.validate(config_map, "1.32.0", strict=True)
    config = TrainerConfig.model_validate(json.loads(config_map["data"]["config.json"]))
    assert config.output.dir == f"/output/{render.run_folder(spec, ns, name, rid)}"
    claim = render.output_claim(ns, spec)
    if claim is not None:
        kubernetes_validate.validate(claim, "1.32.0", strict=True)


def test_gpus_requests_equal_limits_and_placement():
    _, _, spec = parse(next(d for d in SFTJOBS if d["metadata"]["name"] == "team-a-nightly"))
    job = render.job("team-a-nightly", "team-a", spec, "abcd1234", Settings())
    pod = job["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "16", "memory": "96Gi", "nvidia.com/gpu": "2"}
    assert pod["priorityClassName"] == "training-high"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"] is True
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"], job["spec"]["ttlSecondsAfterFinished"]) \
        == (5, 43200, 86400)
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


def test_read_volumes_are_read_only_and_the_token_is_an_env_reference():
    _, _, spec = parse(next(d for d in SFTJOBS if d["metadata"]["name"] == "support-bot"))
    pod = render.job("support-bot", "team-nlp", spec, "r1", Settings())["spec"]["template"]["spec"]
    inputs = [v for v in pod["volumes"] if v["name"].startswith("input-")]
    assert {v["persistentVolumeClaim"]["claimName"] for v in inputs} == {"base-models", "datasets"}
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in inputs)
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert all(mounts[v["name"]]["readOnly"] for v in inputs)
    _, _, gated = parse(next(d for d in SFTJOBS if d["metadata"]["name"] == "llama31-8b-qlora"))
    env = render.job("x", "ns", gated, "r1", Settings())["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in env


def test_pod_failure_policy_follows_the_trainer_exit_codes():
    rules = render.pod_failure_policy()["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")["onExitCodes"]["values"]
    assert set(fail) == {ExitCode.INVALID_CONFIG, ExitCode.INVALID_DATA, ExitCode.MODEL_LOAD_FAILED,
                         ExitCode.OUT_OF_MEMORY, ExitCode.LOSS_NOT_FINITE, ExitCode.LOSS_SPIKE,
                         ExitCode.GPU_UNAVAILABLE, ExitCode.DATA_QUALITY, ExitCode.REVISION_NOT_FOUND,
                         ExitCode.HUB_ACCESS_DENIED, ExitCode.CACHE_FULL, ExitCode.CACHE_CORRUPT,
                         ExitCode.CACHE_NOT_WRITABLE}
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert any(ExitCode.INTERRUPTED in r.get("onExitCodes", {}).get("values", []) for r in ignore)
    assert any(c["type"] == "DisruptionTarget" for r in ignore for c in r.get("onPodConditions", []))


def test_run_id_changes_with_training_inputs_only():
    _, _, spec = parse(SFTJOBS[0])
    rid = render.run_id(spec)
    same = spec.model_copy(update={"suspend": True, "queue_name": "q"})
    assert render.run_id(same) == rid
    explicit_default = api.SFTJobSpec.model_validate({**spec.dump(), "suspend": False, "training": {**spec.training.dump(), "seed": 42}})
    assert render.run_id(explicit_default) == rid
    changed = api.SFTJobSpec.model_validate({**spec.dump(), "training": {**spec.training.dump(), "seed": 7}})
    assert render.run_id(changed) != rid


def test_settings_from_environment():
    s = Settings.from_env({"SFTOP_NAMESPACES": "team-a, team-b", "SFTOP_TRAINER_IMAGE": "reg/t:1",
                           "SFTOP_PROGRESS_INTERVAL": "5", "SFTOP_LOG_FORMAT": "json"})
    assert s.namespaces == ("team-a", "team-b") and not s.clusterwide and s.trainer_image == "reg/t:1"
    assert s.progress_interval == 5.0 and s.log_format == "json"
    assert Settings.from_env({}).clusterwide
    with pytest.raises(SettingsError, match="SFTOP_WORKERS"):
        Settings.from_env({"SFTOP_WORKERS": "many"})
    with pytest.raises(SettingsError, match="SFTOP_LOG_FORMAT"):
        Settings.from_env({"SFTOP_LOG_FORMAT": "xml"})


@pytest.mark.parametrize("doc", SFTJOBS, ids=[d["metadata"]["name"] for d in SFTJOBS])
def test_every_example_renders_a_restricted_cpu_only_validation_job(doc):
    name, ns, spec = parse(doc)
    rid = render.run_id(spec)
    job = render.validation_job(name, ns, spec, rid, Settings())
    training = render.job(name, ns, spec, rid, Settings())
    kubernetes_validate.validate(job, "1.32.0", strict=True)
    assert job["metadata"]["name"] == f"{name}-v{rid[:7]}" != training["metadata"]["name"]
    assert len(job["metadata"]["name"]) <= 63
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    container = pod["containers"][0]
    assert container["args"] == ["--config", "/etc/sftop/config.json", "--validate"]
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}, "validation asks for no GPU"
    placement = training["spec"]["template"]["spec"]
    for key in ("nodeSelector", "tolerations", "affinity"):  # where the GPU pod goes: a claim binds in that zone
        assert pod.get(key) == placement.get(key), key
    assert "priorityClassName" not in pod
    assert render.QUEUE_LABEL not in job["metadata"]["labels"] and job["spec"]["suspend"] is False
    # the same volumes as the training pod: it reads the same data and model, and writes to the same run folder
    assert pod["volumes"] == training["spec"]["template"]["spec"]["volumes"]
    assert job["spec"]["template"]["metadata"]["labels"][render.COMPONENT_LABEL] == "validation"


def test_validation_can_be_queued_and_sized():
    spec = api.SFTJobSpec.model_validate({
        "model": {"hub": {"id": "org/model"}}, "dataset": {"inline": [{"text": "x"}]},
        "output": {"pvc": {"claimName": "out"}}, "queueName": "gpu-queue",
        "validation": {"queueName": "cpu-queue", "cpu": "500m", "memory": "2Gi"}})
    job = render.validation_job("chat", "ns", spec, render.run_id(spec), Settings())
    assert job["metadata"]["labels"][render.QUEUE_LABEL] == "cpu-queue" and job["spec"]["suspend"] is True
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "2Gi"}
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in container["env"]


@pytest.mark.parametrize("quantity,expected", [("80Gi", 80 * 2**30), ("24G", 24 * 10**9), ("81920Mi", 80 * 2**30),
                                               ("1.5Ti", int(1.5 * 2**40)), ("1e9", 10**9), ("1024", 1024)])
def test_quantity_bytes(quantity, expected):
    assert render.quantity_bytes(quantity) == expected


def test_the_plan_knows_the_gpu_memory_from_the_spec_or_the_gpu_feature_discovery_label():
    base = {"model": {"hub": {"id": "org/model"}}, "dataset": {"inline": [{"text": "x"}]},
            "output": {"pvc": {"claimName": "out"}}}
    labelled = api.SFTJobSpec.model_validate({**base, "resources": {
        "gpus": 2, "nodeSelector": {"nvidia.com/gpu.memory": "23034"}}})
    assert render.hardware(labelled).model_dump() == {
        "gpus": 2, "gpu_memory": 23034 * 2**20, "gpu_memory_source": "nodeSelector nvidia.com/gpu.memory=23034 MiB"}
    stated = api.SFTJobSpec.model_validate({**base, "resources": {
        "gpuMemory": "80Gi", "nodeSelector": {"nvidia.com/gpu.memory": "23034"}}})
    assert render.hardware(stated).gpu_memory == 80 * 2**30  # the spec's word wins
    assert render.hardware(api.SFTJobSpec.model_validate(base)).gpu_memory is None
    # neither the GPU's memory nor validation settings are training inputs: no new run for them
    plain = api.SFTJobSpec.model_validate(base)
    changed = api.SFTJobSpec.model_validate({**base, "resources": {"gpuMemory": "40Gi"},
                                             "validation": {"enabled": False}})
    assert render.run_id(plain) == render.run_id(changed)


def test_volume_ownership_is_changed_only_when_the_volume_root_does_not_match():
    spec = api.SFTJobSpec.model_validate(sftjob()["spec"])
    job = render.job("chat", "team-a", spec, render.run_id(spec), Settings())
    context = job["spec"]["template"]["spec"]["securityContext"]
    assert context["fsGroup"] == 1000 and context["fsGroupChangePolicy"] == "OnRootMismatch"


def test_the_cache_is_sized_from_the_plan_and_requested_where_the_platform_says():
    """A Hub model's weights land in the pod's cache: the plan's downloadBytes size the emptyDir (evicted with a
    reason if outgrown, instead of filling the node's disk). The pod requests that much ephemeral-storage only with
    the setting on: Kueue refuses a Workload asking for a resource its ClusterQueue does not cover, and the
    cluster-autoscaler does not scale a GPU node group up from zero for it unless told."""
    plan = {"downloadBytes": 16 * 2**30}  # an 8B model in bfloat16

    def cache_of(spec, settings=Settings(), plan=plan, validation=False):
        pod = render.job("chat", "team-a", spec, render.run_id(spec), settings, validation=validation,
                         plan=plan)["spec"]["template"]["spec"]
        cache = next(v for v in pod["volumes"] if v["name"] == "cache")["emptyDir"]
        return cache.get("sizeLimit"), pod["containers"][0]["resources"]["requests"].get("ephemeral-storage")

    spec = parse(sftjob("chat"))[2]
    requesting = Settings(storage_requests=True)
    assert cache_of(spec) == ("20Gi", None)  # 16 GiB × 1.1 + 2 GiB, rounded up
    assert cache_of(spec, requesting) == ("20Gi", "20Gi")
    assert cache_of(spec, requesting, plan={"downloadBytes": 0}) == ("2Gi", "2Gi")  # a model on a claim
    assert cache_of(spec, requesting, plan=None) == (None, None)  # no plan (validation off): nothing to size it by
    assert cache_of(spec, requesting, plan={"samples": 3}) == (None, None)  # a trainer that does not count it
    assert cache_of(spec, requesting, validation=True) == (None, None)
    job = render.job("chat", "team-a", spec, render.run_id(spec), requesting, plan=plan)
    kubernetes_validate.validate(job, "1.32.0", strict=True)
    assert Settings.from_env({"SFTOP_STORAGE_REQUESTS": "true"}).storage_requests is True
    with pytest.raises(SettingsError, match="true or false"):
        Settings.from_env({"SFTOP_STORAGE_REQUESTS": "yes"})


def test_the_plan_counts_the_weights_a_hub_model_downloads():
    from transformers import LlamaConfig

    from sftop_trainer.plan import download_bytes

    hub = TrainerConfig.model_validate({"model": {"name": "meta-llama/Llama-3.1-8B"}, "dataset": {"path": "d.jsonl"},
                                        "output": {"dir": "/out"}})
    assert download_bytes(hub, LlamaConfig(dtype="bfloat16"), 8_030_000_000) == 16_060_000_000
    assert download_bytes(hub, LlamaConfig(), 1_000) == 4_000  # no dtype in the config: float32
    local = hub.model_copy(update={"model": hub.model.model_copy(update={"name": "/models/llama"})})
    assert download_bytes(local, LlamaConfig(dtype="bfloat16"), 8_030_000_000) == 0


def test_docs_name_exactly_the_fields_outside_a_runs_identity():
    """docs/operator.md lists the spec fields whose change does not start a new run: the list is the code's."""
    import re
    from pathlib import Path

    from pydantic.alias_generators import to_camel

    text = (Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text()
    sentence = re.search(r"Its id is a hash of every spec field except (.*?) \(fields at", text, re.S).group(1)
    documented = set(re.findall(r"`([A-Za-z.]+)`", sentence))
    assert documented == {to_camel(f) for f in render.NOT_TRAINING_INPUTS} | {"resources.gpuMemory"}


def test_the_concepts_table_says_which_edits_start_a_new_run_as_the_run_id_does():
    """docs/concepts.md's table: every spec field is in it, and a change of each starts a new run exactly when the
    table says so."""
    import re
    from pathlib import Path

    from pydantic.alias_generators import to_camel

    text = (Path(__file__).resolve().parents[2] / "docs" / "concepts.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Za-z.]+)` \| (starts a new run|applies to the current run) \|", text, re.M))
    assert set(rows) >= {to_camel(f) for f in api.SFTJobSpec.model_fields}, "every spec field has a row"
    base = {"model": {"hub": {"id": "Qwen/Qwen2.5-0.5B-Instruct"}}, "dataset": {"inline": [{"text": "a"}]},
            "output": {"pvc": {"claimName": "adapters"}}}
    changes = {
        "model": {"model": {"hub": {"id": "Qwen/Qwen2.5-1.5B-Instruct"}}},
        "dataset": {"dataset": {"inline": [{"text": "a"}], "version": "2"}},
        "chatTemplate": {"chatTemplate": "{{ messages }}"},
        "method": {"method": "full"},
        "lora": {"lora": {"r": 8}},
        "quantization": {"method": "qlora", "quantization": {"doubleQuant": False}},
        "training": {"training": {"learningRate": 1e-5}},
        "evaluation": {"evaluation": {"prompts": 7}},
        "resources": {"resources": {"tolerations": [{"key": "gpu", "operator": "Exists"}]}},
        "resources.gpuMemory": {"resources": {"gpuMemory": "80Gi"}},
        "distribution": {"distribution": {"nodes": 2}, "output": {"pvc": {"claimName": "adapters", "create": {
            "size": "1Gi", "accessModes": ["ReadWriteMany"]}}}},
        "output": {"output": {"pvc": {"claimName": "other"}}},
        "hubTokenSecret": {"hubTokenSecret": {"name": "hf", "key": "token"}},
        "image": {"image": "ghcr.io/acme/trainer:2"},
        "imagePullSecrets": {"imagePullSecrets": [{"name": "registry"}]},
        "warmStart": {"warmStart": {"sftJob": "earlier"}},
        "queueName": {"queueName": "gpu"},
        "workloadPriorityClassName": {"queueName": "gpu", "workloadPriorityClassName": "research"},
        "tracking": {"tracking": {"runName": "x"}},
        "suspend": {"suspend": True},
        "runPolicy": {"runPolicy": {"backoffLimit": 1}},
        "validation": {"validation": {"enabled": False}},
        "promotion": {"promotion": {"minimum": {"exactMatch": 0.5}}},
    }
    assert set(changes) == set(rows)
    before = render.run_id(api.SFTJobSpec.model_validate(base))
    for field, change in changes.items():
        after = render.run_id(api.SFTJobSpec.model_validate({**base, **change}))
        assert (after != before) == (rows[field] == "starts a new run"), field
