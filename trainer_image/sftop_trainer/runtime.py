"""Where this process stands: its rank in the run, the processes of its pod, the size of the group. Read from the
environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE); a process started alone is rank 0 of 1.

This module imports nothing else of the package, so every other module may use it.
"""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """The run's first process (global rank 0): it serves progress and writes the result."""
    return os.environ.get("RANK", "0") == "0"


def is_node_main_process() -> bool:
    """The first process of this node (pod): it speaks for the pod (its termination message)."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version line, when this pod can read it (the driver exposes it under /proc; a
    container without the driver mounted has none)."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline().strip()
    except OSError:
        first = ""
    if first:
        # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 ..." -> the version field
        words = first.split()
        return next((w for w in words if w.count(".") >= 1 and w.replace(".", "").isdigit()), first)
    try:
        import pynvml  # optional: the image does not ship it, a custom one may
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except pynvml.NVMLError:  # no driver answers
        return None


def gpu_problem(requested: int | None, visible: int, names: list[str], cuda_build: str | None,
                driver: str | None) -> str | None:
    """Why a run that asked for `requested` GPUs (hardware.gpus, per pod) cannot train on them here, or None. Such a
    run would otherwise train on the CPU, slowly and silently; it stops at once instead. Unset or 0 asks for none."""
    if not requested or visible >= requested:
        return None
    if cuda_build is None:
        build = "this torch is a CPU-only build (torch.version.cuda is None)"
    else:
        build = f"torch is built for CUDA {cuda_build}"
    seen = f"{visible} visible ({', '.join(names)})" if visible else "none visible"
    why = f"NVIDIA driver {driver}" if driver else "no NVIDIA driver readable (/proc/driver/nvidia/version)"
    hint = ("check that the pod got its GPUs (resources.gpus, the node's device plugin), that "
            "CUDA_VISIBLE_DEVICES/NVIDIA_VISIBLE_DEVICES do not hide them, and that the node's driver is new enough "
            "for the image's CUDA build (docs/trainer.md)")
    return f"the run asks for {requested} GPU(s) but can use {seen}; {build}, {why}: {hint}"
