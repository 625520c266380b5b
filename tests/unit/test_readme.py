"""The README's set-up commands are what CI runs: the same lines, in the same order, so they cannot drift apart."""

import re
from pathlib import Path

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
