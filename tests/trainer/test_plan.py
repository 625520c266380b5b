"""The plan: the memory estimate on the published configs of real model families, and `sftop plan` on every
example manifest, its models given by their configs alone (no weights exist here)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock
import yaml
from transformers import LlamaConfig, MistralConfig, Qwen2Config

from sftop_trainer import memory
from sftop_trainer import plan as plan_mod
from sftop_trainer import taskapi
from sftop_trainer.config import TrainerConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GIB = 1024**3

# Published hyperparameters (each model's config.json) and parameter counts.
FAMILIES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": (LlamaConfig, dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
        vocab_size=49152, tie_word_embeddings=True), 134.5e6),
    "HuggingFaceTB/SmolLM2-360M-Instruct": (LlamaConfig, dict(
        hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, intermediate_size=2560,
        vocab_size=49152, tie_word_embeddings=True), 361.8e6),
    "Qwen/Qwen2.5-0.5B-Instruct": (Qwen2Config, dict(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
        vocab_size=151936, tie_word_embeddings=True), 494e6),
    "Qwen/Qwen2.5-1.5B-Instruct": (Qwen2Config, dict(
        hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960,
        vocab_size=151936, tie_word_embeddings=True), 1.54e9),
    "Qwen/Qwen2.5-7B-Instruct": (Qwen2Config, dict(
        hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
        vocab_size=152064, tie_word_embeddings=False), 7.62e9),
    "mistralai/Mistral-7B-Instruct-v0.3": (MistralConfig, dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
        vocab_size=32768, tie_word_embeddings=False), 7.25e9),
    "meta-llama/Llama-3.2-1B": (LlamaConfig, dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192,
        vocab_size=128256, tie_word_embeddings=True, head_dim=64), 1.24e9),
    "meta-llama/Llama-3.2-3B": (LlamaConfig, dict(
        hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, intermediate_size=8192,
        vocab_size=128256, tie_word_embeddings=True, head_dim=128), 3.21e9),
    "meta-llama/Llama-2-7b-hf": (LlamaConfig, dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
        vocab_size=32000, tie_word_embeddings=False), 6.74e9),
    "meta-llama/Llama-3.1-8B-Instruct": (LlamaConfig, dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
        vocab_size=128256, tie_word_embeddings=False), 8.03e9),
    "meta-llama/Llama-2-13b-hf": (LlamaConfig, dict(
        hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40, intermediate_size=13824,
        vocab_size=32000, tie_word_embeddings=False), 13.02e9),
    "meta-llama/Llama-3.1-70B-Instruct": (LlamaConfig, dict(
        hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, intermediate_size=28672,
        vocab_size=128256, tie_word_embeddings=False), 70.55e9),
}
# The rule of thumb users know for QLoRA, in GB (10^9 bytes), for 1B/3B/7B/8B/13B/70B.
# (nominal size in billions, QLoRA GB)
RULE_OF_THUMB = {"meta-llama/Llama-3.2-1B": (1, 2), "meta-llama/Llama-3.2-3B": (3, 4),
                 "meta-llama/Llama-2-7b-hf": (7, 8), "meta-llama/Llama-3.1-8B-Instruct": (8, 10),
                 "meta-llama/Llama-2-13b-hf": (13, 16), "meta-llama/Llama-3.1-70B-Instruct": (70, 48)}


def family(model_id):
    cls, kw, _ = FAMILIES[model_id]
    return cls(**kw)


def estimate(model_id, method="lora", gpus=1, distribution=None, **training):
    config = family(model_id)
    cfg = TrainerConfig.model_validate({
        "model": {"name": model_id}, "dataset": {"rows": [{"text": "x"}]}, "method": method,
        "training": {"perDeviceTrainBatchSize": 1, "maxLength": 512, **training}, "output": {"dir": "/nowhere"},
        "distribution": distribution or {}})
    shape, model = memory.shape_of(config), plan_mod.empty_model(config)
    params = memory.parameters_of(model)
    if method == "full":
        trainable, inputs = params.total, 0
    else:
        peft_model = plan_mod.lora_model(cfg, model)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        inputs = memory.lora_inputs_per_layer(peft_model, shape.layers)
    m = memory.memory_inputs(cfg, shape, training.get("maxLength", 512), gpus, inputs)
    return params, trainable, memory.estimate_memory(shape, params, trainable, m)


@pytest.mark.parametrize("model_id", sorted(FAMILIES))
def test_parameters_counted_from_the_config_alone_match_the_published_counts(model_id):
    params, trainable, _ = estimate(model_id)
    assert params.total == pytest.approx(FAMILIES[model_id][2], rel=0.01)
    assert 0 < trainable < 0.05 * params.total  # LoRA r=16 on every linear layer: a few percent at most


@pytest.mark.parametrize("model_id", sorted(RULE_OF_THUMB))
def test_the_estimate_agrees_with_the_rule_of_thumb_where_its_assumptions_hold(model_id):
    _, qlora_gb = RULE_OF_THUMB[model_id]
    params, _, qlora = estimate(model_id, "qlora")
    _, _, full = estimate(model_id, "full", optim="adamw_torch_fused")
    _, _, lora = estimate(model_id, "lora")
    assert qlora["total"] < lora["total"] < full["total"]
    # full fine-tuning in mixed precision holds float32 weights, gradients and two AdamW states: 16 bytes per
    # parameter, and the bfloat16 copy autocast computes from (2 more); 512 tokens of activations add little
    state = full["parts"]["weights"] + full["parts"]["gradients"] + full["parts"]["optimizer"]
    assert state == 16 * params.total
    assert full["total"] == pytest.approx(18 * params.total, rel=0.05)
    # QLoRA: 4-bit weights and float32 embeddings make the tables' figures ±40 % (see docs/plan.md for each gap)
    assert qlora["total"] / 1e9 == pytest.approx(qlora_gb, rel=0.4)


def test_what_the_estimate_grows_and_shrinks_with():
    model_id = "meta-llama/Llama-3.1-8B-Instruct"
    _, _, base = estimate(model_id, maxLength=2048)
    _, _, no_ckpt = estimate(model_id, maxLength=2048, gradientCheckpointing=False)
    _, _, batch4 = estimate(model_id, maxLength=2048, perDeviceTrainBatchSize=4)
    _, _, foreach = estimate(model_id, "full")
    _, _, fused = estimate(model_id, "full", optim="adamw_torch_fused")
    _, _, eight_bit = estimate(model_id, "full", optim="adamw_8bit")
    assert no_ckpt["parts"]["activations"] > 5 * base["parts"]["activations"]
    assert batch4["parts"]["activations"] == pytest.approx(4 * base["parts"]["activations"], rel=0.15)
    assert foreach["total"] > fused["total"] > eight_bit["total"]
    assert any("foreach" in a for a in foreach["assumptions"])


# ------------------------------------------------------------------------- sftop plan on every example


@pytest.fixture(scope="module")
def offline_world(tmp_path_factory, smollm2):
    """Each example's model as the Hub cache would hold it after a download of its config and tokenizer (the
    family's published config, SmolLM2's tokenizer), its data on the claims it names; the Hub itself is offline."""
    root = tmp_path_factory.mktemp("world")
    hub = root / "hf" / "hub"
    tokenizer_files = [p for p in Path(smollm2).iterdir() if p.name.startswith(("tokenizer", "special_tokens",
                                                                                "chat_template"))]

    def model_folder(folder: Path, model_id: str):
        folder.mkdir(parents=True, exist_ok=True)
        family(model_id).save_pretrained(folder)
        for f in tokenizer_files:
            shutil.copy(f, folder / f.name)

    for model_id in FAMILIES:
        commit = "7ae557604adf67be50417f59c2c2f167def9a775"
        repo = hub / f"models--{model_id.replace('/', '--')}"
        model_folder(repo / "snapshots" / commit, model_id)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
    model_folder(root / "volumes" / "base-models" / "mistral-7b-instruct-v0.3", "mistralai/Mistral-7B-Instruct-v0.3")
    return root


def local_data(example: dict, root: Path) -> dict:
    """The example with data on its claims: a Hub dataset (unreachable here) becomes a file on a claim."""
    import pandas as pd

    rows, held_out = taskapi.split(64, 16, seed=5)  # an evaluation file of its own: no leakage
    dataset = example["spec"]["dataset"]
    if "hub" in dataset:
        dataset.pop("hub")
        dataset["pvc"] = {"claimName": "datasets", "path": "rows.jsonl"}
        if (dataset.get("evalSplit") or {}).get("name"):
            dataset["evalSplit"] = {"fraction": 0.1}
    if dataset.get("format") == "instruction":
        rows, held_out = ([{"instruction": r["messages"][-2]["content"], "output": r["messages"][-1]["content"]}
                           for r in part] for part in (rows, held_out))
    if "pvc" in dataset:
        folder = root / "volumes" / dataset["pvc"]["claimName"]
        files = [dataset["pvc"]["path"]]
        if "file" in (dataset.get("evalSplit") or {}):
            files.append(dataset["evalSplit"]["file"])
        for name, part in zip(files, (rows, held_out)):
            path = folder / name  # an evalSplit.file is on the same claim, from its root
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".parquet":
                pd.DataFrame(part).to_parquet(path)
            else:
                path.write_text("\n".join(json.dumps(r) for r in part))
    return example


ENV = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}


def sftop_plan(root: Path, manifest: Path, *args):
    return subprocess.run([sys.executable, "-m", "sftop.cli", "plan", str(manifest), "--volumes",
                           str(root / "volumes"), "--json", *args], capture_output=True, text=True,
                          env={**ENV, "HF_HOME": str(root / "hf")})


# `sftop plan` for many manifests in one process (importing torch and transformers once, not once a manifest):
# each call's exit code, standard output and standard error, as a JSON list on the last line.
PLANS = """
import contextlib, io, json, sys
from sftop.cli import main
out = []
for args in json.loads(sys.argv[1]):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(["plan", *args])
        except SystemExit as e:
            code = e.code
    out.append({"code": code, "out": stdout.getvalue(), "err": stderr.getvalue()})
