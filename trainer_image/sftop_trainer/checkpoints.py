"""The checkpoint-<step>/ folders under a run's checkpoints/: which are complete, which one a restarted run resumes
from, whether it is the run's last step, and the inventory of those kept (with each one's metrics) that the
progress endpoint, result.json and the termination message carry to the SFTJob's status."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from sftop_trainer.history import finite

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
INCOMPLETE_MARK = "checkpoint-is-incomplete.txt"  # written by transformers' JIT checkpoint while it saves
INVENTORY_LIMIT = 20  # checkpoints listed in status: the newest ones, and the best one always


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def checkpoint_folders(folder: Path) -> list[Path]:
    """The checkpoint-<step>/ folders in `folder`, complete or not, oldest first."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
                   and p.name.rsplit("-", 1)[-1].isdigit()), key=checkpoint_step)


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint is complete once transformers wrote trainer_state.json (its last file) and no JIT save is
    still marked in progress."""
    state = path / "trainer_state.json"
    if (path / INCOMPLETE_MARK).exists() or not state.is_file():
        return False
    try:
        json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return True


def planned_steps(trainer) -> int:
    """The run's optimizer steps, as transformers computes them: maxSteps, or epochs of the data loader's batches."""
    if trainer.args.max_steps > 0:
        return trainer.args.max_steps
    per_epoch = max(1, len(trainer.get_train_dataloader()) // trainer.args.gradient_accumulation_steps)
    return math.ceil(trainer.args.num_train_epochs * per_epoch)


def is_final_checkpoint(path: Path, trainer) -> bool:
    """Whether a checkpoint holds this run's last step (a pod that died after saving it, before its result)."""
    state = json.loads((path / "trainer_state.json").read_text())
    return state.get("global_step", 0) >= planned_steps(trainer)


def latest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint-<step>/ in `folder`. Newer, incomplete ones (a save cut short by SIGKILL)
    are removed so checkpoint rotation never counts them."""
    for path in reversed(checkpoint_folders(folder)):
        if is_complete_checkpoint(path):
            return path
        log.warning("removing incomplete checkpoint %s", path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def checkpoint_entry(path: Path, complete: bool) -> dict[str, Any]:
    """One checkpoint, with the metrics of its step from its own trainer_state.json."""
    step = checkpoint_step(path)
    entry: dict[str, Any] = {"step": step, "path": f"{path.parent.name}/{path.name}", "complete": complete}
    if not complete:
        return entry
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return {**entry, "complete": False}
    if state.get("epoch") is not None:
        entry["epoch"] = round(state["epoch"], 4)
    logs = state.get("log_history") or []
    train = [h for h in logs if "loss" in h and h.get("step", 0) <= step]
    if train and finite(train[-1]["loss"]) is not None:
        entry["trainLoss"] = finite(train[-1]["loss"])
    evals = [h for h in logs if "eval_loss" in h and h.get("step") == step]
    if evals and finite(evals[-1]["eval_loss"]) is not None:
        entry["evalLoss"] = finite(evals[-1]["eval_loss"])
    return entry


def inventory(checkpoints: Path, best: str | None = None, limit: int = INVENTORY_LIMIT,
              evals: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """The checkpoints kept in `checkpoints`, oldest first: the newest `limit`, and the best one (the path
    transformers recorded as best_model_checkpoint) even when older, marked `best`. `evals`: eval losses by step,
    for the steps evaluated after their checkpoint was written (the last one)."""
    found = checkpoint_folders(checkpoints)
    best_name = Path(best).name if best else None
    kept = found[-limit:]
    if best_name and best_name not in {p.name for p in kept}:
        kept = [p for p in found if p.name == best_name] + kept[1:]
    out = []
    for path in kept:
        entry = checkpoint_entry(path, is_complete_checkpoint(path))
        if entry["complete"] and "evalLoss" not in entry and (evals or {}).get(entry["step"]) is not None:
            entry["evalLoss"] = evals[entry["step"]]
        if path.name == best_name:
            entry["best"] = True
        out.append(entry)
    return out
