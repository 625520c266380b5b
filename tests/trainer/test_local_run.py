"""`sftop run MANIFEST --local` renders the operator's trainer config and trains here; `sftop demo` works."""

import json
import shutil
from pathlib import Path

import yaml

from sftop import api, render
from sftop.cli import main
from sftop_trainer import taskapi
from sftop_trainer.result import compact

ROOT = Path(__file__).resolve().parents[2]

MANIFEST = """
apiVersion: v1
kind: ConfigMap
metadata: {name: faq-data}
data:
  faq.jsonl: |
{rows}
---
apiVersion: sftop.dev/v1alpha1
kind: SFTJob
metadata: {name: faq, namespace: team-a}
spec:
  model: {pvc: {claimName: models, path: tiny}}
  dataset: {configMap: {name: faq-data, key: faq.jsonl}}
  training: {maxSteps: 4, learningRate: 3.0e-3, loggingSteps: 2}
  output: {pvc: {claimName: adapters}, path: runs}
"""


def test_run_local_trains_the_manifest_into_the_run_folder(tmp_path, tiny_model, capsys):
    volumes = tmp_path / "volumes"
    shutil.copytree(tiny_model, volumes / "models" / "tiny")
    rows = "\n".join("    " + json.dumps(r) for r in taskapi.rows(16))
    manifest = tmp_path / "faq.yaml"
    manifest.write_text(MANIFEST.replace("{rows}", rows))

    assert main(["run", str(manifest), "--local", "--volumes", str(volumes), "--no-progress-bar"]) == 0
    spec = api.SFTJobSpec.model_validate(list(yaml.safe_load_all(manifest.read_text()))[1]["spec"])
    rid = render.run_id(spec)
    folder = volumes / "adapters" / "runs" / "team-a" / "faq" / rid  # where the pod's subPath mount would be
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    config = json.loads((folder / "trainer-config.json").read_text())
    assert config["run"] == {"id": rid, "sftjob": "faq", "namespace": "team-a"}
    assert json.loads((folder / "result.json").read_text())["steps"] == 4
    out = capsys.readouterr().out
    assert f"run {rid} of faq succeeded: 4 steps" in out and str(folder / "adapter") in out
    # the plan came first, and said what the run then did
    assert out.index("steps     4 (") < out.index(f"run {rid} of faq succeeded")
    assert "data      16 rows read: 16 to train on, 0 held out, 0 skipped" in out
    # the data-quality report: 16 rows are few enough that prompting may do as well
    assert "quality   warn  size (train, 16 = 100.0%): 16 usable training rows: with fewer than 50" in out
    plan = json.loads((folder / "plan.json").read_text())
    result = json.loads((folder / "result.json").read_text())
    assert plan["totalSteps"] == result["steps"] and plan["samples"] == result["data"]["rowsTrain"]


def test_run_local_without_the_configmap_says_so(tmp_path, capsys):
    manifest = tmp_path / "faq.yaml"
    manifest.write_text(MANIFEST.split("---")[1])
    assert main(["run", str(manifest), "--local", "--volumes", str(tmp_path)]) == 64
    assert "ConfigMap faq-data with key faq.jsonl is not in" in capsys.readouterr().err


def test_eval_file_beside_the_data_in_a_configmap_is_evaluated(tmp_path, tiny_model, capsys):
    volumes = tmp_path / "volumes"
    shutil.copytree(tiny_model, volumes / "models" / "tiny")
    train, test = taskapi.split(16, 6)
    manifest = tmp_path / "faq.yaml"
    text = MANIFEST.replace("{rows}", "\n".join("    " + json.dumps(r) for r in train))
    text = text.replace("  faq.jsonl: |", "  test.jsonl: |\n" + "\n".join("    " + json.dumps(r) for r in test)
                        + "\n  faq.jsonl: |")
    text = text.replace("dataset: {configMap: {name: faq-data, key: faq.jsonl}}",
                        "dataset: {configMap: {name: faq-data, key: faq.jsonl}, evalSplit: {file: test.jsonl}}\n"
                        "  evaluation: {prompts: 4, maxNewTokens: 8}")
    manifest.write_text(text)
    assert main(["run", str(manifest), "--local", "--volumes", str(volumes), "--no-progress-bar"]) == 0
    out = capsys.readouterr().out
    assert "eval loss: " in out and "exact match on 4 held-out prompts: " in out
    spec = api.SFTJobSpec.model_validate(list(yaml.safe_load_all(text))[1]["spec"])
    folder = volumes / "adapters" / "runs" / "team-a" / "faq" / render.run_id(spec)
    result = json.loads((folder / "result.json").read_text())
    assert result["data"]["rowsEval"] == 6
    assert result["evaluation"]["prompts"] == 4 and len(result["evaluation"]["samples"]) == 3


