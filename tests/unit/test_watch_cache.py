"""The watch cache's bookkeeping of SFTJob events: what is dropped as our own write's past, what always gets through."""

from sftop.cache import WatchCache
from sftop.workqueue import WorkQueue


def sftjob(rv, generation=1, observed=1, uid="u1"):
    return {"metadata": {"name": "chat", "namespace": "ns", "uid": uid, "resourceVersion": str(rv),
                         "generation": generation},
            "spec": {"training": {"maxSteps": generation}}, "status": {"observedGeneration": observed}}


def cache():
    return WatchCache(WorkQueue(), lambda key: None)


def test_events_from_before_our_write_are_dropped_until_its_echo():
    watch = cache()
    watch.observe_sftjob("ADDED", sftjob(10))
    watch.wrote(sftjob(12), requeue=False)
    watch.observe_sftjob("MODIFIED", sftjob(11))  # from before our write: the cache keeps what the write returned
    assert watch.sftjobs[("ns", "chat")]["metadata"]["resourceVersion"] == "12"
    watch.observe_sftjob("MODIFIED", sftjob(12))  # its echo
    assert watch.sftjobs[("ns", "chat")]["metadata"]["resourceVersion"] == "12" and not watch.written


def test_after_an_etcd_restore_lower_resource_versions_are_taken_as_news():
    watch = cache()
    watch.observe_sftjob("ADDED", sftjob(5000))
    watch.wrote(sftjob(5001), requeue=False)
    watch.observe_sftjob("MODIFIED", sftjob(5001))
    # etcd restored from an older backup: the same SFTJob, resourceVersions lower than any the cache held
    watch.observe_sftjob(None, sftjob(4000, generation=2))
    assert watch.sftjobs[("ns", "chat")]["metadata"]["generation"] == 2
    watch.observe_sftjob("MODIFIED", sftjob(4001, generation=3))
    assert watch.sftjobs[("ns", "chat")]["metadata"]["generation"] == 3


def test_children_wait_for_a_read_only_when_a_deletion_could_have_been_missed(monkeypatch):
    """A watch that ran on since an SFTJob was last seen would have said it was deleted; a list since then (a
    relist after 410 Gone) or a long silence could hide it: only then is it read before children are created."""
    from sftop import cache as cache_mod

    clock = [1000.0]
    monkeypatch.setattr(cache_mod.time, "monotonic", lambda: clock[0])
    cache = cache_mod.WatchCache(WorkQueue(), forget=lambda key: None)
    listed = {"metadata": {"name": "listed", "namespace": "a", "uid": "1", "generation": 1, "resourceVersion": "1"}}
    added = {"metadata": {"name": "added", "namespace": "a", "uid": "2", "generation": 1, "resourceVersion": "2"}}
    cache.observe_sftjob(None, listed)  # from the listing at start
    clock[0] += 1
    cache.observe_sftjob("ADDED", added)  # from the watch after it
    assert cache.may_be_gone(("a", "listed")) and not cache.may_be_gone(("a", "added"))
    cache.confirmed(("a", "listed"))
    assert not cache.may_be_gone(("a", "listed"))
    clock[0] += 1
    cache.observe_sftjob(None, {**listed, "metadata": {**listed["metadata"], "resourceVersion": "3"}})  # a relist
    assert cache.may_be_gone(("a", "added")), "a relist since it was seen could have left it out"
    cache.confirmed(("a", "added"))
    clock[0] += cache_mod.QUIET + 1
    assert cache.may_be_gone(("a", "added")), "a relist that found nothing says nothing"
