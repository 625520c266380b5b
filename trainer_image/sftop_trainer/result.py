"""What a run reports when it ends: the termination message (the part of the result or failure the operator reads,
within Kubernetes' 4 KiB) and the shape of a failure."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sftop_trainer.errors import ExitCode

log = logging.getLogger("sftop_trainer")


TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message


STATUS_SAMPLE_CHARS = 160  # a sample's strings in the termination message (and so in the SFTJob's status)


def compact_evaluation(evaluation: dict[str, Any] | None, samples: int) -> dict[str, Any] | None:
    """The result's evaluation as the SFTJob's status holds it: before, after, and a few short samples."""
    if not evaluation:
        return None
    out = {k: evaluation[k] for k in ("prompts", "before", "after") if evaluation.get(k) is not None}

    def cut(value):
        return value if not isinstance(value, str) or len(value) <= STATUS_SAMPLE_CHARS \
            else value[: STATUS_SAMPLE_CHARS - 1] + "…"

    out["samples"] = [{k: cut(v) for k, v in s.items() if v is not None}
                      for s in (evaluation.get("samples") or [])[:samples]]
    return out


def compact(result: dict[str, Any]) -> str:
    """The result (or failure) in the keys the operator reads, within the termination-message limit: older
    checkpoints (the best one stays), then samples, then the evaluation give way first."""
    keys = ("status", "exitCode", "reason", "message", "steps", "resultStep", "stopReason", "trainLoss", "evalLoss",
            "runtimeSeconds", "trainableParameters", "totalParameters", "trainedTokens", "adapterPath", "mergedPath",
            "resumedFromStep", "warmStart", "serving")
    small = {k: result[k] for k in keys if result.get(k) is not None}
    if result.get("plan"):
        small["plan"] = result["plan"]
        if len(json.dumps(small).encode()) > TERMINATION_LIMIT:  # the assumptions stay in plan.json
            small["plan"] = {**result["plan"], "memory": {k: v for k, v in result["plan"]["memory"].items()
                                                          if k != "assumptions"}}
    checkpoints = result.get("checkpoints") or []

    def fewer(n: int) -> list[dict[str, Any]]:
        best = [c for c in checkpoints if c.get("best")]
        newest = checkpoints[-n:] if n else []
        return best + [c for c in newest if c not in best] if best and best[0] not in newest else newest

    def text_of(extra: dict[str, Any]) -> str:
        return json.dumps({**small, **{k: v for k, v in extra.items() if v}}, separators=(",", ":"),
                          ensure_ascii=False)

    for samples in (3, 2, 1, 0):
        for n in (len(checkpoints), 5, 2, 1):
            text = text_of({"evaluation": compact_evaluation(result.get("evaluation"), samples),
                            "checkpoints": fewer(n)})
            if len(text.encode()) <= TERMINATION_LIMIT:
                return text
    text = text_of({"checkpoints": fewer(1)})
    if len(text.encode()) <= TERMINATION_LIMIT:
        return text
    small.pop("serving", None)
    text = text_of({})
    if len(text.encode()) > TERMINATION_LIMIT and "message" in small:
        over = len(text.encode()) - TERMINATION_LIMIT + 16
        small["message"] = small["message"].encode()[: max(0, len(small["message"].encode()) - over)].decode(
            errors="ignore") + " …"
        text = text_of({})
    return text


def write_termination_message(result: dict[str, Any]) -> None:
    path = os.environ.get("SFTOP_TERMINATION_LOG", "/dev/termination-log")
    try:
        Path(path).write_text(compact(result))
    except OSError as e:
        log.debug("no termination message written to %s: %s", path, e)


def failure(code: ExitCode, reason: str, message: str) -> dict[str, Any]:
    return {"status": "Failed", "exitCode": int(code), "reason": reason, "message": message}
