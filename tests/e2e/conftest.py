import shutil
import socket

import pytest

from harness.cluster import Operator
from harness.hub import Hub
from harness.node import Node
from sftop_trainer import taskapi


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def cluster(apiserver, tmp_path, tiny_model, monkeypatch, request):
    """An API server, a node that runs trainer pods as local processes, and the operator: one machine's
    cluster. The claims `models` (the tiny model at tiny/) and `data` (tasks.jsonl, and held-out rows in
    tasks-test.jsonl) exist. Parametrized indirectly with {"policy": NAME}, the operator enforces that SFTPolicy; with
    {"hub": True}, a Hub stand-in serves models to the pods (`operator.hub`)."""
    params = getattr(request, "param", {})
    if params.get("policy"):
        monkeypatch.setenv("SFTOP_POLICY", params["policy"])
    hub = None
    if params.get("hub"):  # a Hub stand-in the pods reach through the operator's SFTOP_HF_ENDPOINT (harness.hub)
        hub = await Hub().__aenter__()
        monkeypatch.setenv("SFTOP_HF_ENDPOINT", hub.url)
    monkeypatch.setenv("SFTOP_K8S_SERVER", str(apiserver.url).rstrip("/"))
    monkeypatch.setenv("SFTOP_PROGRESS_INTERVAL", "1")
    monkeypatch.setenv("SFTOP_STATUS_WRITES_PER_MINUTE", "60")  # fast-forwarded like the interval: runs take seconds
    monkeypatch.setenv("SFTOP_PROGRESS_PORT", str(free_port()))
    monkeypatch.setenv("SFTOP_RESYNC_INTERVAL", "10")
    monkeypatch.setenv("SFTOP_TERMINATION_GRACE_SECONDS", "30")
    monkeypatch.setenv("SFTOP_METRICS_PORT", "0")
    # Pods ask for 1 CPU, as they would to fit this 2-CPU node side by side; their thread variables follow.
    monkeypatch.setenv("SFTOP_DEFAULT_CPU", "1")
    monkeypatch.setenv("SFTOP_VALIDATION_CPU", "1")
    node = Node(apiserver, tmp_path)
    shutil.copytree(tiny_model, node.volume("models") / "tiny")
    train, test = taskapi.split(96, 8)
    taskapi.write_jsonl(train, node.volume("data") / "tasks.jsonl")
    taskapi.write_jsonl(test, node.volume("data") / "tasks-test.jsonl")
    # the shared inputs, as a platform provides them to runs on several nodes: readable from many nodes at once
    for claim in ("models", "data"):
        await apiserver.post("/api/v1/namespaces/team-a/persistentvolumeclaims", json={
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}})
    operator = Operator(apiserver)
    operator.hub = hub
    async with node:
        await operator.start()
        try:
            yield apiserver, node, operator
        finally:
            await operator.stop()
            if hub is not None:
                await hub.__aexit__(None, None, None)
