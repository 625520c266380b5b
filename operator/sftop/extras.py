"""Which optional install (`pip install 'sftop[EXTRA]'`) each command needs, checked before the command runs.

The base install holds the API models and the trainer's config contract; each command needs more. A command whose
libraries are missing says which extra to install, in one sentence, instead of a traceback from deep inside it.
"""

from __future__ import annotations

import importlib.util

# An extra -> the modules that prove it installed (checked with find_spec: nothing is imported).
MODULES: dict[str, tuple[str, ...]] = {
    "cli": ("jsonschema", "celpy", "plotext"),
    "operator": ("kopf", "kubernetes", "prometheus_client", "aiohttp"),
    "trainer": ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "huggingface_hub", "matplotlib"),
    "demo": ("gguf",),
}

# A command -> the extras it needs; the first one named in the message is the one that brings all of them.
COMMANDS: dict[str, tuple[str, ...]] = {
    "validate": ("cli",),
    "history": ("cli",),
    "plan": ("trainer", "cli"),
    "run": ("trainer", "cli"),
    "demo": ("demo", "trainer", "cli"),
    "operator": ("operator",),
}

# What each extra brings with it (pyproject.toml), so the advice names one install that is enough.
INCLUDES: dict[str, tuple[str, ...]] = {"operator": ("cli",), "demo": ("trainer", "cli"), "trainer": ()}


def missing_modules(extra: str) -> list[str]:
    return [m for m in MODULES[extra] if importlib.util.find_spec(m) is None]


def which_extra(module: str) -> str | None:
    """The extra that brings a top-level module, when one does."""
    return next((extra for extra, modules in MODULES.items() if module.split(".")[0] in modules), None)


def advice(command: str, extras: list[str], missing: list[str]) -> str:
    spec = ",".join(extras)
    return (f"sftop {command} needs the {' and '.join(repr(e) for e in extras)} extra{'s' if len(extras) > 1 else ''} "
            f"({', '.join(missing)} not installed): pip install 'sftop[{spec}]'")


def check(command: str) -> str | None:
    """None when everything `command` needs is installed; otherwise the sentence that says what to install."""
    needed = COMMANDS.get(command, ())
    missing = {extra: missing_modules(extra) for extra in needed}
    missing = {extra: mods for extra, mods in missing.items() if mods}
    if not missing:
        return None
    first = needed[0]
    # one install that is enough: the command's own extra when it brings every missing one
    extras = [first] if all(e == first or e in INCLUDES.get(first, ()) for e in missing) else list(missing)
    return advice(command, extras, [m for mods in missing.values() for m in mods])
