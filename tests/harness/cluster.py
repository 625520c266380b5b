"""Test helpers around the API server: run the operator in-process, apply SFTJobs, and play the Job
controller and kubelet by writing Job and Pod status the way they do."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from typing import Any, Callable

import kmock
import kopf

from harness.apiserver import SFTJOBS, ApiServer

NS = "team-a"


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
                   explain: Callable[[], Any] | None = None) -> Any:
    """Poll `predicate` until it returns something true; on timeout, fail with what `explain` says."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (KeyError, ValueError, TypeError, IndexError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"; {explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {getattr(predicate, '__name__', predicate)}"
                                 f"{detail}")
        await asyncio.sleep(interval)


def obj(emu: ApiServer, resource: str, name: str, namespace: str = NS) -> dict[str, Any] | None:
    key = (kmock.resource(resource), namespace, name)
    if key not in emu.objects or emu.objects[key].deleted:
        return None
    return copy.deepcopy(emu.objects[key].raw)


def objs(emu: ApiServer, resource: str, namespace: str = NS) -> list[dict[str, Any]]:
    res = kmock.resource(resource)
    return [copy.deepcopy(o.raw) for (r, ns, _), o in list(emu.objects.items())
            if r == res and ns == namespace and not o.deleted]


def requests(emu: ApiServer, method: str, path_part: str) -> list[Any]:
    return [r for r in emu.log if r.method.value.upper() == method.upper() and path_part in r.url.path]


def sftjob(name: str = "chat", **spec: Any) -> dict[str, Any]:
    base = {"model": {"hub": {"id": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "7ae557604adf67be50417f59c2c2f167def9a775"}},
            "dataset": {"inline": [{"prompt": "hi", "completion": "hello"}]},
            "training": {"maxSteps": 10},
            "output": {"pvc": {"claimName": "adapters", "create": {"size": "1Gi"}}},
            # These tests play the training Job's controller by hand; tests/operator/test_validation.py plays the
            # validation Job's.
            "validation": {"enabled": False}}
    base.update(spec)
    return {"apiVersion": "sftop.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name, "namespace": NS},
            "spec": base}


class Operator:
    """The real operator (kopf + sftop.handlers) against the emulated API server, in a thread with its own event
    loop, as in its own process: kopf treats every task of its loop as its own and cancels them all on exit."""

    def __init__(self, emu: ApiServer):
        self.emu = emu
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.thread: threading.Thread | None = None

    def _main(self, ready: threading.Event) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(kopf.operator(
            registry=kopf.get_default_registry(), settings=kopf.OperatorSettings(), clusterwide=True,
            standalone=True, ready_flag=ready))
        try:
            self.loop.run_until_complete(self.task)
        except BaseException:  # noqa: B036 - cancelled on purpose, or crashed: either way the operator is gone
            pass
        finally:
            self.loop.close()

    async def start(self) -> None:
        from sftop import handlers
        from sftop.settings import Settings

        handlers.STATE.clear()
        handlers.STATE["settings"] = Settings.from_env()
        ready = threading.Event()
        since = len(self.emu.log)
        self.thread = threading.Thread(target=self._main, args=(ready,), name="operator", daemon=True)
        self.thread.start()
        assert await asyncio.to_thread(ready.wait, 15), "the operator did not start"
        # kopf's ready flag fires before its watches open: wait for them, so tests can count requests.
        for plural in ("sftjobs", "jobs", "pods"):
            await wait_for(lambda: any(r.params.get("watch") == "true" and r.url.path.endswith("/" + plural)
                                       for r in self.emu.log[since:]), 15)

    @property
    def controller(self):
        from sftop import handlers

        return handlers.STATE["controller"]

    def enqueue(self, namespace: str, name: str) -> None:
        """Ask the operator to reconcile an SFTJob now, as a re-delivered event would."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.controller.queue.add, (namespace, name))

    async def stop(self) -> None:
        """Stop it as a crash or SIGKILL would: no cleanup handlers run."""
        if self.thread is None:
            return
        if self.loop is not None and self.task is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.task.cancel)
        await asyncio.to_thread(self.thread.join, 30)
        assert not self.thread.is_alive(), "the operator did not stop"
        self.thread = None


async def kubectl(emu: ApiServer, *args: str, namespace: str = NS, timeout: float | None = None) -> str:
    """kubectl against the emulated API server, in the tests' namespace unless told another: its output."""
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--server", str(emu.url).rstrip("/"), "--namespace", namespace, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
    return out.decode()


