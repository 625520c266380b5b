"""What an exception raised inside torch, transformers or huggingface_hub means for the run: another process of the
group went away, or the Hub could not be reached. The operator never imports this module (it imports errors.py)."""

from __future__ import annotations


# What the collective backends say when another process of the group went away mid-operation.
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "gloo/transport",
              "NCCL communicator was aborted", "Connection refused", "failed to recv", "failed to send")


def peer_lost(e: BaseException) -> bool:
    """A collective operation failed because another training process (on another pod) died or went away."""
    try:
        from torch.distributed import DistError
    except ImportError:  # a torch without distributed support
        DistError = ()  # type: ignore[assignment,misc]  # noqa: N806
    chain, seen = e, 0
    while chain is not None and seen < 8:
        if isinstance(chain, DistError) or (isinstance(chain, RuntimeError)
                                            and any(s in str(chain) for s in _PEER_GONE)):
            return True
        chain, seen = chain.__cause__ or chain.__context__, seen + 1
    return False


# What transformers and huggingface_hub say when the Hub cannot be reached and the files are not cached.
_UNREACHABLE = ("couldn't connect", "couldn't reach", "offline mode", "Name or service not known", "Connection refused",
                "Temporary failure in name resolution", "Network is unreachable", "timed out")


def hub_unreachable(e: BaseException) -> bool:
    """The Hub could not be reached (no network, DNS, offline mode) and nothing was cached."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    chain, seen = e, 0
    while chain is not None and seen < 8:
        if isinstance(chain, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or any(
                s.lower() in str(chain).lower() for s in _UNREACHABLE):
            return True
        chain, seen = chain.__cause__ or chain.__context__, seen + 1
    return False
