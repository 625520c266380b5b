"""Real mistakes users make in SFTJob manifests: each is rejected by `sftop validate`, with the field named."""

import copy

import pytest
import yaml

from sftop.cli import main
from sftop.validate import validate_document

VALID = yaml.safe_load("""
apiVersion: sftop.dev/v1alpha1
kind: SFTJob
metadata: {name: chat-lora, namespace: team-a}
spec:
  model: {hub: {id: Qwen/Qwen2.5-0.5B-Instruct, revision: 7ae557604adf67be50417f59c2c2f167def9a775}}
  dataset: {hub: {name: trl-lib/Capybara}, evalSplit: {fraction: 0.05}}
  method: lora
  training: {epochs: 1, learningRate: 2.0e-4}
  resources: {gpus: 1, cpu: 8, memory: 32Gi}
  output: {pvc: {claimName: adapters}, path: chat}
""")

DELETE = object()


def mutate(doc, path, value):
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        node.pop(last)
    else:
        node[last] = value
    return doc


# (what the user did wrong, field to change, new value, field the error must name, words it must contain)
MISTAKES = [
    ("typo in a field name", "spec.training.learningrate", 1e-4, "spec.training.learningrate", "learningRate"),
    ("snake_case field name", "spec.training.max_steps", 10, "spec.training.max_steps", "maxSteps"),
    ("unknown top-level spec field", "spec.epochs", 3, "spec.epochs", "unknown field"),
    ("negative learning rate", "spec.training.learningRate", -1e-4, "spec.training.learningRate", "0"),
    ("learning rate as a word", "spec.training.learningRate", "fast", "spec.training.learningRate", "number"),
    ("batch size as a string", "spec.training.perDeviceTrainBatchSize", "four",
     "spec.training.perDeviceTrainBatchSize", "integer"),
    ("zero batch size", "spec.training.perDeviceTrainBatchSize", 0, "spec.training.perDeviceTrainBatchSize", "1"),
    ("both epochs and maxSteps", "spec.training.maxSteps", 100, "spec.training", "either epochs or maxSteps"),
    ("two data sources", "spec.dataset.pvc", {"claimName": "data", "path": "train.jsonl"}, "spec.dataset",
     "exactly one of hub, pvc, configMap, inline"),
    ("no data source", "spec.dataset.hub", DELETE, "spec.dataset", "exactly one"),
    ("quantization with lora", "spec.quantization", {"quantType": "nf4"}, "spec", "only to method qlora"),
    ("unknown method", "spec.method", "qlora4", "spec.method", "lora"),
    ("'..' in a data path", "spec.dataset", {"pvc": {"claimName": "data", "path": "../other-team/x.jsonl"}},
     "spec.dataset.pvc.path", ".."),
    ("absolute output path", "spec.output.path", "/etc", "spec.output.path", "absolute"),
    ("hostPath-like model path", "spec.model", {"pvc": {"claimName": "models", "path": "/var/lib/kubelet"}},
     "spec.model.pvc.path", "absolute"),
    ("claim name with capitals", "spec.output.pvc.claimName", "My_Adapters", "spec.output.pvc.claimName",
     "Kubernetes object name"),
    ("LoRA rank of zero", "spec.lora", {"r": 0}, "spec.lora.r", "1"),
    ("LoRA rank far too large", "spec.lora", {"r": 100000}, "spec.lora.r", "1024"),
    ("LoRA dropout of 1.5", "spec.lora", {"dropout": 1.5}, "spec.lora.dropout", "1"),
    ("lora settings on full fine-tuning", "spec.method", "full", "spec", "only to methods lora and qlora"),
    ("missing output", "spec.output", DELETE, "spec.output", "required"),
    ("missing model", "spec.model", DELETE, "spec.model", "required"),
    ("model with hub and pvc", "spec.model.pvc", {"claimName": "models", "path": "m"}, "spec.model",
     "exactly one of hub, pvc"),
    ("negative GPU count", "spec.resources.gpus", -1, "spec.resources.gpus", "0"),
    ("memory that is not a quantity", "spec.resources.memory", "lots", "spec.resources.memory", "quantity"),
    ("eval fraction of 1", "spec.dataset.evalSplit", {"fraction": 1.0}, "spec.dataset.evalSplit.fraction", "1"),
    ("eval fraction and split name", "spec.dataset.evalSplit", {"fraction": 0.1, "name": "test"},
     "spec.dataset.evalSplit", "exactly one of fraction, name, file"),
    ("unknown data format", "spec.dataset.format", "alpaca", "spec.dataset.format", "instruction"),
    ("data file of an unknown type", "spec.dataset", {"pvc": {"claimName": "d", "path": "train.txt"}},
     "spec.dataset.pvc", ".jsonl"),
    ("8-bit quantization", "spec.quantization", {"bits": 8}, "spec.quantization.bits", "4"),
    ("unknown scheduler", "spec.training.lrSchedulerType", "one_cycle", "spec.training.lrSchedulerType",
     "cosine"),
    ("a managed SFTConfig key passed through", "spec.training.sftConfig", {"output_dir": "/tmp"},
     "spec.training", "output_dir"),
    ("camelCase key in sftConfig", "spec.training.sftConfig", {"neftuneNoiseAlpha": 5}, "spec.training",
     "snake_case"),
    ("name too long for the run's Job", "metadata.name", "a" * 60, "metadata.name", "54"),
    ("name with capitals", "metadata.name", "Chat-LoRA", "metadata.name", "lowercase letters"),
    ("negative backoff limit", "spec.runPolicy", {"backoffLimit": -1}, "spec.runPolicy.backoffLimit", "0"),
    ("queue name with a slash", "spec.queueName", "team-a/gpu", "spec.queueName", "LocalQueue name"),
    ("tolerations as a map", "spec.resources.tolerations", {"key": "gpu"}, "spec.resources.tolerations", "must be a list"),
    ("eval split name on a PVC file", "spec.dataset",
     {"pvc": {"claimName": "d", "path": "train.jsonl"}, "evalSplit": {"name": "test"}}, "spec.dataset",
     "fraction"),
    ("eval file beside a Hub dataset", "spec.dataset.evalSplit", {"file": "test.jsonl"}, "spec.dataset",
     "beside the training data"),
    ("eval file that is a folder path in a ConfigMap", "spec.dataset",
     {"configMap": {"name": "d", "key": "train.jsonl"}, "evalSplit": {"file": "eval/test.jsonl"}}, "spec.dataset",
     "no '/'"),
    ("eval file of an unknown type", "spec.dataset",
     {"pvc": {"claimName": "d", "path": "train.jsonl"}, "evalSplit": {"file": "test.txt"}}, "spec.dataset",
     ".jsonl"),
    ("eval file outside the claim", "spec.dataset",
     {"pvc": {"claimName": "d", "path": "train.jsonl"}, "evalSplit": {"file": "../test.jsonl"}},
     "spec.dataset.evalSplit.file", ".."),
    ("zero held-out prompts", "spec.evaluation", {"prompts": 0}, "spec.evaluation.prompts", "1"),
    ("secret key with a slash", "spec.hubTokenSecret", {"name": "hf", "key": "a/b"}, "spec.hubTokenSecret.key",
     "Secret key"),
    ("inline rows that are strings", "spec.dataset", {"inline": ["hello", "world"]}, "spec.dataset.inline[0]",
     "must be a mapping"),
    ("wrong apiVersion", "apiVersion", "sftop.dev/v1", "apiVersion", "sftop.dev/v1alpha1"),
    ("result checkpoint by another name", "spec.training.resultCheckpoint", "lowest", "spec.training.resultCheckpoint",
     "best"),
    ("zero early-stopping patience", "spec.training.earlyStopping", {"patience": 0},
     "spec.training.earlyStopping.patience", "1"),
    ("watchdog factor that flags every loss", "spec.training.lossWatchdog", {"factor": 0.5},
     "spec.training.lossWatchdog.factor", "1"),
    ("warm start run id that is not one", "spec.warmStart", {"sftJob": "chat", "runId": "latest"},
     "spec.warmStart.runId", "run id"),
    ("tracking without a server", "spec.tracking", {"mlflow": {"experiment": "x"}}, "spec.tracking.mlflow.trackingUri",
     "required"),
    ("W&B without its key", "spec.tracking", {"wandb": {"project": "p"}}, "spec.tracking.wandb.apiKeySecret",
     "required"),
]


