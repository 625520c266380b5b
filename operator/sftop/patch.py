"""What a status write sends and whether it is worth sending: the JSON merge patch between two statuses, and which
differences a user reads (at once) or are live progress (within the write budget, sftop.act). Pure.
"""

from __future__ import annotations

from typing import Any

# Status fields that change while a run trains and only say how far it got: written at most at the write budget.
# Everything else (phase, reasons, results) is written as soon as it changes. The running attempt's seconds change
# on every look: they never cause a write by themselves and go with the next one.
LIVE_FIELDS = frozenset({"progress", "checkpoints"})
LIVE_RUN_FIELDS = frozenset({"podSeconds", "gpuSeconds"})


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`; None when they are equal."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            sub = merge_patch(old[key], value)
            patch[key] = value if not isinstance(value, dict) else sub
    return patch or None


def without_empty(value: Any) -> Any:
    """`value` without empty lists, maps and nulls at any depth: the API server fills in the CRD's defaults ([] and
    {}) on every read, so an empty value and an absent one say the same."""
    if isinstance(value, dict):
        out = {k: without_empty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        return [without_empty(v) for v in value]
    return value


def _without_stamps(status: dict[str, Any]) -> dict[str, Any]:
    out = dict(status)
    if isinstance(out.get("progress"), dict):
        out["progress"] = {k: v for k, v in out["progress"].items() if k != "updateTime"}
    return out


def worth_writing(old: dict[str, Any], new: dict[str, Any]) -> tuple[bool, bool]:
    """(whether `new` differs from `old` in anything a user reads, whether the difference is live progress only:
    progress, checkpoints, the running attempt's seconds). A moved timestamp alone is not worth a write."""
    patch = merge_patch(_without_stamps(without_empty(old)), _without_stamps(without_empty(new)))
    if patch is None or (set(patch) == {"run"} and set(patch["run"]) <= LIVE_RUN_FIELDS):
        return False, False  # the running attempt's seconds alone: written with the next write that is due
    live = set(patch) <= LIVE_FIELDS | {"run"} and set((patch.get("run") or {})) <= LIVE_RUN_FIELDS \
        and bool(old.get("progress")) == bool(new.get("progress"))  # a run's first progress is news: at once
    return True, live
