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