def faq(tmp_path, tiny_model, rows: int, spec: str) -> tuple[Path, Path]:
    """The FAQ manifest with `rows` rows and `spec` lines added to its spec, and the volumes with the tiny model:
    (manifest, volumes)."""
    volumes = tmp_path / "volumes"
    shutil.copytree(tiny_model, volumes / "models" / "tiny")
    manifest = tmp_path / "faq.yaml"
    text = MANIFEST.replace("{rows}", "\n".join("    " + json.dumps(r) for r in taskapi.rows(rows)))
    manifest.write_text(text.replace("  training:", spec + "\n  training:"))
    return manifest, volumes


def test_full_fine_tuning_names_its_model_folder_and_a_missing_gpu_is_said(tmp_path, tiny_model, capsys):
    manifest, volumes = faq(tmp_path, tiny_model, 8, "  method: full\n  resources: {gpus: 1}")
    assert main(["run", str(manifest), "--local", "--volumes", str(volumes), "--no-progress-bar"]) == 0
    captured = capsys.readouterr()
    assert "asks for 1 GPU(s) (resources.gpus) and this machine has none: training on the CPU" in captured.err
    lines = captured.out.splitlines()
    assert any(line.startswith("model: ") and line.endswith("/model") for line in lines)
    assert not any(line.startswith("adapter:") for line in lines)


def test_run_local_runs_a_two_node_run_as_two_trainer_commands(tmp_path, tiny_model, capsys):
    """distribution.nodes 2 runs the pods' command twice here, meeting through the same c10d rendezvous; the two
    processes train data parallel and the adapter has the single-node format."""
    manifest, volumes = faq(tmp_path, tiny_model, 16, "  resources: {gpus: 0}\n  distribution: {nodes: 2}")
    assert main(["run", str(manifest), "--local", "--volumes", str(volumes), "--no-progress-bar"]) == 0
    captured = capsys.readouterr()
    assert "2 nodes on this machine, 1 training process(es) each" in captured.err
    spec = api.SFTJobSpec.model_validate(list(yaml.safe_load_all(manifest.read_text()))[1]["spec"])
    folder = volumes / "adapters" / "runs" / "team-a" / "faq" / render.run_id(spec)
    result = json.loads((folder / "result.json").read_text())
    assert result["distribution"] == {"nodes": 2, "processes": 2, "strategy": "DataParallel"}
    assert result["steps"] == 4 and result["epochs"] == 2.0, "16 rows, 4 per process and step, 2 processes"
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(volumes / "models" / "tiny"),
                                      folder / "adapter")
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and all(p.abs().sum() > 0 for p in trained), "every LoRA weight was trained and saved whole"


def test_run_local_fsdp_without_a_gpu_says_it_needs_one(tmp_path, tiny_model, capsys):
    """FSDP asks for GPUs; on a machine without them the run stops before training, naming the field, instead of
    training data parallel under an FSDP label."""
    manifest, volumes = faq(tmp_path, tiny_model, 16, "  resources: {gpus: 1}\n"
                                                      "  distribution: {nodes: 2, strategy: FSDP}")
    assert main(["run", str(manifest), "--local", "--volumes", str(volumes), "--no-progress-bar"]) == 64
    captured = capsys.readouterr()
    assert "distribution.strategy FSDP needs GPUs" in captured.out + captured.err


def demo_run(tmp_path, capsys) -> tuple[str, Path]:
    """What `sftop demo` printed, and its folder: the README's first command's own run (./sftop-demo) when it ran on
    this very source, as CI runs it just before the suite (the same 100 steps again would cost the suite five
    CPU-minutes), else a fresh run."""
    from sftop import demo

    readme = ROOT / "sftop-demo"
    if (readme / "demo.json").exists():
        record = json.loads((readme / "demo.json").read_text())
        if record["source"] == demo.source_digest():
            return record["shown"], readme
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["shown"] in out
    return out, tmp_path / "demo"


