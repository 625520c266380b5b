"""Manifests are read the way kubectl reads them, and `sftop validate`, `sftop run --local` and the API server
(the emulator, fed by the real kubectl) accept and reject the same ones, in the same words."""

import asyncio
import json

import pytest

from sftop import local
from sftop.cli import main
from sftop.manifest import load_all

MANIFEST = """\
apiVersion: sftop.dev/v1alpha1
kind: SFTJob
metadata: {{name: {name}, namespace: team-a}}
spec:
  model: {{hub: {{id: HuggingFaceTB/SmolLM2-135M-Instruct}}}}
  dataset: {{hub: {{name: trl-lib/Capybara}}}}
  training:
    {field}: {value}
  output: {{pvc: {{claimName: adapters}}}}
"""

# (how the user wrote it, field, YAML value, accepted by the API server, what the trainer gets when accepted)
SPELLINGS = [
    ("exponent, no dot", "learningRate", "2e-4", True, 2e-4),
    ("exponent with a dot", "learningRate", "2.0e-4", True, 2e-4),
    ("plain decimal", "learningRate", "0.0002", True, 2e-4),
    ("leading dot", "learningRate", ".0002", True, 2e-4),
    ("quoted number", "learningRate", '"2e-4"', False, None),
    ("integer written as 1e2", "maxSteps", "1e2", True, 100),
    ("integer with underscores", "maxSteps", "1_000", True, 1000),
    ("base 60 (YAML 1.1 only)", "maxSteps", "1:30", False, None),
    ("yes for true", "gradientCheckpointing", "yes", True, True),
    ("quoted true", "gradientCheckpointing", '"true"', False, None),
]
IDS = [s[0] for s in SPELLINGS]


def write(tmp_path, i, field, value):
    path = tmp_path / f"m{i}.yaml"
    path.write_text(MANIFEST.format(name=f"job-{i}", field=field, value=value))
    return path


@pytest.mark.parametrize("what,field,value,accepted,trained", SPELLINGS, ids=IDS)
def test_validate_and_run_local_agree(tmp_path, capsys, what, field, value, accepted, trained):
    path = write(tmp_path, 0, field, value)
    assert main(["validate", "-q", str(path)]) == (0 if accepted else 1)
    said = capsys.readouterr().out.strip()
    if accepted:
        assert said == ""
        _, _, _, config = local.prepare(path, tmp_path / "volumes")
        training = json.loads(config.read_text())["training"]
        assert training[field] == trained and type(training[field]) is type(trained)
    else:
        assert said.split(": ", 1)[1].startswith(f"spec.training.{field}: must be ")
        with pytest.raises(local.LocalRunError) as err:
            local.prepare(path, tmp_path / "volumes")
        # the same words as `sftop validate`
        assert said.split(": ", 1)[1] in str(err.value)


async def test_kubectl_and_validate_reach_the_same_verdicts(apiserver, tmp_path, capsys):
    """The real kubectl parses each spelling (go-yaml) and the emulated API server checks it against the CRD."""
    server = str(apiserver.url).rstrip("/")
    for i, (what, field, value, accepted, _) in enumerate(SPELLINGS):
        path = write(tmp_path, i, field, value)
        proc = await asyncio.create_subprocess_exec(
            "kubectl", "--server", server, "create", "--validate=false", "-f", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 0 or b"is invalid" in err, err.decode()
        by_validate = main(["validate", "-q", str(path)]) == 0
        assert (proc.returncode == 0, by_validate) == (accepted, accepted), f"{what}: {err.decode()}"
    capsys.readouterr()


def test_exclusive_bounds_and_empty_keys_read_plainly(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(MANIFEST.format(name="bad", field="learningRate", value="0")
                    + "  lora: {dropout: 1}\n  hubTokenSecret: {name: hf, key: ''}\n")
    assert main(["validate", "-q", str(path)]) == 1
    lines = [line.split(": ", 1)[1] for line in capsys.readouterr().out.strip().splitlines()]
    assert sorted(lines) == ["spec.hubTokenSecret.key: must not be empty",
                             "spec.lora.dropout: must be less than 1 (got 1)",
                             "spec.training.learningRate: must be greater than 0 (got 0)"]


def test_documents_are_read_like_go_yaml():
    docs = load_all("a: 2e-4\nb: 2024-01-01\nc: 1:30\nd: 0x10\ne: 1e3\nf: on\n---\n---\ng: 1.5\n")
    assert docs == [{"a": 2e-4, "b": "2024-01-01", "c": "1:30", "d": 16, "e": 1000, "f": True}, {"g": 1.5}]
    assert type(docs[0]["e"]) is int


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"sftop {version('sftop')}"
