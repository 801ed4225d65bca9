"""Where reading a tensor back on the host is free, and range checks of index tensors built on that.

Reading a tensor's value on the host (``int(t.min())``, ``.any()``, ``nonzero``) synchronises with the GPU and
breaks a ``torch.compile`` graph. :func:`sync_free` says where the code must not: while compiling, on any
device but the CPU, and wherever ``$EEGFM_SYNC_FREE=1`` asks for the GPU's code path on a CPU (benchmarks count
a GPU step's operators and syncs that way; tests run that path). Elsewhere (eager, on a CPU) shortcuts that read
values back cost nothing.

:func:`check_range` (task ids, channel ids) is ``torch._assert_async`` where :func:`sync_free`: it runs on the
device and fails the step with the same message; otherwise it raises a ``ValueError`` naming the range found.
"""

from __future__ import annotations

import os

import torch

__all__ = ["SYNC_FREE_ENV", "check_range", "sync_free"]

SYNC_FREE_ENV = "EEGFM_SYNC_FREE"


def sync_free(device: torch.device | str) -> bool:
    """True where code must not read tensor values back on the host (see the module docstring)."""
    return (torch.compiler.is_compiling() or torch.device(device).type != "cpu"
            or os.environ.get(SYNC_FREE_ENV, "") == "1")


def check_range(ids: torch.Tensor, upper: int, what: str) -> None:
    """Check that every entry of the integer tensor ``ids`` lies in ``[0, upper)``.

    Raises:
        ValueError: (eager, CPU) naming ``what``, the range and the entries' min and max.
        RuntimeError: (compiled or CUDA) from the device-side assertion, with the same message minus the
            values (which would need the host).
    """
    if ids.numel() == 0:
        return
    if sync_free(ids.device):
        torch._assert_async(((ids >= 0) & (ids < upper)).all(), f"{what} must lie in [0, {upper})")
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= upper:
        raise ValueError(f"{what} must lie in [0, {upper}), got min {low} max {high}")
