"""The README's set-up commands are what CI runs: the same lines, in the same order, so they cannot drift apart."""

import re
from pathlib import Path

import yaml

from sftop import crd

ROOT = Path(__file__).resolve().parents[2]


def setup_commands() -> list[str]:
    """The README's set-up commands: the shell blocks that create the virtual environment, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("python3 -m venv .venv")]


def test_the_readme_has_two_setup_commands_install_and_demo_then_tests():
    first, second = setup_commands()
    assert "'.[demo]'" in first and first.endswith("sftop demo")
    assert "'.[test]'" in second and "-m pytest" in second


def test_ci_runs_the_readme_commands_exactly_and_in_order():
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.lstrip().startswith("#")]
    positions = [lines.index(command) if command in lines else None for command in setup_commands()]
    assert None not in positions, "every README set-up command is a line of .ci/run, character for character"
    assert positions == sorted(positions), "the install-and-demo command runs before the tests"
    text = (ROOT / ".ci" / "run").read_text()
    assert text.splitlines()[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in text, "a failing command fails CI"


def example_needs(path: Path) -> dict[str, str]:
    """What an example needs beyond the operator, worded as the README's table words it."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    made = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    (spec,) = [d["spec"] for d in docs if d["kind"] == "SFTJob"]
    claims = {(where.get("pvc") or {}).get("claimName") for where in
              (spec.get("model", {}), spec.get("dataset", {}), spec.get("warmStart") or {})}
    output = (spec.get("output") or {}).get("pvc") or {}
    if output and not output.get("create"):
        claims.add(output["claimName"])
    secrets = [spec["hubTokenSecret"]["name"]] if spec.get("hubTokenSecret") else []
    for tracker in (spec.get("tracking") or {}).values():
        secrets += [v["name"] for k, v in (tracker if isinstance(tracker, dict) else {}).items() if k.endswith("Secret")]
    secrets += [s["name"] for s in spec.get("imagePullSecrets") or []]
    nodes = (spec.get("distribution") or {}).get("nodes", 1)
    shared = nodes > 1 or "ReadWriteMany" in path.read_text()
    return {"GPUs": str((spec.get("resources") or {}).get("gpus", 1) * nodes),
            "claims": ", ".join(f"`{c}`" for c in sorted(claims - made - {None})),
            "Secrets": ", ".join(f"`{s}`" for s in sorted(secrets)),
            "Kueue": "yes" if spec.get("queueName") else "", "ReadWriteMany": "yes" if shared else ""}


def test_the_examples_table_says_what_each_example_needs():
    text = (ROOT / "README.md").read_text()
    header, _, *rows = [line for line in text.split("## Examples", 1)[1].splitlines() if line.startswith("|")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    table = {}
    for row in rows:
        cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
        for link in re.findall(r"\]\(examples/([^)]+\.yaml)\)", cells["example"]):
            table[link] = cells
    examples = sorted(p.name for p in (ROOT / "examples").glob("*.yaml"))
    assert sorted(table) == examples, "every example has a row in the README's table"
    for name in examples:
        needs = example_needs(ROOT / "examples" / name)
        assert {k: table[name][k] for k in needs} == needs, name


def test_the_readmes_kubectl_sample_has_the_crds_columns():
    sample = re.search(r"\$ kubectl get sftjobs\n(.*?)\n", (ROOT / "README.md").read_text())[1]
    columns = ["NAME"] + [c["name"].upper() for c in crd.PRINTER_COLUMNS if not c.get("priority")]
    assert sample.split() == columns
