"""Range checks of index tensors (task ids, channel ids) that never stop a compiled or CUDA step.

Reading a tensor's minimum on the host (``int(t.min())``) synchronises with the GPU and breaks a
``torch.compile`` graph. So where that would happen (CUDA tensors, or while tracing) the check is
``torch._assert_async``: it runs on the device and fails the step with the same message; on CPU tensors in
eager mode it raises a ``ValueError`` naming the range found, at no cost.
"""

from __future__ import annotations

import torch

__all__ = ["check_range"]


def check_range(ids: torch.Tensor, upper: int, what: str) -> None:
    """Check that every entry of the integer tensor ``ids`` lies in ``[0, upper)``.

    Raises:
        ValueError: (eager, CPU) naming ``what``, the range and the entries' min and max.
        RuntimeError: (compiled or CUDA) from the device-side assertion, with the same message minus the
            values (which would need the host).
    """
    if ids.numel() == 0:
        return
    if torch.compiler.is_compiling() or ids.device.type != "cpu":
        torch._assert_async(((ids >= 0) & (ids < upper)).all(), f"{what} must lie in [0, {upper})")
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= upper:
        raise ValueError(f"{what} must lie in [0, {upper}), got min {low} max {high}")
