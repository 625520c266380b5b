"""How SIGTERM (preemption, eviction, suspend, a node drain) becomes a checkpoint: before training it stops the run
at once; during training transformers' just-in-time checkpoint saves at the next step boundary, at the same step in
every process of the run."""

from __future__ import annotations

import signal

from sftop_trainer.errors import Interrupted
from sftop_trainer.runtime import world_size


class SigtermWatch:
    """Remembers whether SIGTERM arrived. Before training it stops the run at once (nothing to save yet); during
    training it passes the signal on to transformers' JIT checkpoint handler."""

    def __init__(self):
        self.received = False
        self.training = False
        self._next = None
        signal.signal(signal.SIGTERM, self._handle)

    def chain(self) -> None:
        """Call after the Trainer installed its own handler: keep it, and see the signal first."""
        self._next = signal.getsignal(signal.SIGTERM)
        self.training = True
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True
        if not self.training:
            raise Interrupted("stopped by SIGTERM before training started; nothing to save")
        if callable(self._next):
            self._next(signum, frame)


def jit_manager(trainer):
    """transformers' just-in-time checkpoint manager of a Trainer (None when it has none)."""
    from transformers.trainer_jit_checkpoint import JITCheckpointCallback

    jit = next((c for c in trainer.callback_handler.callbacks if isinstance(c, JITCheckpointCallback)), None)
    return getattr(jit, "jit_manager", None)


def checkpoint_at_once(trainer) -> None:
    """Ask for the checkpoint as SIGTERM arrives, at the next step boundary. transformers waits 3 s first, in case
    SIGKILL follows at once; in Kubernetes SIGKILL comes when the pod's grace period ends, which the operator sizes
    for a step and a save (SFTOP_TERMINATION_GRACE_SECONDS), so the wait only takes 3 s from the save. A SIGKILL that
    does come at once (a hard eviction, a forced deletion) leaves an incomplete checkpoint, which the next attempt
    removes and does not resume from."""
    manager = jit_manager(trainer)
    if manager is not None:
        manager.kill_wait = 0


def agreed_checkpoint(trainer):
    """With several processes, make transformers' just-in-time checkpoint a decision of the whole group: SIGTERM
    reaches the processes at different moments, and a process that stops to save while the others go on to the
    next step would leave them waiting in a collective until they are killed, with no checkpoint. The signal's
    timer only marks a request as pending; at each step's end (before transformers' own check) the processes
    agree, through one all-reduce, whether any of them has one, and then all save at that same step."""
    from transformers import TrainerCallback
    from transformers.trainer_jit_checkpoint import JITCheckpointCallback

    jit = next((c for c in trainer.callback_handler.callbacks if isinstance(c, JITCheckpointCallback)), None)
    manager = jit_manager(trainer)
    if manager is None or world_size() < 2:
        return
    pending = {"requested": False}

    def request() -> None:  # the signal handler's timer, in its thread: only note it
        pending["requested"] = True

    manager._enable_checkpoint = request

    class AgreeOnCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            import torch
            import torch.distributed as dist

            flag = torch.tensor([1 if pending["requested"] else 0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                manager.is_checkpoint_requested = True
                trainer.group_interrupted = True  # this process may not have seen SIGTERM itself

    trainer.callback_handler.callbacks.insert(trainer.callback_handler.callbacks.index(jit), AgreeOnCheckpoint())
