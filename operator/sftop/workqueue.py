"""The work queue of SFTJobs to reconcile, like client-go's: each waits at most once, one worker at a time, and new or
changed specs go first. Lives on the operator's event loop.
"""

from __future__ import annotations

import asyncio
import collections

Key = tuple[str, str]  # (namespace, name) of an SFTJob


class WorkQueue:
    """A set of keys to process, like client-go's: a key waits at most once, is processed by one worker at a
    time, and a key added while it is processed is processed again afterwards; urgent keys are served first.
    Call from the event loop."""

    def __init__(self):
        self._ready: collections.deque[Key] = collections.deque()
        self._urgent: collections.deque[Key] = collections.deque()  # served first: new or changed specs
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._wakeup = asyncio.Event()

    def add(self, key: Key, urgent: bool = False) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            (self._urgent if urgent else self._ready).append(key)
            self._wakeup.set()
        elif urgent and key not in self._urgent:
            self._ready.remove(key)
            self._urgent.append(key)

    def add_after(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= due:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(due, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def get(self) -> Key:
        while not self._ready and not self._urgent:
            self._wakeup.clear()
            await self._wakeup.wait()
        key = (self._urgent or self._ready).popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._ready) + len(self._urgent)
