"""Exit codes of `sftop-train`: the class of failure, for the operator and for humans.

The operator turns each code into a condition reason on the SFTJob and into the Job's `podFailurePolicy`:
a user error fails the Job at once (a retry would fail the same way), a disruption is retried without
counting against `backoffLimit`, anything else is retried up to `backoffLimit`.

This module is imported by the operator, so it must stay free of heavy imports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    OK = 0
    UNEXPECTED = 1
    INVALID_CONFIG = 64
    INVALID_DATA = 65
    MODEL_LOAD_FAILED = 66
    OUT_OF_MEMORY = 67
    LOSS_NOT_FINITE = 68
    INTERRUPTED = 69
    LOSS_SPIKE = 70
    PEER_LOST = 71
    GPU_UNAVAILABLE = 72
    DATA_QUALITY = 73
    REVISION_NOT_FOUND = 74
    HUB_ACCESS_DENIED = 75
    CACHE_FULL = 76
    CACHE_CORRUPT = 77
    CACHE_NOT_WRITABLE = 78
    HUB_UNAVAILABLE = 79


@dataclass(frozen=True)
class ExitClass:
    code: ExitCode
    reason: str  # the condition reason the operator writes to the SFTJob's status
    retryable: bool  # whether running the same config again can help
    counts_as_failure: bool  # whether a retry counts against the Job's backoffLimit
    meaning: str


EXIT_CLASSES: dict[int, ExitClass] = {
    c.code: c
    for c in (
        ExitClass(ExitCode.UNEXPECTED, "TrainerError", True, True,
                  "an unexpected error; the message and the pod's log have the traceback"),
        ExitClass(ExitCode.INVALID_CONFIG, "InvalidConfig", False, True,
                  "the trainer config is invalid (a field, a passthrough SFTConfig key, the output folder)"),
        ExitClass(ExitCode.INVALID_DATA, "InvalidData", False, True,
                  "the dataset cannot be read or has no usable rows (format, malformed line, empty after filtering)"),
        ExitClass(ExitCode.MODEL_LOAD_FAILED, "ModelLoadFailed", False, True,
                  "the base model or its tokenizer cannot be loaded (id, revision, files, chat template, "
                  "target modules)"),
        ExitClass(ExitCode.OUT_OF_MEMORY, "CUDAOutOfMemory", False, True,
                  "CUDA ran out of memory; the message gives the plan's estimate, the GPU's memory, the peak reached "
                  "and what would fit (lower the batch size or maxLength, training.autoBatchSize, or more or larger "
                  "GPUs)"),
        ExitClass(ExitCode.LOSS_NOT_FINITE, "LossNotFinite", False, True,
                  "the loss became NaN or infinite; lower the learning rate or check the data"),
        ExitClass(ExitCode.LOSS_SPIKE, "LossSpike", False, True,
                  "the training loss spiked and stayed high (training.lossWatchdog); the earlier checkpoints are kept"),
        ExitClass(ExitCode.INTERRUPTED, "Interrupted", True, False,
                  "stopped by SIGTERM (preemption, eviction, suspend) after saving a checkpoint; a retry resumes"),
        ExitClass(ExitCode.PEER_LOST, "PeerLost", True, False,
                  "another pod of a multi-node run failed or was lost, and this pod stopped with it; the Job restarts "
                  "it and the group resumes from the latest checkpoint (the failed pod's own failure is what counts)"),
        ExitClass(ExitCode.GPU_UNAVAILABLE, "GPUUnavailable", False, True,
                  "the run asked for GPUs but this pod cannot use them (no driver, a driver too old for the image's "
                  "CUDA build, fewer devices visible); it stops instead of training on the CPU"),
        ExitClass(ExitCode.DATA_QUALITY, "DataQuality", False, True,
                  "the data fails a check its dataset.quality policy says to fail on (conflicting answers, "
                  "evaluation rows also in training, ...); the message lists what failed, with row numbers"),
        ExitClass(ExitCode.REVISION_NOT_FOUND, "RevisionNotFound", False, True,
                  "the model's revision (branch, tag or commit) does not exist on the Hub"),
        ExitClass(ExitCode.HUB_ACCESS_DENIED, "HubAccessDenied", False, True,
                  "the Hub refused the model's files: a gated or private model without a token (spec.hubTokenSecret), "
                  "or a token without access to it"),
        ExitClass(ExitCode.CACHE_FULL, "CacheFull", False, True,
                  "the shared model cache claim is full (or over its quota): the platform team frees or grows it"),
        ExitClass(ExitCode.CACHE_CORRUPT, "CacheCorrupt", False, True,
                  "files in the shared model cache do not match the Hub's hashes even after fetching them again"),
        ExitClass(ExitCode.CACHE_NOT_WRITABLE, "CacheNotWritable", False, True,
                  "the shared model cache claim cannot be written by the pods' user (uid and gid 1000): the platform "
                  "team makes it writable"),
        ExitClass(ExitCode.HUB_UNAVAILABLE, "HubUnavailable", True, True,
                  "the Hub could not be reached or answered 429 or 5xx; retried"),
    )
}

USER_ERROR_CODES: tuple[int, ...] = tuple(sorted(c for c, k in EXIT_CLASSES.items() if not k.retryable))


class TrainerError(Exception):
    """An error whose class the trainer knows: it exits with `code` and `str(self)` as the message."""

    code: ExitCode = ExitCode.UNEXPECTED

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(TrainerError):
    code = ExitCode.INVALID_CONFIG


class DataError(TrainerError):
    code = ExitCode.INVALID_DATA


class DataQualityError(TrainerError):
    code = ExitCode.DATA_QUALITY


class ModelLoadError(TrainerError):
    code = ExitCode.MODEL_LOAD_FAILED


class RevisionNotFoundError(TrainerError):
    code = ExitCode.REVISION_NOT_FOUND


class HubAccessError(TrainerError):
    code = ExitCode.HUB_ACCESS_DENIED


class CacheFullError(TrainerError):
    code = ExitCode.CACHE_FULL


class CacheCorruptError(TrainerError):
    code = ExitCode.CACHE_CORRUPT


class CacheNotWritableError(TrainerError):
    code = ExitCode.CACHE_NOT_WRITABLE


class HubUnavailableError(TrainerError):
    code = ExitCode.HUB_UNAVAILABLE


class OutOfMemory(TrainerError):
    code = ExitCode.OUT_OF_MEMORY


class LossNotFinite(TrainerError):
    code = ExitCode.LOSS_NOT_FINITE


class LossSpike(TrainerError):
    code = ExitCode.LOSS_SPIKE


class Interrupted(TrainerError):
    code = ExitCode.INTERRUPTED


class GPUUnavailable(TrainerError):
    code = ExitCode.GPU_UNAVAILABLE
