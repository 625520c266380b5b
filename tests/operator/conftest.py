import kmock
import pytest

from harness.apiserver import ApiServer
from harness.cluster import Operator


@pytest.fixture
async def apiserver():
    async with ApiServer() as emu, kmock.Server(emu) as server:
        yield emu


@pytest.fixture
async def operator(apiserver, monkeypatch):
    monkeypatch.setenv("SFTOP_K8S_SERVER", str(apiserver.url).rstrip("/"))
    monkeypatch.setenv("SFTOP_PROGRESS_INTERVAL", "1")
    monkeypatch.setenv("SFTOP_RESYNC_INTERVAL", "5")
    monkeypatch.setenv("SFTOP_TRAINER_IMAGE", "ghcr.io/sftop/sftop-trainer:test")
    op = Operator(apiserver)
    await op.start()
    try:
        yield op
    finally:
        await op.stop()
