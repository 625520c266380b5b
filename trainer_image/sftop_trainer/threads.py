"""CPU threads sized to the CPUs this process may use.

torch and OpenMP start one thread per core they see. A pod with a CPU limit of 8 on a 64-core node sees 64
cores; two trainers on one 2-core machine each start 2 threads. OpenMP threads then spin against each other and
against the CFS quota: two concurrent runs on 2 cores were tens of times slower per step than one
(bench/RESULTS.md). So before torch starts, the trainer sizes its threads:

    budget      the CPUs of the process's affinity mask, capped by the cgroup CPU quota (cgroup v2 `cpu.max`,
                v1 `cpu.cfs_quota_us`, on the process's cgroup and its ancestors), rounded down, at least 1
    per process budget / the training processes on this node (torchrun's LOCAL_WORLD_SIZE)

An OMP_NUM_THREADS already in the environment wins: the operator sets it from the pod's CPU resources, and a
user may set it by hand. The same number goes to MKL, OpenBLAS and the tokenizers' thread pool.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """(cgroup v2 path, cgroup v1 cpu controller path) from /proc/self/cgroup's text."""
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(root: Path, path: str) -> list[Path]:
    """The cgroup folder and its ancestors up to the mount point; where the path is not visible under the mount
    (a container's own cgroup namespace), the mount point itself."""
    parts = [p for p in path.strip("/").split("/") if p]
    folders = [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [f for f in folders if f.is_dir()] or [root]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """CPUs the cgroup quota allows (1.5 for `150000 100000`), the tightest along the path; None when unlimited."""
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
    v2, v1 = _cgroup_paths(proc_cgroup)
    limits: list[float] = []
    if v2 is not None:
        for folder in _ancestors(root, v2):
            text = _read(folder / "cpu.max")
            if text and not text.startswith("max"):
                quota, _, period = text.partition(" ")
                limits.append(int(quota) / int(period or 100000))
    if v1 is not None:
        for mount in (root / "cpu,cpuacct", root / "cpu"):
            for folder in _ancestors(mount, v1) if mount.is_dir() else []:
                quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
                if quota and period and int(quota) > 0:
                    limits.append(int(quota) / int(period))
            if limits:
                break
    return min(limits) if limits else None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> int:
    """The CPUs this process may use: its affinity, capped by the cgroup quota, rounded down, at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cpus = min(cpus, math.floor(limit))
    return max(1, cpus)


def threads_per_process(environ: dict[str, str] | None = None, cpus: int | None = None) -> tuple[int, str]:
    """(threads, where the number comes from) for one training process."""
    environ = os.environ if environ is None else environ
    given = environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given), "OMP_NUM_THREADS"
    cpus = available_cpus() if cpus is None else cpus
    local = environ.get("LOCAL_WORLD_SIZE", "").strip()
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, cpus // processes), f"{cpus} CPU(s) available / {processes} process(es)"


def size_threads(environ: dict[str, str] | None = None) -> int:
    """Set the thread variables (before torch starts) and torch's intra-op threads; returns the count."""
    environ = os.environ if environ is None else environ
    threads, why = threads_per_process(environ)
    for name in THREAD_VARIABLES:
        environ.setdefault(name, str(threads))
    environ["OMP_NUM_THREADS"] = str(threads)
    import sys

    if "torch" in sys.modules:  # imported already (in-process runs): set its pool too
        sys.modules["torch"].set_num_threads(threads)
    log.info("CPU threads per process: %d (%s)", threads, why)
    return threads
