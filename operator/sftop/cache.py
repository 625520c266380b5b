"""The watch cache: what the watches said of SFTJobs, the runs' Jobs and their Pods, the indices reconciles read
them by, and the watch handlers' bookkeeping: which events are stale or our own write's echo (and ignored), and
which SFTJobs a change concerns (and is queued). Lives on the operator's event loop, like everything that reads it.
"""

from __future__ import annotations

import collections
import json
import time
from typing import Any, Callable

from sftop import lifecycle, names
from sftop.workqueue import Key, WorkQueue

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


ECHO_WAIT = 30.0  # seconds an event may be taken to be from before our own write (see WatchCache.before_our_write)


def older(obj: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether `obj` is an older version of `than` by resourceVersion. Kubernetes calls resourceVersions opaque; they
    are etcd revisions, which grow, except across an etcd restore from a backup, which sets them back: so this is
    asked only of the events between our own write and its echo (WatchCache.before_our_write). Anything but two
    integers is never taken to be older."""
    a, b = obj["metadata"].get("resourceVersion"), than["metadata"].get("resourceVersion")
    if (obj["metadata"].get("uid") or "") != (than["metadata"].get("uid") or ""):
        return False
    return isinstance(a, str) and isinstance(b, str) and a.isdigit() and b.isdigit() and int(a) < int(b)


def same_version(obj: dict[str, Any], than: dict[str, Any]) -> bool:
    rv = obj["metadata"].get("resourceVersion")
    return bool(rv) and rv == than["metadata"].get("resourceVersion") and \
        obj["metadata"].get("uid") == than["metadata"].get("uid")


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a Job or Pod: metadata, status, a Job's suspend and completions, a pod's node. A Job's
    pod template or a pod's spec is most of its size and nothing the operator reads again."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    out = {"metadata": meta, "status": obj.get("status") or {}}
    spec = obj.get("spec") or {}
    kept = {k: spec[k] for k in ("suspend", "completions", "nodeName") if k in spec}
    if kept:
        out["spec"] = kept
    return out


class SFTJobCache:
    """The watched SFTJobs by (namespace, name). One whose run has finished (Succeeded or Failed) is kept as its JSON
    text, a tenth of its size as Python objects: a platform's cluster holds thousands of those, read again only
    at a resync or a change. The others are kept as objects. `get` returns
    an object either way; change the cache by setting the whole object again."""

    def __init__(self):
        self._live: dict[Key, dict[str, Any]] = {}
        self._done: dict[Key, bytes] = {}
        self._phase: dict[Key, str | None] = {}

    def __setitem__(self, key: Key, obj: dict[str, Any]) -> None:
        phase = (obj.get("status") or {}).get("phase")
        self._phase[key] = phase
        if phase in lifecycle.TERMINAL:
            self._done[key] = json.dumps(obj, separators=(",", ":")).encode()
            self._live.pop(key, None)
        else:
            self._live[key] = obj
            self._done.pop(key, None)

    def get(self, key: Key, default: Any = None) -> Any:
        if key in self._live:
            return self._live[key]
        text = self._done.get(key)
        return json.loads(text) if text is not None else default

    def __getitem__(self, key: Key) -> dict[str, Any]:
        obj = self.get(key)
        if obj is None:
            raise KeyError(key)
        return obj

    def pop(self, key: Key, default: Any = None) -> Any:
        obj = self.get(key, default)
        for store in (self._live, self._done, self._phase):
            store.pop(key, None)
        return obj

    def __contains__(self, key: object) -> bool:
        return key in self._phase

    def __len__(self) -> int:
        return len(self._phase)

    def phases(self) -> list[tuple[Key, str | None]]:
        """Every SFTJob's phase, without reading the finished ones back."""
        return list(self._phase.items())

    def active(self) -> list[tuple[Key, dict[str, Any]]]:
        """The SFTJobs whose run has not finished."""
        return list(self._live.items())


QUIET = 300.0  # seconds without news of an SFTJob after which it is read again before children are created


class WatchCache:
    """The SFTJobs, Jobs and pods the watches delivered, by (namespace, name). kopf hands every event to
    `observe_sftjob`, `observe_job` or `observe_pod`, which update the cache and queue the SFTJob concerned;
    `forget` is told of a deleted SFTJob, so that what else the operator remembers of it goes too."""

    def __init__(self, queue: WorkQueue, forget: Callable[[Key], None]):
        self.queue = queue
        self.forget = forget
        self.sftjobs = SFTJobCache()
        self.jobs: dict[Key, dict[str, Any]] = {}
        self.pods: dict[Key, dict[str, Any]] = {}
        self.continuing: dict[Key, set[Key]] = collections.defaultdict(set)  # SFTJob -> those warm-starting from it
        self.pods_of_run: dict[tuple, set[Key]] = collections.defaultdict(set)  # (namespace, sftjob, run) -> pods
        # SFTJobs one of whose Jobs was deleted: the garbage collector does so once the SFTJob is gone, and a watch gap
        # can have hidden that deletion from us. Read once from the API server before acting on (sftop.act).
        self.in_doubt: set[Key] = set()
        # Our last status write of each SFTJob (its stored object's metadata) and when, until its watch event arrives.
        self.written: dict[Key, tuple[dict[str, Any], float]] = {}
        # When each SFTJob was last seen (an event, a list, a read), and when the SFTJob watch last listed (kopf
        # hands listed objects over with event type None: at start, and after a 410 Gone). Only a list can hide a
        # deletion (it simply lacks the object); a watch that ran on since we saw an SFTJob would have said.
        self.seen: dict[Key, float] = {}
        self.listed_at = float("-inf")

    def observe_sftjob(self, event_type: str | None, obj: dict[str, Any], requeue: bool = True) -> None:
        key = (obj["metadata"].get("namespace"), obj["metadata"]["name"])
        cached = self.sftjobs.get(key)
        if event_type != "DELETED" and cached is not None and self.before_our_write(key, obj):
            return  # an event from before a write of ours already in the cache (watches lag behind writes)
        if requeue and event_type != "DELETED" and cached is not None and same_version(obj, cached):
            return  # the watch event of our own status write: nothing new to act on
        source = ((((cached or obj).get("spec") or {}).get("warmStart") or {}).get("sftJob"))
        if source:
            self.continuing[(key[0], source)].discard(key)
        if event_type == "DELETED":
            self.sftjobs.pop(key, None)
            self.in_doubt.discard(key)
            self.written.pop(key, None)
            self.seen.pop(key, None)
            self.queue.forget(key)
            self.forget(key)
            return
        obj["metadata"].pop("managedFields", None)
        (obj["metadata"].get("annotations") or {}).pop(LAST_APPLIED, None)  # a copy of the spec, as a string
        self.sftjobs[key] = obj
        self.seen[key] = time.monotonic()
        if event_type is None:
            self.listed_at = self.seen[key]
        source = ((obj.get("spec") or {}).get("warmStart") or {}).get("sftJob")
        if source and source != key[1]:
            self.continuing[(key[0], source)].add(key)
        if not requeue:
            return
        # A spec the operator has not acted on yet (a new SFTJob, a changed one) goes before routine looks.
        self.queue.add(key, urgent=(obj.get("status") or {}).get("observedGeneration") != obj["metadata"].get(
            "generation"))
        # An SFTJob that waits to continue this one's adapter looks again as soon as this one changes.
        for other in self.continuing.get(key, ()):
            if ((self.sftjobs.get(other) or {}).get("status") or {}).get("phase") in (None, "Pending"):
                self.queue.add(other)

    def may_be_gone(self, key: Key) -> bool:
        """Whether the SFTJob may have been deleted without a watch event: the watch listed since it was last seen
        (a relist after 410 Gone omits what was deleted meanwhile; the listing at start is one too), or it was last
        heard of more than QUIET seconds ago (a relist that found nothing at all hands kopf no object to tell us
        of it by)."""
        seen = self.seen.get(key, float("-inf"))
        return self.listed_at >= seen or time.monotonic() - seen > QUIET

    def confirmed(self, key: Key) -> None:
        """The SFTJob was just read from the API server: seen now."""
        self.seen[key] = time.monotonic()

    def wrote(self, stored: dict[str, Any], requeue: bool) -> None:
        """Our own status write's response: into the cache at once (its watch event comes later), and the events
        still on their way from before it are ignored until it arrives."""
        meta = stored["metadata"]
        self.observe_sftjob("MODIFIED", stored, requeue=requeue)
        self.written[(meta.get("namespace"), meta["name"])] = (
            {"metadata": {"resourceVersion": meta.get("resourceVersion"), "uid": meta.get("uid")}}, time.monotonic())

    def before_our_write(self, key: Key, obj: dict[str, Any]) -> bool:
        """Whether a watch event is from before our last write of the SFTJob, whose response the cache holds: only
        while that write's own event has not arrived, and for at most ECHO_WAIT seconds. resourceVersions are
        compared as numbers only then, so after an etcd restore (which sets them back) no event is dropped for
        being "older" than what the cache held before it."""
        written = self.written.get(key)
        if written is None:
            return False
        ours, since = written
        if time.monotonic() - since > ECHO_WAIT or not older(obj, ours):
            del self.written[key]  # our write's echo (dropped next, as the cached version), or anything newer
            return False
        return True

    def _observe_child(self, cache: dict[Key, dict[str, Any]], event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace"), meta["name"])
        if event_type == "DELETED":
            cache.pop(key, None)
        else:
            cache[key] = slim(obj)
        parent = (meta.get("labels") or {}).get(names.SFTJOB_LABEL)
        if parent:
            self.queue.add((meta.get("namespace"), parent))

    def observe_job(self, event_type: str | None, obj: dict[str, Any]) -> None:
        parent = (obj["metadata"].get("labels") or {}).get(names.SFTJOB_LABEL)
        if event_type == "DELETED" and parent:
            self.in_doubt.add((obj["metadata"].get("namespace"), parent))
        self._observe_child(self.jobs, event_type, obj)

    def observe_pod(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        run = (meta.get("namespace"), labels.get(names.SFTJOB_LABEL), labels.get(names.RUN_LABEL))
        if event_type == "DELETED":
            self.pods_of_run[run].discard((meta.get("namespace"), meta["name"]))
            if not self.pods_of_run[run]:
                del self.pods_of_run[run]
        else:
            self.pods_of_run[run].add((meta.get("namespace"), meta["name"]))
        self._observe_child(self.pods, event_type, obj)

    def run_pods(self, namespace: str, name: str, rid: str, component: str) -> list[dict[str, Any]]:
        """A run's cached pods of one component (trainer or validation)."""
        cached = (self.pods.get(k) for k in self.pods_of_run.get((namespace, name, rid), ()))
        return [p for p in cached if p is not None
                and (p["metadata"].get("labels") or {}).get(names.COMPONENT_LABEL, "trainer") == component]
