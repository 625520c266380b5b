"""The shared model cache, filled on a CPU in the Validating phase and read offline by the training pod: against a
Hub stand-in (tests/harness/hub.py) that huggingface_hub's own client downloads from, as it would from the Hub."""

import asyncio
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import pytest

from harness.hub import Hub
from sftop_trainer import taskapi
from sftop_trainer.errors import EXIT_CLASSES, ExitCode

pytestmark = pytest.mark.slow


@pytest.fixture
async def hub(tiny_model):
    async with Hub() as h:
        h.commit = h.add("acme/tiny", tiny_model)
        h.add("acme/gated", tiny_model, gated=True, tokens={"hf_granted"})
        yield h


def config(tmp_path, stem, **model):
    data = tmp_path / "train.jsonl"
    if not data.exists():
        taskapi.write_jsonl(taskapi.rows(24), data)
    path = tmp_path / f"{stem}.json"
    path.write_text(json.dumps({
        "model": {"name": "acme/tiny", "cache": True, **model}, "dataset": {"path": str(data)}, "method": "lora",
        "training": {"maxSteps": 2, "perDeviceTrainBatchSize": 4, "loggingSteps": 1},
        "output": {"dir": str(tmp_path / "out")}, "progress": {"port": 0}}))
    return path


async def trainer(tmp_path, hub, cfg, *args, env=None, limit=None):
    """`sftop-train` as a pod runs it, with the cache at tmp_path/cache: (exit code, termination message)."""
    term = tmp_path / f"term-{cfg.stem}"
    term.unlink(missing_ok=True)
    environ = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "cache"),
               "HF_HUB_DISABLE_XET": "1", "SFTOP_TERMINATION_LOG": str(term), "OMP_NUM_THREADS": "1",
               **(env or {})}
    if "HF_HUB_OFFLINE" not in (env or {}):
        environ.pop("HF_HUB_OFFLINE", None)

    def cap():  # a claim over its quota: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sftop_trainer", "--config", str(cfg), "--no-progress-bar", *args, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, preexec_fn=cap if limit else None)
    out, _ = await proc.communicate()
    message = json.loads(term.read_text()) if term.exists() else {}
    return proc.returncode, message, out.decode()


