"""A run's metric history and its loss plot, written as it trains (`sftop history` reads them):

    metrics.jsonl   one JSON object per logged step and per evaluation: step, epoch, loss, evalLoss,
                    learningRate, gradNorm, tokensPerSecond, exactMatch, time (a resumed run appends)
    loss.png        train and eval loss against the step, with the learning rate on a second axis
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sftop_trainer.config import TrainerConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
LOG_KEYS = {"loss": "loss", "eval_loss": "evalLoss", "learning_rate": "learningRate", "grad_norm": "gradNorm",
            "eval_exact_match": "exactMatch", "eval_mean_token_accuracy": "evalTokenAccuracy",
            "mean_token_accuracy": "tokenAccuracy"}


def finite(value: Any) -> float | None:
    return round(float(value), 8) if isinstance(value, (int, float)) and math.isfinite(value) else None


class MetricHistory:
    """Appends each log of the Trainer to metrics.jsonl, with the tokens per second since the previous one."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / METRICS_FILE
        self._last: tuple[float, int] | None = None  # (monotonic time, tokens seen) at the previous training log

    def observe(self, step: int, epoch: float | None, tokens: int | None, logs: dict[str, Any]) -> None:
        entry: dict[str, Any] = {"step": step}
        if epoch is not None:
            entry["epoch"] = round(epoch, 4)
        for key, name in LOG_KEYS.items():
            if key in logs:
                entry[name] = finite(logs[key]) if key != "loss" else (
                    float(logs[key]) if isinstance(logs[key], (int, float)) else None)
        if "loss" not in entry and "evalLoss" not in entry:
            return  # the summary Trainer logs at the end (train_runtime, ...) is in result.json
        if "loss" in entry:
            now = time.monotonic()
            if self._last is not None and tokens is not None and now > self._last[0] and tokens >= self._last[1]:
                entry["tokensPerSecond"] = round((tokens - self._last[1]) / (now - self._last[0]), 1)
            self._last = (now, tokens or 0)
        entry["time"] = round(time.time(), 3)
        with self.path.open("a") as f:
            f.write(json.dumps(entry, allow_nan=True) + "\n")


def read_history(path: Path) -> list[dict[str, Any]]:
    """The entries of a metrics.jsonl (or of the run folder holding one). A step logged again by a resumed attempt
    replaces the earlier entry of that step and kind."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    entries: dict[tuple[int, bool], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed pod
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries[(entry["step"], "evalLoss" in entry and "loss" not in entry)] = entry
    return [entries[k] for k in sorted(entries)]


def series(entries: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(e["step"], e[key]) for e in entries if isinstance(e.get(key), (int, float)) and math.isfinite(e[key])]
    return [p[0] for p in points], [p[1] for p in points]


def write_plot(entries: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """loss.png: train loss, eval loss and the learning rate against the step (matplotlib, no display)."""
    if not entries:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        for key, label, style in (("loss", "train loss", "-"), ("evalLoss", "eval loss", "o-")):
            steps, values = series(entries, key)
            if steps:
                ax.plot(steps, values, style, label=label, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        steps, rates = series(entries, "learningRate")
        if steps:
            lr = ax.twinx()
            lr.plot(steps, rates, ":", color="gray", label="learning rate")
            lr.set_ylabel("learning rate")
            lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.legend(loc="upper right")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)


def write_history_plot(cfg: TrainerConfig, out: Path) -> None:
    """loss.png from metrics.jsonl; a plot that fails is logged, never fatal."""
    path = out / METRICS_FILE
    if not path.is_file():
        return
    try:
        write_plot(read_history(path), out / PLOT_FILE,
                   title=f"{cfg.run.sftjob or cfg.model.name} {cfg.run.id or ''}".strip())
    except Exception as e:  # matplotlib missing or a backend problem: the numbers are in metrics.jsonl
        log.warning("no loss plot written: %s", e)


def terminal_plot(entries: list[dict[str, Any]], width: int | None = None, height: int | None = None,
                  title: str = "", color: bool = False) -> str:
    """The loss curve as text for a terminal (plotext); `color`: keep its terminal colour codes."""
    import plotext as plt

    plt.clear_figure()
    plt.theme("clear")
    if width and height:
        plt.plotsize(width, height)
    for key, label, marker in (("loss", "train loss", "braille"), ("evalLoss", "eval loss", "dot")):
        steps, values = series(entries, key)
        if steps:
            plt.plot(steps, values, label=label, marker=marker)
    plt.xlabel("step")
    plt.ylabel("loss")
    if title:
        plt.title(title)
    text = plt.build()
    return text if color else re.sub(r"\x1b\[[0-9;]*m", "", text)
