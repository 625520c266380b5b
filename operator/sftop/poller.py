"""Reads of the trainer pods' progress endpoints, off the reconcile path.

One task on the operator's event loop reads every running trainer's `/progress` over HTTP (aiohttp), at most
`concurrency` reads at a time, each bounded by `timeout` seconds. A pod that answers is read every `interval`;
one that does not (a NetworkPolicy that drops the operator's traffic, a trainer that hangs) is read after 2, 4,
8... intervals, up to `max_backoff`. The latest reading of each SFTJob is kept for `decide` to put in status, and
`on_change` asks for a reconcile when a reading says something new (a new step, a checkpoint, an answer after
silence or silence after answers). No pod that never answers ever holds a reconcile worker.
"""

from __future__ import annotations

import asyncio
import datetime
import heapq
import itertools
import logging
import random
import time
from typing import Any, Callable

import aiohttp

from sftop.records import UNREACHABLE_AFTER, Reading

log = logging.getLogger(__name__)
Key = tuple[str, str]


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Poller:
    def __init__(self, port: int, interval: float, on_change: Callable[[Key], None], concurrency: int = 64,
                 timeout: float = 1.0, max_backoff: float = 300.0):
        self.port, self.interval, self.on_change = port, interval, on_change
        self.concurrency, self.timeout, self.max_backoff = concurrency, timeout, max_backoff
        self.readings: dict[Key, Reading] = {}
        self._due: list[tuple[float, int, Key]] = []  # (when, tie-breaker, key)
        self._order = itertools.count()
        self._wakeup = asyncio.Event()
        self.on_read: Callable[[str], None] = lambda outcome: None  # "answered" or "failed", for the metrics

    def track(self, key: Key, ip: str) -> Reading:
        """Read `key`'s trainer at `ip` from now on (a new pod, a new address: a fresh reading, read at once)."""
        reading = self.readings.get(key)
        if reading is None or reading.ip != ip:
            reading = self.readings[key] = Reading(ip=ip)
            self._schedule(key, 0.0)
        return reading

    def forget(self, key: Key) -> None:
        self.readings.pop(key, None)  # its entry in the schedule is dropped when it comes due

    def _schedule(self, key: Key, delay: float) -> None:
        heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), key))
        self._wakeup.set()

    async def run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.timeout, connect=self.timeout)
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while True:
                self._wakeup.clear()
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    _, _, key = heapq.heappop(self._due)
                    reading = self.readings.get(key)
                    if reading is None:
                        continue
                    await slots.acquire()
                    task = asyncio.create_task(self._read(session, key, reading))
                    task.add_done_callback(lambda _: slots.release())
                wait = self._due[0][0] - time.monotonic() if self._due else 3600.0
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, wait))
                except asyncio.TimeoutError:
                    pass

    async def _read(self, session: aiohttp.ClientSession, key: Key, reading: Reading) -> None:
        data, error = None, None
        try:
            async with session.get(progress_url(reading.ip, self.port)) as response:
                if response.status != 200:
                    error = f"HTTP {response.status}"
                else:
                    data = await response.json(content_type=None)
                    if not isinstance(data, dict):
                        data, error = None, "an answer that is not a JSON object"
        except asyncio.TimeoutError:
            error = f"no answer within {self.timeout:g}s"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            error = str(e) or type(e).__name__
        if self.readings.get(key) is not reading:
            return  # forgotten, or another pod, while this read was under way
        changed = False
        if data is not None:
            self.on_read("answered")
            changed = reading.failures > 0 or reading.data is None or _differs(reading.data, data)
            reading.data, reading.stamp, reading.failures, reading.error, reading.retry_in = \
                data, _stamp(), 0, None, None
            delay = self.interval
        else:
            self.on_read("failed")
            reading.failures += 1
            reading.error = error
            delay = min(self.max_backoff, self.interval * 2 ** reading.failures) * random.uniform(0.9, 1.1)
            reading.retry_in = delay
            changed = reading.failures == UNREACHABLE_AFTER
            log.debug("no progress from %s (%s/%s): %s; next read in %.0fs", reading.ip, *key, error, delay)
        self._schedule(key, delay)
        if changed:
            self.on_change(key)


def progress_url(ip: str, port: int) -> str:
    """The trainer's progress endpoint at a pod IP; an IPv6 address (a single-stack IPv6 or dual-stack cluster's
    `status.podIP`) goes in brackets, as a URL's host must (RFC 3986, section 3.2.2)."""
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/progress"


def _differs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return any(old.get(k) != new.get(k) for k in ("step", "loss", "evalLoss", "exactMatch", "checkpoints", "epoch"))