def test_demo_fine_tunes_the_real_model_and_shows_before_and_after(tmp_path, smollm2, capsys):
    from sftop import demo

    out, workdir = demo_run(tmp_path, capsys)
    rows = {line.split()[0] + " " + line.split()[1]: line.split()[2:] for line in out.splitlines()
            if line.startswith(("  exact match", "  valid JSON"))}
    before, few, after = (float(x.rstrip("%")) for x in rows["exact match"])
    json_before, json_few, json_after = (float(x.rstrip("%")) for x in rows["valid JSON"])
    # the base model chats instead of answering in JSON; the fine-tuned one answers held-out requests; shown three
    # training rows in its prompt, the base model copies their format, and still gets few answers right
    assert before <= 10 and json_before <= 25
    assert after >= 80 and json_after >= 95
    assert "3-shot" in out and json_few > json_before and after > few
    assert out.count("  before:   ") == 3 and out.count("  after:    ") == 3
    assert f"held-out requests ({demo.TEST_ROWS}, task titles never seen in training)" in out
    assert "adapter: " in out

    # What the run recorded behind the table (the trainer's evaluation on a real model): before, few-shot and
    # after on the same held-out prompts, the samples, the record a resumed run continues from, and the compact
    # form the SFTJob's status gets.
    folder, = (workdir / "volumes" / "adapters").glob("**/result.json")
    result = json.loads(folder.read_text())
    ev = result["evaluation"]
    before_, after_, few_ = ev["before"], ev["after"], ev["fewShot"]
    assert ev["prompts"] == demo.TEST_ROWS and after_["step"] == result["steps"]
    assert before_["validJson"] <= 0.25 and after_["validJson"] >= 0.95
    assert after_["exactMatch"] > few_["exactMatch"] and few_["shots"] == 3 and few_["validJson"] > before_["validJson"]
    assert round(100 * after_["exactMatch"], 1) == after and round(100 * before_["exactMatch"], 1) == before
    assert after_["evalLoss"] < before_["evalLoss"] and after_["meanTokenAccuracy"] > before_["meanTokenAccuracy"]
    assert len(ev["samples"]) == 3
    for sample in ev["samples"]:
        assert set(sample) == {"prompt", "expected", "answer", "before", "match"}
        assert sample["match"] == (json.loads(sample["expected"]) == _json(sample["answer"]))
    saved = json.loads((folder.parent / "evaluation.json").read_text())
    assert saved["before"]["exactMatch"] == before_["exactMatch"] and saved["history"][-1]["step"] == result["steps"]
    assert saved["fewShot"] == few_
    message = compact(result)
    assert len(message.encode()) <= 4096 and json.loads(message)["evaluation"]["after"] == after_


def _json(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


def local_run(tmp_path, name: str, text: str, volumes) -> tuple[int, str]:
    """`sftop run MANIFEST --local` of `text`: (exit code, the run id)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    code = main(["run", str(path), "--local", "--volumes", str(volumes), "--no-progress-bar"])
    return code, render.run_id(api.SFTJobSpec.model_validate(list(yaml.safe_load_all(text))[1]["spec"]))


def test_run_local_continues_the_adapter_of_an_earlier_run_and_names_its_base_portably(tmp_path, tiny_model, capsys):
    volumes = tmp_path / "volumes"
    shutil.copytree(tiny_model, volumes / "models" / "tiny")
    text = MANIFEST.replace("{rows}", "\n".join("    " + json.dumps(r) for r in taskapi.rows(16)))
    code, rid = local_run(tmp_path, "faq", text, volumes)
    assert code == 0
    earlier = volumes / "adapters" / "runs" / "team-a" / "faq" / rid
    adapter_config = json.loads((earlier / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "pvc://models/tiny", "not the path on this machine"

    code, rid2 = local_run(tmp_path, "faq-more", text.replace(
        "training: {maxSteps: 4,", "warmStart: {sftJob: faq}\n  training: {maxSteps: 6,"), volumes)
    assert code == 0
    result = json.loads((volumes / "adapters" / "runs" / "team-a" / "faq" / rid2 / "result.json").read_text())
    assert result["warmStart"] == f"adapters:runs/team-a/faq/{rid}/adapter"
    first_result = json.loads((earlier / "result.json").read_text())
    assert result["firstLoss"] < first_result["firstLoss"], "it starts from the trained adapter"

    capsys.readouterr()
    code, _ = local_run(tmp_path, "faq-missing", text.replace(
        "training: {maxSteps: 4,", "warmStart: {sftJob: faq, runId: 0badc0de}\n  training: {maxSteps: 6,"), volumes)
    assert code != 0
    assert "no run 0badc0de of SFTJob faq" in capsys.readouterr().err