@pytest.mark.parametrize("what,field,value,named,words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_rejected_with_the_field_named(what, field, value, named, words):
    if field == "spec.method" and value == "full":
        doc = mutate(mutate(VALID, "spec.lora", {"r": 8}), field, value)
    else:
        doc = mutate(VALID, field, value)
    problems = validate_document(doc)
    assert problems, f"{what}: accepted"
    hits = [p for p in problems if p.path == named]
    assert hits, f"{what}: no problem names {named}; got {[str(p) for p in problems]}"
    assert any(words in p.message for p in hits), f"{what}: {[str(p) for p in hits]} lacks {words!r}"


def test_there_are_at_least_25_mistakes():
    assert len(MISTAKES) >= 25


def test_the_valid_manifest_is_valid():
    assert validate_document(VALID) == []


def test_cli_prints_one_line_per_problem_and_exits_nonzero(tmp_path, capsys):
    bad = mutate(mutate(VALID, "spec.training.learningRate", -1), "spec.lora", {"r": 0})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(VALID))
    assert main(["validate", str(tmp_path / "good.yaml")]) == 0
    assert main(["validate", "-q", str(tmp_path / "good.yaml"), str(tmp_path / "bad.yaml")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{tmp_path / 'bad.yaml'}[0] SFTJob/chat-lora: spec.") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {"spec.training.learningRate", "spec.lora.r"}


def test_cli_reports_unreadable_yaml(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("apiVersion: sftop.dev/v1alpha1\nkind: SFTJob\nspec: [\n")
    assert main(["validate", str(tmp_path / "broken.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().out
