"""Argo CD's resource health scripts, run the way Argo CD runs them (util/lua in argoproj/argo-cd): a Lua 5.1
VM (Argo CD embeds gopher-lua, a Lua 5.1) with the live object as the global `obj` (JSON decoded into Lua tables:
objects and arrays as tables, arrays from index 1, numbers as Lua numbers), the script's return value a table
with `status` (Healthy, Progressing, Degraded, Suspended, Missing, Unknown) and `message`. Argo CD loads only
Lua's safe libraries: the script must not need io or os.

The scripts live where Argo CD keeps them upstream: resource_customizations/<group>/<Kind>/health.lua, with
health_test.yaml naming a fixture in testdata/ and the health it must get.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import yaml

HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _table(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _table(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_table(runtime, v) for v in value])
    return value


def health(script: str, obj: dict[str, Any]) -> dict[str, str]:
    runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    runtime.execute("io = nil; os = nil; debug = nil; dofile = nil; loadfile = nil; require = nil")
    runtime.globals().obj = _table(runtime, obj)
    result = runtime.execute(script)
    out = {"status": result["status"], "message": result["message"] or ""}
    if out["status"] not in HEALTH_STATUSES:
        raise ValueError(f"health.lua returned status {out['status']!r}, not one of {sorted(HEALTH_STATUSES)}")
    return out


def cases(folder: Path) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(fixture name, object, expected health) for each test in folder/health_test.yaml."""
    tests = yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]
    return [(t["inputPath"], yaml.safe_load((folder / t["inputPath"]).read_text()), t["healthStatus"]) for t in tests]
