"""A command whose extra is not installed says which one to install (checked without importing anything)."""

import tomllib
from pathlib import Path

from sftop import extras

ROOT = Path(__file__).resolve().parents[2]


def test_every_command_that_needs_an_extra_names_one_that_pyproject_defines():
    defined = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for command, needs in extras.COMMANDS.items():
        for extra, _ in needs:
            assert extra in defined, (command, extra)
    for extra, included in extras.INCLUDES.items():
        assert all(any(dep.startswith(f"sftop[") and inc in dep for dep in defined[extra]) for inc in included), \
            f"pyproject's {extra} extra brings {included}"


def test_a_missing_library_gives_one_install_that_is_enough(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    absent = {"torch", "celpy"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    assert extras.check("plan") == ("sftop plan needs the 'trainer' and 'cli' extras (torch, celpy not installed): "
                                    "pip install 'sftop[trainer,cli]'")
    assert extras.check("demo").endswith("pip install 'sftop[demo]'")
    assert extras.check("operator") is None
    assert extras.check("validate").endswith("pip install 'sftop[cli]'")
    assert extras.which_extra("huggingface_hub.errors") == "trainer"
