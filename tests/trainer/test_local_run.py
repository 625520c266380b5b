"""`sftop run MANIFEST --local` renders the operator's trainer config and trains here; `sftop demo` works."""

import json
import shutil

import yaml

from sftop import api, render
from sftop.cli import main
from sftop_trainer.tiny import task_api_rows

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
    rows = "\n".join("    " + json.dumps(r) for r in task_api_rows(16))
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


def test_run_local_without_the_configmap_says_so(tmp_path, capsys):
    manifest = tmp_path / "faq.yaml"
    manifest.write_text(MANIFEST.split("---")[1])
    assert main(["run", str(manifest), "--local", "--volumes", str(tmp_path)]) == 64
    assert "ConfigMap faq-data with key faq.jsonl is not in" in capsys.readouterr().err


def test_demo_fine_tunes_and_shows_before_and_after(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line and line[:1] != " ")
    before, after = (float(x) for x in lines["loss (held out)"].split("after")[0].split("before ->"))
    assert after < before
    assert lines["adapter"].strip().endswith("/adapter")
    for key in ("request", "expected", "answer before", "answer after"):
        assert key in lines