async def apply(emu: ApiServer, manifest: dict[str, Any]) -> Any:
    ns = manifest["metadata"].get("namespace", NS)
    return await emu.post(f"/apis/sftop.dev/v1alpha1/namespaces/{ns}/sftjobs", json=manifest)


async def patch(emu: ApiServer, path: str, body: dict[str, Any]) -> Any:
    resp = await emu.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status < 300, await resp.text()
    return await resp.json()


def status_of(emu: ApiServer, name: str = "chat") -> dict[str, Any]:
    return (obj(emu, SFTJOBS, name) or {}).get("status") or {}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


# ------------------------------------------------------------------ the Job controller and kubelet, by hand


async def make_pod(emu: ApiServer, job: dict[str, Any], suffix: str = "a1b2c") -> dict[str, Any]:
    """A pod for `job`, as the Job controller creates it (labels, owner reference), not yet scheduled."""
    template = job["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{job['metadata']['name']}-{suffix}", "namespace": job["metadata"]["namespace"],
                        "labels": {**template["metadata"]["labels"], "job-name": job["metadata"]["name"],
                                   "batch.kubernetes.io/job-name": job["metadata"]["name"]},
                        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                             "uid": job["metadata"]["uid"], "controller": True}]},
           "spec": copy.deepcopy(template["spec"]),
           "status": {"phase": "Pending"}}
    resp = await emu.post(f"/api/v1/namespaces/{job['metadata']['namespace']}/pods", json=pod)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def pod_status(emu: ApiServer, pod: dict[str, Any], status: dict[str, Any]) -> None:
    meta = pod["metadata"]
    await patch(emu, f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", {"status": status})


async def job_status(emu: ApiServer, job: dict[str, Any], status: dict[str, Any]) -> None:
    meta = job["metadata"]
    await patch(emu, f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}/status", {"status": status})


def running(ip: str = "127.0.0.1") -> dict[str, Any]:
    return {"phase": "Running", "podIP": ip,
            "containerStatuses": [{"name": "trainer", "ready": True, "state": {"running": {"startedAt": "2026-11-22T00:00:00Z"}}}]}


def terminated(code: int, message: str = "", reason: str | None = None) -> dict[str, Any]:
    state = {"exitCode": code, "message": message, "reason": reason or ("Completed" if code == 0 else "Error"),
             "startedAt": "2026-11-22T10:00:00Z", "finishedAt": "2026-11-22T10:05:00Z"}
    return {"phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": "trainer", "ready": False, "state": {"terminated": state}}]}


# A validation Job's plan, as the trainer writes it into its termination message.
PLAN = {"rows": {"read": 12, "train": 10, "eval": 1, "skipped": 1},
        "skipped": [{"reason": "no assistant turn", "count": 1, "rows": [7]}],
        "samples": 10, "overlong": 0, "overlongAction": "truncate", "longestSample": 80, "tokens": 700,
        "trainedTokens": 300, "loss": "assistant turns", "stepsPerEpoch": 3, "totalSteps": 10, "effectiveBatch": 4,
        "gpus": 1, "method": "lora", "trainableParameters": 1000, "totalParameters": 50000,
        "memory": {"perGpu": 12.5, "parts": {"weights": 10.0, "activations": 1.9, "cuda": 0.6},
                   "assumptions": ["frozen weights in bfloat16"]}}


async def finish(emu: ApiServer, job: dict[str, Any], code: int, message: dict[str, Any]) -> None:
    """A pod of `job` runs to `code` with `message`, and the Job completes or fails: the Job controller's part."""
    pod = await make_pod(emu, job)
    await pod_status(emu, pod, terminated(code, json.dumps(message)))
    if code == 0:
        await job_status(emu, job, {"succeeded": 1, "completionTime": "2026-11-22T10:01:00Z", "conditions": [
            {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-22T10:01:00Z"}]})
    else:
        await job_status(emu, job, {"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code",
             "lastTransitionTime": "2026-11-22T10:01:00Z"}]})


async def oom_killed(emu: ApiServer, job: dict[str, Any]) -> None:
    """The Job's pod is OOMKilled, and the Job fails once its backoff limit is reached."""
    pod = await make_pod(emu, job)
    await pod_status(emu, pod, terminated(137, reason="OOMKilled"))
    await job_status(emu, job, {"failed": 4, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit", "lastTransitionTime": "2026-11-22T10:05:00Z"}]})
