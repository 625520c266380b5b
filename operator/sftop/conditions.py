"""Reading a Kubernetes object's status conditions, the way Jobs, Pods and Kueue's Workloads carry them.

Below `lifecycle` and `kueue`, which both read conditions; the SFTJob's own conditions are written in `lifecycle`.
"""

from __future__ import annotations

from typing import Any


def conditions_of(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def holds(conds: dict[str, dict[str, Any]], kind: str) -> dict[str, Any] | None:
    c = conds.get(kind)
    return c if c and c.get("status") == "True" else None