print(json.dumps(out))
"""


class Run:
    def __init__(self, found: dict):
        self.returncode, self.stdout, self.stderr = found["code"], found["out"], found["err"]

    @classmethod
    def of(cls, saved: dict) -> "Run":
        return cls({"code": saved["returncode"], "out": saved["stdout"], "err": saved["stderr"]})


@pytest.fixture(scope="module")
def example_plans(offline_world, tmp_path_factory, worker_id):
    """`sftop plan` of every SFTJob of every example, its data on the claims it names: {(example, name): run}. Made
    once per test session: side by side (pytest-xdist), the first worker to need it makes it and the others read
    it (the plans name no path of the world they were made in)."""
    if worker_id == "master":
        return _example_plans(offline_world, tmp_path_factory)
    shared = tmp_path_factory.getbasetemp().parent / "example-plans.json"
    with FileLock(f"{shared}.lock"):
        if not shared.is_file():
            made = _example_plans(offline_world, tmp_path_factory)
            shared.write_text(json.dumps([[*key, vars(run)] for key, run in made.items()]))
    return {(example, name): Run.of(run) for example, name, run in json.loads(shared.read_text())}


def _example_plans(offline_world: Path, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("examples")
    calls, keys = [], []
    for example in sorted(p.name for p in EXAMPLES.glob("*.yaml")):
        docs = list(yaml.safe_load_all((EXAMPLES / example).read_text()))
        jobs = [d for d in docs if d and d.get("kind") == "SFTJob"]
        for job in jobs:
            local_data(job, offline_world)
        manifest = folder / example
        manifest.write_text(yaml.safe_dump_all(docs))
        for job in jobs:
            calls.append([str(manifest), "--volumes", str(offline_world / "volumes"), "--json", "--name",
                          job["metadata"]["name"]])
            keys.append((example, job["metadata"]["name"]))
    done = subprocess.run([sys.executable, "-c", PLANS, json.dumps(calls)], capture_output=True, text=True,
                          env={**ENV, "HF_HOME": str(offline_world / "hf")})
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(zip(keys, map(Run, json.loads(done.stdout.splitlines()[-1]))))


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_sftop_plan_on_every_example(example, offline_world, example_plans):
    docs = list(yaml.safe_load_all((EXAMPLES / example).read_text()))
    jobs = [d for d in docs if d and d.get("kind") == "SFTJob"]
    assert jobs
    for job in jobs:
        run = example_plans[(example, job["metadata"]["name"])]
        assert run.returncode == 0, run.stderr[-2000:]
        out = run.stdout
        plan = json.loads(out[out.index("\n{") + 1:])
        spec = job["spec"]
        training = spec.get("training") or {}
        resources = spec.get("resources") or {}
        nodes = (spec.get("distribution") or {}).get("nodes", 1)
        assert plan["method"] == spec.get("method", "lora") and plan["gpus"] == resources.get("gpus", 1) * nodes
        assert plan["nodes"] == nodes
        rows = plan["rows"]
        held_out_beside = "file" in (spec["dataset"].get("evalSplit") or {})  # read from its own file
        assert rows["train"] + (0 if held_out_beside else rows["eval"]) == rows["read"] - rows["skipped"] > 0
        if "maxSteps" in training:
            assert plan["totalSteps"] == training["maxSteps"]
        batch = training.get("perDeviceTrainBatchSize", 4) * training.get("gradientAccumulationSteps", 1)
        assert plan["effectiveBatch"] == batch * max(1, plan["gpus"])
        assert f"steps     {plan['totalSteps']}" in out and "memory    ~" in out
        if "nvidia.com/gpu.memory" in (resources.get("nodeSelector") or {}) or resources.get("gpuMemory"):
            # what the example's comment promises: it fits the GPU its node selector or gpuMemory names
            assert plan["memory"]["fits"] is True, plan["memory"]


def test_sftop_plan_says_what_would_fit_when_a_run_does_not(offline_world, tmp_path):
    job = yaml.safe_load((EXAMPLES / "qlora-8b-24gb.yaml").read_text())
    job["spec"]["method"] = "full"
    for field in ("quantization", "lora"):
        job["spec"].pop(field)
    local_data(job, offline_world)
    manifest = tmp_path / "too-big.yaml"
    manifest.write_text(yaml.safe_dump(job))
    run = sftop_plan(offline_world, manifest)
    assert run.returncode == 1
    assert "does NOT fit the 22.0 GiB GPU (spec.resources.gpuMemory 22Gi)" in run.stdout
    assert "would fit: method: lora" in run.stdout and "would fit: method: qlora" in run.stdout
    assert "llama31-8b-qlora: the run needs about" in run.stderr


def test_fsdp_shards_what_data_parallel_copies_on_every_gpu():
    """Full fine-tuning of a 7B model on 2 nodes x 8 GPUs: data parallel, each GPU holds the whole model, its gradients
    and optimizer states; FSDP over the 16 processes holds 1/16 of them (float32 master shards) and two layers'
    weights gathered at a time in bfloat16;
    CPU offload moves the shards off the GPU."""
    gib = 2**30
    params, _, ddp = estimate("Qwen/Qwen2.5-7B-Instruct", "full", gpus=8, distribution={"nodes": 2},
                              maxLength=2048)
    _, _, fsdp = estimate("Qwen/Qwen2.5-7B-Instruct", "full", gpus=8, distribution={"nodes": 2, "strategy": "FSDP"},
                          maxLength=2048)
    _, _, offload = estimate("Qwen/Qwen2.5-7B-Instruct", "full", gpus=8, maxLength=2048,
                             distribution={"nodes": 2, "strategy": "FSDP", "cpuOffload": True})
    assert ddp["total"] > 70 * gib, "the whole model, gradients and AdamW states on every GPU"
    assert fsdp["parts"]["gradients"] == pytest.approx(ddp["parts"]["gradients"] / 2 / 16, rel=0.01)  # DDP buckets
    assert fsdp["parts"]["optimizer"] == pytest.approx(ddp["parts"]["optimizer"] / 16, rel=0.01)
    assert fsdp["total"] < 12 * gib
    # data parallel computes under autocast from a bfloat16 copy of every weight; FSDP gathers its layers cast
    assert ddp["parts"]["activations"] - fsdp["parts"]["activations"] == 2 * params.total
    assert fsdp["parts"]["weights"] == pytest.approx(4 * params.total / 16 + 2 * 2 * params.total / 28, rel=0.01)
    assert offload["parts"]["optimizer"] == 0 and offload["total"] < fsdp["total"]
    assert any("FSDP over 16 processes" in a for a in fsdp["assumptions"])
