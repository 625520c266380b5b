"""Which optional install (`pip install 'sftop[EXTRA]'`) each command needs, checked before the command runs.

The base install holds the API models and the trainer's config contract; each command needs more. A command whose
libraries are missing says which extra to install, in one sentence, instead of a traceback from deep inside it.
"""

from __future__ import annotations

import importlib.util

# An extra -> the modules it brings (pyproject.toml), for naming the extra of a module that is missing.
MODULES: dict[str, tuple[str, ...]] = {
    "cli": ("jsonschema", "celpy", "plotext"),
    "operator": ("kopf", "kubernetes", "prometheus_client", "aiohttp"),
    "trainer": ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "huggingface_hub", "matplotlib"),
    "demo": ("gguf",),
}

# A command -> the modules it imports, by the extra that brings them; the first extra brings all of them.
VALIDATE = ("jsonschema", "celpy")
COMMANDS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "validate": (("cli", VALIDATE),),
    "history": (("cli", ("plotext",)),),
    "plan": (("trainer", MODULES["trainer"]), ("cli", VALIDATE)),
    "run": (("trainer", MODULES["trainer"]), ("cli", VALIDATE)),
    "demo": (("demo", MODULES["demo"]), ("trainer", MODULES["trainer"]), ("cli", VALIDATE)),
    "operator": (("operator", MODULES["operator"]),),
}

# What each extra brings with it (pyproject.toml), so the advice names one install that is enough.
INCLUDES: dict[str, tuple[str, ...]] = {"operator": ("cli",), "demo": ("trainer", "cli")}


def which_extra(module: str) -> str | None:
    """The extra that brings a top-level module, when one does."""
    return next((extra for extra, modules in MODULES.items() if module.split(".")[0] in modules), None)


def advice(command: str, extras: list[str], missing: list[str]) -> str:
    names = " and ".join(repr(e) for e in extras)
    return (f"sftop {command} needs the {names} extra{'s' if len(extras) > 1 else ''} ({', '.join(missing)} not "
            f"installed): pip install 'sftop[{','.join(extras)}]'")


def check(command: str) -> str | None:
    """None when everything `command` needs is installed; otherwise the sentence that says what to install."""
    needed = COMMANDS.get(command, ())
    missing = {extra: [m for m in modules if importlib.util.find_spec(m) is None] for extra, modules in needed}
    missing = {extra: mods for extra, mods in missing.items() if mods}
    if not missing:
        return None
    first = needed[0][0]
    # one install that is enough: the command's own extra when it brings every missing one
    extras = [first] if all(e == first or e in INCLUDES.get(first, ()) for e in missing) else list(missing)
    return advice(command, extras, [m for mods in missing.values() for m in mods])
