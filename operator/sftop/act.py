"""A reconcile's last step: carry out a `Decision` (sftop.records). The writes (create children, stop, suspend or
label a Job), then the status within the write budget, then the events.

The write budget: a status is written only when something a user reads changed (a moved timestamp is not enough,
sftop.patch.worth_writing); live progress (step, loss, checkpoints) at most `status_writes_per_minute` times a
minute per SFTJob, always with the latest reading; a phase, a reason or a result at once; the running attempt's
GPU-seconds with the next write. An event is posted once per transition: with the status write that records it,
and never twice in a row for one SFTJob.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Coroutine

from sftop import lifecycle, names, patch
from sftop.cache import WatchCache, slim
from sftop.kube import Kube, now
from sftop.metrics import Metrics
from sftop.poller import Poller
from sftop.records import Action, Decision, Observed
from sftop.settings import Settings
from sftop.workqueue import Key

log = logging.getLogger(__name__)
CREATES = ("ensure_claim", "ensure_config_map", "ensure_service", "ensure_job")
CLAIM_MEMORY = 300.0  # seconds an output claim the operator ensured is taken to still exist


class Actor:
    """Writes for reconciles, and what the write budget remembers of each SFTJob; `call` makes a blocking Kubernetes
    API call off the event loop."""

    def __init__(self, settings: Settings, kube: Kube, cache: WatchCache, poller: Poller, metrics: Metrics,
                 call: Callable[..., Coroutine[Any, Any, Any]]):
        self.settings, self.kube, self.cache, self.poller, self.metrics, self.call = \
            settings, kube, cache, poller, metrics, call
        self.last_write: dict[Key, float] = {}  # when each SFTJob's status was last written (monotonic)
        self.last_event: dict[Key, tuple[str, str]] = {}  # the last (reason, message) posted about each SFTJob
        self.claims: dict[Key, float] = {}  # output claims ensured, and when
        self.posting: set[asyncio.Task] = set()  # events being posted

    def forget(self, key: Key) -> None:
        """A deleted SFTJob's budget and last event."""
        for memory in (self.last_write, self.last_event):
            memory.pop(key, None)

    async def act(self, key: Key, seen: Observed, decision: Decision) -> float | None:
        """Carry out a decision: the writes, then the status within the write budget, then its events."""
        requeue = decision.requeue
        if key in self.cache.in_doubt or (any(a.verb in CREATES for a in decision.actions)
                                          and self.cache.may_be_gone(key)):
            self.cache.in_doubt.discard(key)
            if not await self._still_there(key, seen):
                return None
        for action in decision.actions:
            created = await self._act(action)
            if created is not None:
                self.cache.jobs[(action.namespace, created["metadata"]["name"])] = slim(created)
                requeue = 0.5 if requeue is None else min(requeue, 0.5)  # look at what was created (or found)
        if decision.track:
            self.poller.track(key, decision.track)
        else:
            self.poller.forget(key)
        if decision.status is None:
            return requeue
        new = decision.status
        if new.get("phase"):
            new = {**new, "conditions": lifecycle.standard_conditions(new, new.get("observedGeneration"), now(),
                                                                      decision.reason)}
        new = patch.without_empty(new)
        body = seen.body
        old = patch.without_empty(body.get("status") or {})  # the CRD's defaults filled in are no difference
        worth, live = patch.worth_writing(old, new)
        if not worth:
            return requeue
        if live:
            wait = self.last_write.get(key, -1e9) + 60.0 / self.settings.status_writes_per_minute - time.monotonic()
            if wait > 0:  # coalesced: the latest reading is written when the budget allows
                self.metrics.writes_deferred.inc()
                return wait if requeue is None else min(requeue, wait)
        change = patch.merge_patch(old, new)
        assert change is not None
        stored = await self.call(self.kube.patch_status, seen.namespace, seen.name, change)
        if stored is None:
            self._gone(key, seen)
            return None
        self.last_write[key] = time.monotonic()
        self.metrics.status_written(seen.namespace, old, new, live)
        if key in self.cache.sftjobs:
            # The cache sees our own write before its watch event arrives, and no older event replaces it. A spec
            # changed since this reconcile read it comes back with our write, and its own event will be dropped as
            # older: it is queued now (urgent, its generation not yet observed), not at the next resync.
            if isinstance(stored, dict) and stored.get("metadata"):
                changed = stored["metadata"].get("generation") != body["metadata"].get("generation")
                self.cache.wrote(stored, requeue=changed)
            else:
                self.cache.sftjobs[key] = {**self.cache.sftjobs[key], "status": new}
        for kind, reason, message in decision.events:
            if self.last_event.get(key) == (reason, message):
                continue  # the same event twice in a row: a retry, not a transition
            self.last_event[key] = (reason, message)
            # Off the reconcile's path: an event is a courtesy (kube.post_event never raises), the status says it.
            task = asyncio.create_task(self.call(self.kube.post_event, body, kind, reason, message))
            self.posting.add(task)
            task.add_done_callback(self.posting.discard)
            self.metrics.events.inc()
        return requeue

    async def _still_there(self, key: Key, seen: Observed) -> bool:
        """Whether the SFTJob the cache holds is still stored, read before its children are created when the watch
        listed since it was last seen, and after one of its Jobs was deleted. A deletion during a watch gap sends no DELETED event (the list after 410 Gone simply
        lacks the object), so the cache can hold an SFTJob that is gone: reconciled at every resync for ever, and
        children created for it would name a dead owner, the garbage collector would delete them, their DELETED
        events queue it again, and round it would go. A name taken again by a new SFTJob (another uid) replaces the
        cached one."""
        stored = await self.call(self.kube.read_sftjob, seen.namespace, seen.name)
        if stored is not None and stored["metadata"].get("uid") == seen.body["metadata"].get("uid"):
            self.cache.confirmed(key)
            return True
        self._gone(key, seen)
        if stored is not None:
            self.cache.observe_sftjob("ADDED", stored)
        return False

    def _gone(self, key: Key, seen: Observed) -> None:
        log.info("SFTJob %s/%s is gone though no watch said so (a watch gap): forgotten", *key)
        self.cache.observe_sftjob("DELETED", seen.body)

    async def _act(self, action: Action) -> dict[str, Any] | None:
        """One write; returns the Job it created (or found), for the cache."""
        kube = self.kube
        if action.verb == "ensure_claim":
            claim = (action.namespace, action.name)
            if time.monotonic() - self.claims.get(claim, -1e9) > CLAIM_MEMORY:
                await self.call(kube.ensure_claim, action.body)
                self.claims[claim] = time.monotonic()
        elif action.verb == "ensure_config_map":
            await self.call(kube.ensure_config_map, action.body)
        elif action.verb == "ensure_service":
            await self.call(kube.ensure_service, action.body)
        elif action.verb == "ensure_job":
            job = await self.call(kube.ensure_job, action.body)
            log.info("SFTJob %s/%s: Job %s", action.namespace,
                     (action.body or {}).get("metadata", {}).get("labels", {}).get(names.SFTJOB_LABEL),
                     job["metadata"]["name"])
            return job
        elif action.verb == "stop_job":
            await self.call(kube.stop_job, action.namespace, action.name)
        elif action.verb == "suspend_job":
            return await self.call(kube.set_job_suspended, action.namespace, action.name, action.value)
        elif action.verb == "set_workload_active":
            await self.call(kube.set_workload_active, action.namespace, action.name, action.value)
        elif action.verb == "label_job":
            return await self.call(kube.set_job_label, action.namespace, action.name, *action.value)
        else:
            raise ValueError(f"unknown action {action.verb}")
        return None
