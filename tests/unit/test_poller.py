"""The progress poller against real loopback endpoints: a silent pod is read less and less often, an answering one
at the interval, and the controller hears only of readings that say something new."""

import asyncio
import time

from aiohttp import web

from sftop.poller import Poller, progress_url


async def test_a_silent_endpoint_is_read_with_backoff_and_reported_once():
    held = []

    async def accept(reader, writer):
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reads, changes = [], []
    poller = Poller(port, interval=0.2, on_change=changes.append, timeout=0.1, max_backoff=10.0)
    poller.on_read = lambda outcome: reads.append((time.monotonic(), outcome))
    task = asyncio.create_task(poller.run())
    try:
        poller.track(("ns", "quiet"), "127.0.0.1")
        await asyncio.sleep(3.5)
        reading = poller.readings[("ns", "quiet")]
        assert reading.failures >= 3 and reading.error == "no answer within 0.1s" and reading.data is None
        assert all(outcome == "failed" for _, outcome in reads)
        gaps = [b[0] - a[0] for a, b in zip(reads, reads[1:])]
        assert gaps == sorted(gaps) and gaps[-1] > 2 * gaps[0], f"no backoff: {gaps}"
        assert changes == [("ns", "quiet")], "only the turn to unavailable is news"
    finally:
        task.cancel()
        server.close()
        for w in held:
            w.close()


async def test_an_answering_endpoint_is_read_at_the_interval_and_news_only_is_passed_on():
    step = {"step": 1}

    async def progress(_):
        return web.json_response({**step, "totalSteps": 10})

    app = web.Application()
    app.router.add_get("/progress", progress)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    reads, changes = [], []
    poller = Poller(port, interval=0.2, on_change=changes.append, timeout=1.0)
    poller.on_read = reads.append
    task = asyncio.create_task(poller.run())
    try:
        poller.track(("ns", "talks"), "127.0.0.1")
        await asyncio.sleep(1.0)
        assert len(reads) >= 4 and set(reads) == {"answered"}
        assert changes == [("ns", "talks")], "the same step read again is not news"
        step["step"] = 2
        await asyncio.sleep(0.5)
        assert changes == [("ns", "talks")] * 2 and poller.readings[("ns", "talks")].data["step"] == 2
        poller.forget(("ns", "talks"))
        count = len(reads)
        await asyncio.sleep(0.6)
        assert len(reads) <= count + 1, "a forgotten pod is no longer read"
    finally:
        task.cancel()
        await runner.cleanup()


async def test_a_pod_with_an_ipv6_address_is_read():
    async def progress(_):
        return web.json_response({"step": 3, "totalSteps": 10})

    app = web.Application()
    app.router.add_get("/progress", progress)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "::1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    changes = []
    poller = Poller(port, interval=0.2, on_change=changes.append, timeout=1.0)
    task = asyncio.create_task(poller.run())
    try:
        poller.track(("ns", "v6"), "::1")
        await asyncio.sleep(0.6)
        assert (poller.readings[("ns", "v6")].data or {}).get("step") == 3, poller.readings[("ns", "v6")].error
        assert progress_url("fd00:10:244::7", 8080) == "http://[fd00:10:244::7]:8080/progress"
        assert progress_url("10.0.0.7", 8080) == "http://10.0.0.7:8080/progress"
    finally:
        task.cancel()
        await runner.cleanup()
