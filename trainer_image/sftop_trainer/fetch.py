"""The shared model cache: a Hub model's files fetched on a CPU, before any GPU is asked for.

In the Validating phase (`model.cache`, `--validate`) the pod mounts the platform's cache claim at HF_HUB_CACHE, in the
Hugging Face cache layout (`models--<org>--<name>/blobs`, `snapshots/<commit>`): the revision is resolved to its
commit, what the cache lacks is downloaded (huggingface_hub locks each file, so two runs filling the same entry at
once download it once; a file a killed pod left half-downloaded is fetched again whole, and its partial copy removed
once abandoned: `_remove_abandoned`), and every file of the commit is checked against the Hub's
hashes (sha256 for weights, the git blob hash for the rest). A file that does not match is removed and fetched
again, once. The training pod then mounts the claim read-only and loads that exact commit offline (the commit from
the plan.json validation wrote, HF_HUB_OFFLINE=1); a run without a plan (validation off) fills the cache itself.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Any

from sftop_trainer.config import TrainerConfig
from sftop_trainer.errors import (CacheCorruptError, CacheFullError, CacheNotWritableError, HubAccessError,
                                  HubUnavailableError, ModelLoadError, RevisionNotFoundError)

log = logging.getLogger(__name__)

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
# What a run never loads: other frameworks' weights, the original checkpoints some repositories carry beside the
# transformers ones (Llama's original/*.pth double an 8B or 70B download), exports.
IGNORED = ["original/*", "*.pth", "*.gguf", "*.onnx", "*.onnx_data", "onnx/*", "*.msgpack", "flax_model*", "*.h5",
           "tf_model*", "*.tflite", "*.ot", "coreml/*", "openvino/*", "*.mlmodel"]
VERIFIED = ".sftop-verified"  # <repo folder>/.sftop-verified/<commit>: every file of the commit matched once


def fill(cfg: TrainerConfig) -> dict[str, Any]:
    """Fill the cache with the model at its revision; what the plan and the status say about it."""
    import httpx2  # huggingface_hub 2's HTTP client
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
    from huggingface_hub.errors import RevisionNotFoundError as HubRevisionNotFound

    repo, revision = cfg.model.name, cfg.model.revision or "main"
    cache = os.environ.get("HF_HUB_CACHE")
    if not cache:
        raise ModelLoadError("model.cache is set but HF_HUB_CACHE names no cache folder")
    token = os.environ.get("HF_TOKEN") or None
    api = HfApi(token=token)
    started = time.monotonic()
    try:
        info = api.repo_info(repo, revision=revision)
        commit = info.sha
        if getattr(info, "gated", False):
            # the cache holds the files for every namespace that shares it: this run must have access of its own
            api.auth_check(repo, token=token)
        _remove_abandoned(Path(cache), repo)
        listing = snapshot_download(repo, revision=commit, cache_dir=cache, token=token, dry_run=True,
                                    ignore_patterns=ignored(info))
        wanted = {f.filename for f in listing}
        # the Hub's sizes (a dry run reports a cached file's own size, however short)
        sizes = {e.path: e.size for e in api.list_repo_tree(repo, revision=commit, recursive=True, token=token)
                 if e.path in wanted and hasattr(e, "size")}
        size = sum(sizes.values())
        fetched = [f.filename for f in listing if f.will_download]
        missing = sum(sizes.get(f, 0) for f in fetched)
        log.info("model cache: %s@%s, %d bytes, %d to download", repo, commit, size, missing)
        snapshot_download(repo, revision=commit, cache_dir=cache, token=token, ignore_patterns=ignored(info))
        refetched = _verify(api, repo, commit, cache, token, sizes, fetched, ignored(info))
    except HubRevisionNotFound as e:
        raise RevisionNotFoundError(f"model {repo} has no revision {revision!r} on the Hub (a branch, tag or commit "
                                    f"of the repository): {_first_line(e)}") from e
    except GatedRepoError as e:
        raise HubAccessError(
            f"model {repo} is gated: " + ("the token in spec.hubTokenSecret has no access to it; accept its "
                                          "conditions on the Hub with that account" if token else
                                          "set spec.hubTokenSecret to a Secret holding a Hub token with access")
            + f" ({_first_line(e)})") from e
    except RepositoryNotFoundError as e:
        raise HubAccessError(f"model {repo} does not exist on the Hub, or is private and " +
                             ("the token has no access to it" if token else "no token was given (spec.hubTokenSecret)")
                             ) from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubAccessError(f"the Hub refused model {repo} ({status}): {_first_line(e)}") from e
        if status == 429 or (status or 0) >= 500:
            raise HubUnavailableError(f"the Hub answered {status} for model {repo}: {_first_line(e)}") from e
        raise
    except (httpx2.TransportError, ConnectionError) as e:
        raise HubUnavailableError(f"the Hub could not be reached for model {repo} ({type(e).__name__}: "
                                  f"{_first_line(e)}); a mirror: the operator's SFTOP_HF_ENDPOINT") from e
    except OSError as e:
        if e.errno in FULL:
            raise CacheFullError(f"the model cache at {cache} is full or over its quota while fetching {repo} "
                                 f"({os.strerror(e.errno)}): the platform team frees or grows the cache claim") from e
        if e.errno in NOT_WRITABLE:
            raise CacheNotWritableError(f"the model cache at {cache} cannot be written ({os.strerror(e.errno)}): "
                                        f"its claim must be writable by uid and gid 1000 (docs/admin.md)") from e
        raise
    return {"model": repo, "revision": commit, "bytes": size, "downloadedBytes": missing + refetched,
            "downloadSeconds": round(time.monotonic() - started, 1), "cached": missing + refetched == 0}


def ignored(info: Any) -> list[str]:
    """The files a run does not need: IGNORED, and PyTorch pickles where safetensors exist."""
    names = [s.rfilename for s in (getattr(info, "siblings", None) or [])]
    extra = ["*.bin", "*.pt"] if any(n.endswith(".safetensors") for n in names) else []
    return IGNORED + extra


COMMIT_VARIABLE = "SFTOP_MODEL_COMMIT"
ABANDONED = 3600  # seconds without a write after which a partial download is a killed pod's


def _remove_abandoned(cache: Path, repo: str) -> None:
    """Partial downloads a killed pod left behind. huggingface_hub 2 downloads each file to a temporary file of its
    own process (a shared `.incomplete` file corrupted caches on filesystems whose locks do not hold: NFS, Lustre,
    GPFS), so a fill that was killed is not resumed: its file is fetched again whole, and its partial copy would
    only fill the claim. One not written to for an hour is removed."""
    blobs = cache / f"models--{repo.replace('/', '--')}" / "blobs"
    now = time.time()
    for partial in blobs.glob("*.incomplete") if blobs.is_dir() else ():
        try:
            if now - partial.stat().st_mtime > ABANDONED:
                partial.unlink()
                log.info("model cache: removed an abandoned partial download %s", partial.name)
        except FileNotFoundError:  # another fill finished or removed it
            pass


def at(cfg: TrainerConfig, commit: str) -> TrainerConfig:
    """The config loading the model at exactly `commit`."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"resolved_revision": commit})})


