"""The layering written in pyproject.toml ([tool.importlinter]) holds: no import cycles, a core free of kopf, the
Kubernetes client and torch, a trainer contract free of ML libraries, and only the entry point importing the run."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout and "Contracts: 6 kept" in out.stdout, out.stdout[-2000:]