async def test_validation_fills_the_cache_once_and_training_reads_that_commit_offline(tmp_path, hub):
    code, first, log = await trainer(tmp_path, hub, config(tmp_path, "first"), "--validate")
    assert code == 0, log[-3000:]
    cache = first["plan"]["cache"]
    size = sum(len(d) for d in hub.repos["acme/tiny"].files.values())
    assert cache["revision"] == hub.commit and cache["bytes"] == size == cache["downloadedBytes"] == hub.served["acme/tiny"]
    assert cache["cached"] is False and cache["downloadSeconds"] >= 0
    # a second run of the same model and revision downloads nothing
    code, second, log = await trainer(tmp_path, hub, config(tmp_path, "second"), "--validate")
    assert code == 0, log[-3000:]
    assert second["plan"]["cache"]["downloadedBytes"] == 0 and second["plan"]["cache"]["cached"] is True
    assert hub.served["acme/tiny"] == size
    # the training pod: no network at all, exactly the commit validation resolved (its plan.json)
    cfg = config(tmp_path, "train")  # beside the plan.json validation wrote, which names the commit
    code, result, log = await trainer(tmp_path, hub, cfg, env={"HF_HUB_OFFLINE": "1",
                                                              "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert code == 0, log[-3000:]
    assert result["status"] == "Succeeded" and hub.served["acme/tiny"] == size
    provenance = json.loads((tmp_path / "out" / "adapter" / "provenance.json").read_text())
    assert json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())["revision"] == hub.commit
    assert provenance["baseModel"]["revision"] == hub.commit


@pytest.mark.parametrize("case,model,env,reason,words", [
    ("no such revision", {"revision": "v9"}, {}, ExitCode.REVISION_NOT_FOUND, "has no revision 'v9'"),
    ("gated, no token", {"name": "acme/gated"}, {}, ExitCode.HUB_ACCESS_DENIED, "set spec.hubTokenSecret"),
    ("gated, a token without access", {"name": "acme/gated"}, {"HF_TOKEN": "hf_other"}, ExitCode.HUB_ACCESS_DENIED,
     "has no access to it"),
])
async def test_what_cannot_be_fetched_fails_validation_with_its_reason(tmp_path, hub, case, model, env, reason, words):
    cfg = config(tmp_path, "bad", **model)
    code, message, log = await trainer(tmp_path, hub, cfg, "--validate", env=env)
    assert code == reason and message["reason"] == EXIT_CLASSES[reason].reason, log[-3000:]
    assert words in message["message"]


async def test_a_gated_model_in_the_shared_cache_is_still_refused_to_a_run_without_access(tmp_path, hub):
    """The cache is shared by every namespace: a granted run fills it, and a run without access of its own is refused
    although the files are there."""
    cfg = config(tmp_path, "granted", name="acme/gated")
    code, message, log = await trainer(tmp_path, hub, cfg, "--validate", env={"HF_TOKEN": "hf_granted"})
    assert code == 0 and message["plan"]["cache"]["downloadedBytes"] > 0, log[-3000:]
    for token in ({}, {"HF_TOKEN": "hf_other"}):
        code, message, log = await trainer(tmp_path, hub, config(tmp_path, "other", name="acme/gated"), "--validate",
                                           env=token)
        assert code == ExitCode.HUB_ACCESS_DENIED and message["reason"] == "HubAccessDenied", log[-3000:]


async def test_a_corrupt_file_in_the_cache_is_found_and_fetched_again(tmp_path, hub):
    code, _, log = await trainer(tmp_path, hub, config(tmp_path, "first"), "--validate")
    assert code == 0, log[-3000:]
    weights = next((tmp_path / "cache").glob("models--acme--tiny/snapshots/*/model.safetensors"))
    blob = weights.resolve()
    good = blob.read_bytes()
    blob.write_bytes(good[: len(good) // 3])  # truncated: a copy or a disk gone wrong
    code, message, log = await trainer(tmp_path, hub, config(tmp_path, "again"), "--validate")
    assert code == 0, log[-3000:]
    assert message["plan"]["cache"]["downloadedBytes"] == len(good)
    assert weights.read_bytes() == good


async def test_a_file_corrupted_before_its_commit_was_ever_verified_is_hashed_and_fetched_again(tmp_path, hub):
    """A commit's first fill hashes every file (later fills check sizes and hash what they fetch): same-size
    corruption of a file already in the cache (another tool's copy, a disk fault) is found."""
    code, _, log = await trainer(tmp_path, hub, config(tmp_path, "first"), "--validate")
    assert code == 0, log[-3000:]
    marker, = (tmp_path / "cache").glob("models--acme--tiny/.sftop-verified/*")
    marker.unlink()  # as if the cache had been filled by another tool
    weights = next((tmp_path / "cache").glob("models--acme--tiny/snapshots/*/model.safetensors"))
    good = weights.resolve().read_bytes()
    weights.resolve().write_bytes(bytes(len(good)))
    code, message, log = await trainer(tmp_path, hub, config(tmp_path, "again"), "--validate")
    assert code == 0, log[-3000:]
    assert message["plan"]["cache"]["downloadedBytes"] == len(good) and weights.read_bytes() == good


async def test_a_full_cache_claim_fails_validation_before_any_gpu(tmp_path, hub):
    code, message, log = await trainer(tmp_path, hub, config(tmp_path, "full"), "--validate", limit=64_000)
    assert code == ExitCode.CACHE_FULL and message["reason"] == "CacheFull", log[-3000:]
    assert "frees or grows the cache claim" in message["message"]


async def test_two_runs_filling_the_same_entry_at_once_download_it_once(tmp_path, hub):
    first, second = await asyncio.gather(
        trainer(tmp_path / "a", hub, config(Path(tmp_path / "a"), "a"), "--validate",
                env={"HF_HUB_CACHE": str(tmp_path / "cache")}),
        trainer(tmp_path / "b", hub, config(Path(tmp_path / "b"), "b"), "--validate",
                env={"HF_HUB_CACHE": str(tmp_path / "cache")}))
    assert first[0] == 0 and second[0] == 0, first[2][-2000:] + second[2][-2000:]
    size = sum(len(d) for d in hub.repos["acme/tiny"].files.values())
    assert hub.served["acme/tiny"] == size, "each file crossed the network once"


async def test_a_download_a_killed_pod_left_half_done_is_fetched_again_and_its_leftover_removed(tmp_path, hub):
    """huggingface_hub 2 writes each download to a temporary file of its own process (no cross-process resume): a
    fill killed mid-file leaves `<blob>.<id>.incomplete`; the next fill fetches the file whole and removes the
    leftover once nothing has written to it for an hour, so partial copies do not fill the claim."""
    code, _, log = await trainer(tmp_path, hub, config(tmp_path, "first"), "--validate")
    assert code == 0, log[-3000:]
    weights = next((tmp_path / "cache").glob("models--acme--tiny/snapshots/*/model.safetensors"))
    blob = weights.resolve()
    good = blob.read_bytes()
    weights.unlink()
    blob.unlink()
    leftover = blob.parent / f"{blob.name}.0badc0de.incomplete"
    leftover.write_bytes(good[: len(good) // 2])
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))  # written to two hours ago
    fresh = blob.parent / f"{blob.name}.feedf00d.incomplete"  # another fill's, under way
    fresh.write_bytes(good[:100])
    before = hub.served["acme/tiny"]
    code, message, log = await trainer(tmp_path, hub, config(tmp_path, "again"), "--validate")
    assert code == 0, log[-3000:]
    assert message["plan"]["cache"]["downloadedBytes"] == len(good) == hub.served["acme/tiny"] - before
    assert weights.read_bytes() == good
    assert not leftover.exists() and fresh.exists()


@pytest.mark.parametrize("status", [503, 429])
async def test_a_hub_that_is_down_or_rate_limits_fails_validation_as_retryable(tmp_path, hub, status):
    hub.outage = status
    code, message, log = await trainer(tmp_path, hub, config(tmp_path, "down"), "--validate")
    assert code == ExitCode.HUB_UNAVAILABLE and message["reason"] == "HubUnavailable", log[-3000:]
    assert EXIT_CLASSES[ExitCode.HUB_UNAVAILABLE].retryable and str(status) in message["message"]