def for_training(cfg: TrainerConfig) -> TrainerConfig:
    """A cached model at the commit the Validating phase resolved (its plan.json beside the run's output), or,
    without one, filled here first."""
    if not cfg.model.cache or cfg.model.resolved_revision:
        return cfg
    plan = Path(cfg.output.dir) / "plan.json"
    commit = os.environ.get(COMMIT_VARIABLE)  # filled by this pod's launcher, once for all its processes
    if commit is None and plan.exists():
        import json

        commit = (json.loads(plan.read_text()).get("cache") or {}).get("revision")
    if commit is None:
        commit = fill(cfg)["revision"]
    return at(cfg, commit)


def _verify(api: Any, repo: str, commit: str, cache: str, token: str | None, sizes: dict[str, int | None],
            fetched: list[str], ignore: list[str]) -> int:
    """Check the commit's files against the Hub's hashes; fetch a bad one again, once. A commit verified whole
    before (its marker) has only the files fetched now hashed, and every file's size checked (a partial or
    truncated file); the first fill hashes every file. Returns the bytes fetched again."""
    from huggingface_hub import snapshot_download

    marker = Path(cache) / f"models--{repo.replace('/', '--')}" / VERIFIED / commit
    snapshot = Path(cache) / f"models--{repo.replace('/', '--')}" / "snapshots" / commit

    def bad_files() -> list[str]:
        if marker.exists():
            wrong = [p for p, n in sizes.items() if n is not None and
                     (not (snapshot / p).exists() or (snapshot / p).stat().st_size != n)]
            suspects = set(wrong) | set(fetched)
            if not suspects:
                return []
        check = api.verify_repo_checksums(repo, revision=commit, cache_dir=cache, token=token)
        found = [m["path"] for m in check.mismatches] + list(check.missing_paths)
        return [p for p in found if p in sizes]  # the files ignored on purpose are not missing

    bad = bad_files()
    if not bad:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return 0
    log.warning("model cache: %d file(s) of %s@%s do not match the Hub's hashes; fetching them again: %s",
                len(bad), repo, commit, ", ".join(bad[:5]))
    again = 0
    for path in bad:
        link = snapshot / path
        if link.is_symlink():
            blob = link.resolve()
            again += sizes.get(path) or 0
            blob.unlink(missing_ok=True)
        link.unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    snapshot_download(repo, revision=commit, cache_dir=cache, token=token, ignore_patterns=ignore)
    fetched = list(set(fetched) | set(bad))
    still = bad_files()
    if still:
        raise CacheCorruptError(f"model cache: {', '.join(still[:5])} of {repo}@{commit} still do not match the "
                                f"Hub's hashes after fetching them again")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return again


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]
