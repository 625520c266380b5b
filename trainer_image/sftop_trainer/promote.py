"""The switch of an SFTJob's stable path to a run's adapter: `sftop-train --promote <sftjob folder> --run <id>`, run
by the operator's promotion Job (the operator never mounts a claim; the Job mounts the output claim).

    <output>/<namespace>/<sftjob>/
        promoted  -> <run id>/adapter     a relative symbolic link: the adapter serving reads
        <run id>/adapter/                 each run's own folder, never changed after its run

The switch writes a new link beside the old one and renames it over `promoted` (rename(2) replaces the name
atomically: at every moment `promoted` names the old run's folder or the new one's, never nothing and never a
mix). A run's folder is never written after its run, so a reader that resolves `promoted` once (os.path.realpath,
or vLLM's load_lora_adapter with the path the operator sends) reads one whole adapter; the previous run stays
where it was. A switch to the run already promoted changes nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from sftop_trainer.errors import ConfigError

LINK = "promoted"
RUN_FOLDER = r"[0-9a-f]{8}"


def complete(folder: Path) -> bool:
    """Whether `folder` holds a whole adapter (or a whole model, for method full): config and weights."""
    weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return weights and ((folder / "adapter_config.json").is_file() or (folder / "config.json").is_file())


def current(root: Path) -> str | None:
    """The run `promoted` names now, if any."""
    link = root / LINK
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).parts[0]


def promote(root: Path, run: str, kind: str = "adapter") -> dict[str, str | None]:
    """Point `<root>/promoted` at `<run>/<kind>`. Returns {"promoted": run, "replaced": the run it named before}."""
    import re

    if not re.fullmatch(RUN_FOLDER, run) or kind not in ("adapter", "model"):
        raise ConfigError(f"--run {run!r} --kind {kind!r}: a run id is 8 hex characters, the kind adapter or model")
    target = Path(run) / kind
    if not complete(root / target):
        raise ConfigError(f"{root / target} is not a whole {kind} (config and weights): the run did not finish "
                          f"writing it, or it was moved; nothing was switched")
    link = root / LINK
    if link.exists() and not link.is_symlink():
        raise ConfigError(f"{link} is a folder or file, not the link the operator switches: move it away (it is "
                          f"never deleted); nothing was switched")
    before = current(root)
    if before is not None and os.readlink(link) == str(target):
        return {"promoted": run, "replaced": None, "unchanged": "true"}
    staged = root / f".{LINK}.{run}.{uuid.uuid4().hex[:12]}"  # never another switch's (a container's pid is 1)
    os.symlink(str(target), staged)
    os.replace(staged, link)
    try:
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename survives a crash of the node
        finally:
            os.close(fd)
    except OSError:  # a filesystem that cannot sync a folder (some FUSE and CSI drivers): the switch is made
        pass
    return {"promoted": run, "replaced": before}


def main(root: str, run: str, kind: str) -> dict[str, object]:
    """The promotion Job's work: the switch, as a result for the termination message."""
    outcome = promote(Path(root), run, kind)
    print(json.dumps({"event": "promoted", **outcome}), flush=True)
    return {"status": "Succeeded", **{k: v for k, v in outcome.items() if v is not None}}
