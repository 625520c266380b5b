"""A node for end-to-end tests: it plays the Job controller and the kubelet against the emulated API server.

For every Job that should have a pod, it creates the Pod, runs the pod's container as a local process (the real
trainer on the CPU), and reports back what a kubelet and the Job controller would: pod phase, podIP, container
state, exit code and termination message; the Job's active/succeeded/failed counts, startTime, completionTime
and conditions (Complete; Failed with BackoffLimitExceeded or PodFailurePolicy; Suspended), following the Job's
backoffLimit and podFailurePolicy. It honours Job suspend and pod deletion: SIGTERM, then the grace period,
then SIGKILL.

How a pod's world maps onto this machine:
- volumes: a PersistentVolumeClaim is the folder `<root>/volumes/<claimName>`; a ConfigMap volume is written
  to a folder per pod; emptyDirs are folders per pod. Each container path (mountPath) is rewritten to its local
  folder in the container's args, env values and the ConfigMap files it mounts.
- network: each pod gets its own loopback address 127.0.<w>.<n> as its podIP and is told to listen there
  (SFTOP_PROGRESS_HOST), as a pod's network namespace would make it.
- Indexed Jobs (completionMode Indexed): a pod per index, each with the completion-index annotation and label,
  JOB_COMPLETION_INDEX, hostname <job>-<index> and the template's subdomain; a failed index gets a new pod
  under the same index; the Job completes when every index has succeeded. Each index keeps one loopback address
  (127.0.<w + job>.<10 + index>) across its pods, and DNS is a test-only substitution: the pods' stable names
  `<hostname>.<subdomain>.<namespace>.svc` in env values are replaced by those addresses, as the headless Service's
  DNS records would resolve them, each Job's ports moved to a range of its own (all pods share one network
  namespace here: `_resolve`). Pods of index i are bound to node_names[i % len(node_names)].
- env: values may use $(VAR) of earlier variables, and fieldRef reads the pod's metadata, as kubelet does.
- the image: the container runs `python -m sftop_trainer` from this environment, whatever its image says.
- the network: no Hub can be reached (the test process's HF_HUB_OFFLINE reaches the pods) unless `hub_offline` is
  False, when pods reach a Hub stand-in (harness.hub) through the HF_ENDPOINT of their pod spec.
- the termination message: the trainer writes `SFTOP_TERMINATION_LOG`, which points at a file per pod;
  with FallbackToLogsOnError an empty message on failure becomes the log's tail.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock

from harness.apiserver import ApiServer, _now
from sftop.lifecycle import COMPLETION_INDEX, pod_index

JOBS = kmock.resource("batch/v1/jobs")
PODS = kmock.resource("v1/pods")
SECRETS = kmock.resource("v1/secrets")
CONFIGMAPS = kmock.resource("v1/configmaps")
JOB_NUMBERS = itertools.count()  # the address blocks handed to Jobs, across the Nodes of this process


def worker_network() -> int:
    """This test process's share of the loopback addresses: test workers running side by side (pytest-xdist) each
    have addresses of their own, as separate clusters would, so their pods never share an address and port. The
    shares stay inside 127.0.0.0/16 (torch's rendezvous and gloo were only ever shown to work there): third octets
    from 64 * worker on."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return 64 * (int(worker[2:]) % 4) if worker[2:].isdigit() else 0


@dataclass
class Container:
    pod: str
    namespace: str
    job: str
    ip: str
    proc: asyncio.subprocess.Process
    folder: Path
    grace: float
    log_task: asyncio.Task
    stopping: bool = False
    counted: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Node:
    def __init__(self, emu: ApiServer, root: Path, interval: float = 0.1,
                 node_names: tuple[str, ...] = ("harness-node",)):
        self.emu, self.root, self.interval, self.node_names = emu, Path(root), interval, node_names
        self.index_addresses: dict[tuple[str, str, int], str] = {}  # (namespace, job, index) -> its stable address
        self.job_blocks: dict[tuple[str, str], int] = {}
        self.containers: dict[tuple[str, str], Container] = {}
        self.finished: set[tuple[str, str]] = set()  # pods whose container ran to its end
        self.net = worker_network()
        self.addresses = (f"127.0.{self.net}.{i}" for i in itertools.count(2))
        self.names = itertools.count(1)
        self.task: asyncio.Task | None = None
        # The network pods see: by default none (the test process's HF_HUB_OFFLINE reaches them, as no Hub can be
        # reached from here); False lets them reach a Hub stand-in (harness.hub) through the HF_ENDPOINT their pod
        # spec names, as a cluster's pods reach the Hub.
        self.hub_offline = True

    def volume(self, claim: str) -> Path:
        path = self.root / "volumes" / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Node:
        self.task = asyncio.create_task(self._loop(), name="node")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        for c in list(self.containers.values()):
            if c.proc.returncode is None:
                kill_tree(c.proc.pid)
                await c.proc.wait()

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception as e:  # a node keeps running; the test sees what it reported
                print(f"node: {type(e).__name__}: {e}", file=sys.stderr)
            await asyncio.sleep(self.interval)

    def _objects(self, resource: Any) -> list[dict[str, Any]]:
        return [copy.deepcopy(o.raw) for (r, _, _), o in list(self.emu.objects.items()) if r == resource and not o.deleted]

    async def _write(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        call = {"post": self.emu.post, "patch": self.emu.patch}[method]
        resp = await call(path, json=body, headers={"Content-Type": "application/merge-patch+json"})
        return await resp.json() if resp.status < 300 else None

    # ------------------------------------------------------------------------------------- one pass

    async def sync(self) -> None:
        pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in self._objects(PODS)}
        # pods deleted through the API (or by the garbage collector): stop their containers
        for key, c in list(self.containers.items()):
            if key not in pods and not c.stopping and c.proc.returncode is None:
                asyncio.create_task(self._stop(c))
        for key, c in list(self.containers.items()):
            if c.proc.returncode is not None and not c.counted and key in pods:
                await self._report_exit(c, pods[key])
        for job in self._objects(JOBS):
            await self._sync_job(job, [p for p in pods.values() if p["metadata"].get("labels", {}).get("job-name")
                                        == job["metadata"]["name"] and p["metadata"]["namespace"]
                                        == job["metadata"]["namespace"]])

    async def _sync_job(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        meta, spec = job["metadata"], job["spec"]
        status = job.get("status") or {}
        conditions = status.get("conditions") or []
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions):
            return
        path = f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}/status"
        live = [p for p in pods if p.get("status", {}).get("phase") in ("Pending", "Running")]
        if spec.get("suspend"):
            for p in live:
                c = self.containers.get((p["metadata"]["namespace"], p["metadata"]["name"]))
                if c is not None and not c.stopping:
                    asyncio.create_task(self._stop(c, delete_pod=True))
            if not any(c["type"] == "Suspended" and c["status"] == "True" for c in conditions):
                await self._write("patch", path, {"status": {"active": 0, "conditions": conditions + [
                    {"type": "Suspended", "status": "True", "reason": "JobSuspended", "lastTransitionTime": _now()}]}})
            return
        if any(c["type"] == "Suspended" and c["status"] == "True" for c in conditions):
            conditions = [c for c in conditions if c["type"] != "Suspended"]
            await self._write("patch", path, {"status": {"conditions": conditions or None}})
        succeeded = [p for p in pods if p.get("status", {}).get("phase") == "Succeeded"]
        failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed"
                  and not p["metadata"].get("annotations", {}).get("test.sftop.dev/ignored")]
        update: dict[str, Any] = {"active": len(live), "succeeded": len(succeeded), "failed": len(failed)}
        indexed = spec.get("completionMode") == "Indexed"
        completions = int(spec.get("completions") or 1)
        done = {pod_index(p) for p in succeeded} if indexed else set(range(len(succeeded) and completions))
        if len(done) >= completions:
            update.update(completionTime=_now(), active=0, conditions=conditions + [
                {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": _now()}])
        else:
            verdict = self._failure_verdict(spec, failed)
            if verdict is not None:
                update["conditions"] = conditions + [{"type": "Failed", "status": "True", "reason": verdict[0],
                                                      "message": verdict[1], "lastTransitionTime": _now()}]
                for p in live:
                    c = self.containers.get((p["metadata"]["namespace"], p["metadata"]["name"]))
                    if c is not None:
                        asyncio.create_task(self._stop(c, delete_pod=True))
            elif indexed:  # a pod for each index that has neither a live nor a succeeded one
                running = {pod_index(p) for p in live}
                for index in range(completions):
                    if index not in running and index not in done:
                        await self._start_pod(job, index)
                        update["active"] += 1
                update.setdefault("startTime", status.get("startTime") or _now())
            elif not live:
                await self._start_pod(job)
                update["active"] = 1
                update.setdefault("startTime", status.get("startTime") or _now())
        if any(update.get(k) != status.get(k) for k in update):
            await self._write("patch", path, {"status": update})

    @staticmethod
    def _failure_verdict(spec: dict[str, Any], failed: list[dict[str, Any]]) -> tuple[str, str] | None:
        for p in failed:
            code = p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
            for rule in (spec.get("podFailurePolicy") or {}).get("rules", []):
                codes = rule.get("onExitCodes") or {}
                if rule["action"] == "FailJob" and code in codes.get("values", []):
                    return "PodFailurePolicy", f"Container trainer for pod {p['metadata']['name']} failed with exit " \
                                               f"code {code} matching FailJob rule"
        if len(failed) > spec.get("backoffLimit", 6):
            return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        return None

    # ------------------------------------------------------------------------------------------ pods

    def _index_address(self, namespace: str, job: str, index: int) -> str:
        """A Job's pods keep their addresses for the Job's life. Blocks are numbered across every Node of this test
        process, not from 1 for each test: a test that follows another on the same worker never listens where the
        last one's rendezvous was (a port in TIME_WAIT, or a process still exiting)."""
        block = self.job_blocks.setdefault((namespace, job), 1 + next(JOB_NUMBERS) % 62)
        # Same length for indexes 0..89: the addresses sort as the indexes do, like the pods' DNS names.
        return self.index_addresses.setdefault((namespace, job, index), f"127.0.{self.net + block}.{10 + index}")

    async def _start_pod(self, job: dict[str, Any], index: int | None = None) -> None:
        meta, template = job["metadata"], job["spec"]["template"]
        labels = {**template["metadata"].get("labels", {}), "job-name": meta["name"],
                  "batch.kubernetes.io/job-name": meta["name"]}
        annotations = dict(template["metadata"].get("annotations", {}))
        spec = copy.deepcopy(template["spec"])
        if index is None:
            name = f"{meta['name']}-{next(self.names):05d}"
            ip = next(self.addresses)
        else:
            name = f"{meta['name']}-{index}-{next(self.names):05d}"
            ip = self._index_address(meta["namespace"], meta["name"], index)
            labels[COMPLETION_INDEX] = annotations[COMPLETION_INDEX] = str(index)
            spec["hostname"] = f"{meta['name']}-{index}"
        spec["nodeName"] = self.node_names[(index or 0) % len(self.node_names)]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels, "annotations": annotations,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
               "spec": spec, "status": {"phase": "Pending"}}
        created = await self._write("post", f"/api/v1/namespaces/{meta['namespace']}/pods", pod)
        if created is None:
            return
        folder = self.root / "pods" / name
        folder.mkdir(parents=True, exist_ok=True)
        spec = pod["spec"]
        container = spec["containers"][0]
        mounts = self._mounts(meta["namespace"], spec, container, folder)
        offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if not self.hub_offline else ()
        # What the machine gives every container besides its spec's env: paths, the Hub's settings, and the test
        # machine's OpenMP wait policy (tests/conftest.py): its containers share two CPUs with everything else, and
        # a trainer of two threads that spin while they wait used 28 CPU-seconds for 60 steps beside three busy
        # processes, 12 when they sleep.
        env = {**{k: v for k, v in os.environ.items() if k.startswith(("PATH", "HOME", "HF_", "PYTHON", "LANG"))
                  and k not in offline},
               **({"OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]} if "OMP_WAIT_POLICY" in os.environ else {}),
               "SFTOP_TERMINATION_LOG": str(folder / "termination-log"), "SFTOP_PROGRESS_HOST": ip,
               "PYTHONUNBUFFERED": "1"}
        defined: dict[str, str] = {}
        for item in container.get("env", []):
            value = expand(self._env_value(meta["namespace"], item, mounts, pod), defined)
            env[item["name"]] = defined[item["name"]] = self._resolve(value, meta["namespace"], meta["name"], spec)
        env["SFTOP_TERMINATION_LOG"] = str(folder / "termination-log")
        args = [rewrite(a, mounts) for a in container.get("args", [])]
        log = open(folder / "log", "wb")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sftop_trainer", *args,
                                                    stdout=log, stderr=asyncio.subprocess.STDOUT, env=env,
                                                    start_new_session=True)
        log.close()
        c = Container(name, meta["namespace"], meta["name"], ip, proc, folder,
                      float(spec.get("terminationGracePeriodSeconds", 30)),
                      asyncio.create_task(proc.wait()))
        self.containers[(meta["namespace"], name)] = c
        await self._write("patch", f"/api/v1/namespaces/{meta['namespace']}/pods/{name}/status", {"status": {
            "phase": "Running", "podIP": ip, "startTime": _now(),
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "trainer", "ready": True, "restartCount": 0, "image": container["image"],
                                   "state": {"running": {"startedAt": _now()}}}]}})

    def _mounts(self, namespace: str, spec: dict[str, Any], container: dict[str, Any],
                folder: Path) -> dict[str, str]:
        """container path -> local folder, with the volumes' contents in place."""
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        local: dict[str, str] = {}
        for m in container.get("volumeMounts", []):
            v = volumes[m["volumeName"] if "volumeName" in m else m["name"]]
            if "persistentVolumeClaim" in v:
                path = self.volume(v["persistentVolumeClaim"]["claimName"])
                if m.get("subPath"):
                    path = path / m["subPath"]
                    path.mkdir(parents=True, exist_ok=True)
            else:
                path = folder / "volumes" / m["name"]
                path.mkdir(parents=True, exist_ok=True)
            local[m["mountPath"]] = str(path)
        for m in container.get("volumeMounts", []):  # ConfigMap contents, with container paths made local
            v = volumes[m["name"]]
            if "configMap" in v:
                cm = self.emu.objects[CONFIGMAPS, namespace, v["configMap"]["name"]].raw
                items = v["configMap"].get("items") or [{"key": k, "path": k} for k in cm.get("data", {})]
                for item in items:
                    (Path(local[m["mountPath"]]) / item["path"]).write_text(rewrite(cm["data"][item["key"]], local))
        return local

    def _resolve(self, text: str, namespace: str, job: str, spec: dict[str, Any]) -> str:
        """The stable DNS names of an Indexed Job's pods (`<job>-<i>.<subdomain>.<namespace>.svc`) -> their loopback
        addresses: the test-only substitution for the headless Service's records.

        With a port (`<name>:29400`), the port moves too. In a cluster each pod has its own network namespace, so
        every run's rendezvous host listens on 29400; here every pod shares this machine's, and torch's TCPStore
        binds its port on all addresses (INADDR_ANY), so two runs side by side would collide (EADDRINUSE). Each
        Job's address block gets a port of its own, 29400 + its third octet: what each pod was told and what the
        host listens on still agree, as they would through the Service."""
        if not spec.get("subdomain"):
            return text
        domain = re.escape(f"{spec['subdomain']}.{namespace}.svc")
        name = rf"(?<![\w.-]){re.escape(job)}-(\d+)\.{domain}(?::(\d+))?(?![\w.-])"

        def address(m: re.Match) -> str:
            ip = self._index_address(namespace, job, int(m.group(1)))
            return ip if m.group(2) is None else f"{ip}:{int(m.group(2)) + int(ip.split('.')[2])}"

        return re.sub(name, address, text)

    def _env_value(self, namespace: str, item: dict[str, Any], mounts: dict[str, str], pod: dict[str, Any]) -> str:
        if "value" in item:
            return rewrite(item["value"], mounts)
        field_ref = item["valueFrom"].get("fieldRef")
        if field_ref is not None:
            match = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", field_ref["fieldPath"])
            assert match, f"fieldRef {field_ref['fieldPath']} is not emulated"
            return pod["metadata"].get(match.group(1), {}).get(match.group(2), "")
        ref = item["valueFrom"]["secretKeyRef"]
        secret = self.emu.objects[SECRETS, namespace, ref["name"]].raw
        return base64.b64decode(secret["data"][ref["key"]]).decode()

    async def _stop(self, c: Container, delete_pod: bool = False) -> None:
        """What kubelet does to a deleted pod: SIGTERM, the grace period, SIGKILL."""
        c.stopping = True
        if c.proc.returncode is None:
            os.killpg(c.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(c.log_task), c.grace)
            except asyncio.TimeoutError:
                kill_tree(c.proc.pid)
                await c.log_task
        if delete_pod:
            await self.emu.delete(f"/api/v1/namespaces/{c.namespace}/pods/{c.pod}")

    def logged_step(self, pod: str) -> int:
        """The latest training step a pod's trainer logged (its progress lines, as `kubectl logs` shows them): what a
        test waits on to act at a step, sooner than the SFTJob's status says it (the operator writes progress at most
        once per its budget)."""
        log = self.root / "pods" / pod / "log"
        if not log.exists():
            return 0
        return max((e.get("step", 0) for e in events(log) if e.get("event") == "progress"), default=0)

    def kill(self, namespace: str, pod: str) -> None:
        """The container dies at once (a node failure, SIGKILL): no checkpoint."""
        kill_tree(self.containers[(namespace, pod)].proc.pid)

    async def _report_exit(self, c: Container, pod: dict[str, Any]) -> None:
        c.counted = True
        code = c.proc.returncode
        code = 128 - code if code < 0 else code  # killed by a signal: 128 + its number, as a container runtime says
        message_file = c.folder / "termination-log"
        message = message_file.read_text() if message_file.exists() else ""
        if not message and code != 0:  # FallbackToLogsOnError
            message = (c.folder / "log").read_bytes()[-2048:].decode(errors="replace")
        state = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message,
                 "startedAt": pod.get("status", {}).get("startTime"), "finishedAt": _now()}
        status: dict[str, Any] = {"phase": "Succeeded" if code == 0 else "Failed",
                                  "containerStatuses": [{"name": "trainer", "ready": False, "restartCount": 0,
                                                         "state": {"terminated": state}}]}
        path = f"/api/v1/namespaces/{c.namespace}/pods/{c.pod}"
        if self._ignored(pod, code):  # podFailurePolicy Ignore: the Job controller does not count it
            await self._write("patch", path, {"metadata": {"annotations": {"test.sftop.dev/ignored": "true"}}})
        await self._write("patch", f"{path}/status", {"status": status})

    def _ignored(self, pod: dict[str, Any], code: int) -> bool:
        job = self.emu.objects[JOBS, pod["metadata"]["namespace"], pod["metadata"]["labels"]["job-name"]]
        if job.deleted:
            return False
        rules = (job.raw["spec"].get("podFailurePolicy") or {}).get("rules", [])
        return any(r["action"] == "Ignore" and code in (r.get("onExitCodes") or {}).get("values", []) for r in rules)


def kill_tree(pid: int) -> None:
    """SIGKILL a container's process and every process under it, as the end of its PID namespace would (torchrun
    starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def expand(text: str, defined: dict[str, str]) -> str:
    """kubelet's $(VAR) expansion from the container's earlier variables; $$ escapes, unknown names stay."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else defined.get(m.group(1), m.group(0)), text)


def rewrite(text: str, mounts: dict[str, str]) -> str:
    """Container paths -> local paths, in one pass (a replacement is never rewritten again), longest mount
    first, and only where a whole path starts (`/output/x`, not `/outputs`)."""
    if not mounts:
        return text
    alternatives = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w./-])({alternatives})(?=/|\"|'|\s|$)")
    return pattern.sub(lambda m: mounts[m.group(1)], text)


def events(log: Path) -> list[dict[str, Any]]:
    """The JSON events of a container's log, as far as it is written (a line still being written is left out, and so
    is one that another writer of the same stream cut into)."""
    found = []
    for line in log.read_text(errors="replace").split("\n")[:-1]:
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found
