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
from sftop_trainer.errors import CacheCorruptError, CacheFullError, HubAccessError, ModelLoadError, RevisionNotFoundError

log = logging.getLogger(__name__)

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def fill(cfg: TrainerConfig) -> dict[str, Any]:
    """Fill the cache with the model at its revision; what the plan and the status say about it."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
    from huggingface_hub.errors import RevisionNotFoundError as HubRevisionNotFound

    repo, revision = cfg.model.name, cfg.model.revision or "main"
    cache = os.environ.get("HF_HUB_CACHE")
    if not cache:
        raise ModelLoadError("model.cache is fill but HF_HUB_CACHE names no cache folder")
    token = os.environ.get("HF_TOKEN") or None
    api = HfApi(token=token)
    started = time.monotonic()
    try:
        commit = api.repo_info(repo, revision=revision).sha
        _remove_abandoned(Path(cache), repo)
        listing = snapshot_download(repo, revision=commit, cache_dir=cache, token=token, dry_run=True)
        size = sum(f.file_size or 0 for f in listing)
        missing = sum(f.file_size or 0 for f in listing if f.will_download)
        log.info("model cache: %s@%s, %d bytes, %d to download", repo, commit, size, missing)
        snapshot_download(repo, revision=commit, cache_dir=cache, token=token)
        refetched = _verify(api, repo, commit, cache, token)
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
        raise
    except OSError as e:
        if e.errno in FULL:
            raise CacheFullError(f"the model cache at {cache} is full or over its quota while fetching {repo} "
                                 f"({os.strerror(e.errno)}): the platform team frees or grows the cache claim") from e
        raise
    return {"model": repo, "revision": commit, "bytes": size, "downloadedBytes": missing + refetched,
            "downloadSeconds": round(time.monotonic() - started, 1), "cached": missing + refetched == 0}


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
    commit = None
    if plan.exists():
        import json

        commit = (json.loads(plan.read_text()).get("cache") or {}).get("revision")
    if commit is None:
        commit = fill(cfg)["revision"]
    return at(cfg, commit)


def _verify(api: Any, repo: str, commit: str, cache: str, token: str | None) -> int:
    """Check every file of the commit against the Hub's hashes; fetch a bad one again, once. Returns the bytes
    fetched again."""
    from huggingface_hub import snapshot_download

    check = api.verify_repo_checksums(repo, revision=commit, cache_dir=cache, token=token)
    bad = [m["path"] for m in check.mismatches] + list(check.missing_paths)
    if not bad:
        return 0
    log.warning("model cache: %d file(s) of %s@%s do not match the Hub's hashes; fetching them again: %s",
                len(bad), repo, commit, ", ".join(bad[:5]))
    snapshot = Path(check.verified_path)
    again = 0
    for path in bad:
        link = snapshot / path
        if link.is_symlink():
            blob = link.resolve()
            again += blob.stat().st_size if blob.exists() else 0
            blob.unlink(missing_ok=True)
        link.unlink(missing_ok=True)
    snapshot_download(repo, revision=commit, cache_dir=cache, token=token)
    check = api.verify_repo_checksums(repo, revision=commit, cache_dir=cache, token=token)
    still = [m["path"] for m in check.mismatches] + list(check.missing_paths)
    if still:
        raise CacheCorruptError(f"model cache: {', '.join(still[:5])} of {repo}@{commit} still do not match the "
                                f"Hub's hashes after fetching them again")
    return again


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]
