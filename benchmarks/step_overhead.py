"""What a training step costs besides its arithmetic: operators dispatched, host syncs, GPU idle time, graph breaks.

Used by ``benchmarks/gpu.py`` and ``benchmarks/pretrain_throughput.py``; on a CPU the counts track the
overhead a GPU step would pay without needing one.

* **Operators per step**: the profiler's top-level operators (``aten::*`` and ``eegfm::*`` events not nested in
  another operator), so a custom operator (the selective scan, the mask sampler's tail) counts as one, plus
  the kernels a compiled graph runs (``*cpp_fused*`` on a CPU, with ``torch._inductor.config.cpp.
  enable_kernel_profile``; on a GPU the device kernels are counted separately).
* **Host syncs per step**: operators that read a device value on the host (``aten::_local_scalar_dense`` behind
  ``.item()`` / ``int()`` / ``.tolist()``, ``aten::nonzero``, ``aten::_unique2``, ``aten::masked_select``; not
  the read-back inside ``torch._assert_async``, a device-side check on a GPU); on a CPU they cost nothing but
  say what a GPU step would wait for. On a GPU the synchronising CUDA runtime calls are counted too.
* **GPU busy**: the union of the device kernels' time intervals over the step's wall time.
* **Graph breaks**: ``torch._dynamo.explain`` on a callable and its inputs.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

import torch

__all__ = ["SYNC_OPS", "graph_breaks", "profile_step"]

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::masked_select", "aten::item")
_CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def _is_op(name: str) -> bool:
    return name.startswith(("aten::", "eegfm::")) or "cpp_fused" in name


def _top_level(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if _is_op(parent.name):
            return False
        parent = parent.cpu_parent
    return True


def _inside(event, name: str) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == name:
            return True
        parent = parent.cpu_parent
    return False


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def profile_step(step: Callable[[], Any], device: torch.device, steps: int = 1) -> dict[str, float]:
    """Run ``step`` ``steps`` times under the profiler; per-step operators, host syncs and (CUDA) kernels and busy %.

    Returns ``ops`` (top-level operators and compiled kernels), ``top_ops`` (the most frequent ones, per step),
    ``syncs`` (host-reading operators, plus
    synchronising CUDA calls on a GPU), and on CUDA ``kernels`` (device kernels) and ``gpu_busy`` (fraction).
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.events()
    ops = [e for e in events if _is_op(e.name) and _top_level(e)]
    # A device-side assertion (torch._assert_async) reads its flag back on a CPU only: not a GPU sync.
    syncs = [e for e in events if e.name in SYNC_OPS and not _inside(e, "aten::_assert_async")]
    names = Counter("compiled kernel" if "cpp_fused" in e.name else e.name for e in ops)
    out = {"ops": len(ops) / steps, "syncs": len(syncs) / steps,
           "top_ops": [(name, n / steps) for name, n in names.most_common(6)]}
    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and e.name != "Memset"]
        busy = _busy_seconds([(e.time_range.start, e.time_range.end) for e in kernels]) / 1e6
        out["kernels"] = len(kernels) / steps
        out["gpu_busy"] = min(1.0, busy / wall)
        out["syncs"] += sum(1 for e in events if e.name.startswith(_CUDA_SYNCS)) / steps
    return out


def graph_breaks(fn: Callable, *args: Any) -> dict[str, Any]:
    """``torch._dynamo.explain(fn)(*args)``: graphs, breaks and the first break reasons (nothing is compiled)."""
    import torch._dynamo

    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    reasons = [r.reason.splitlines()[0][:160] for r in explained.break_reasons[:5]]
    torch._dynamo.reset()
    return {"graphs": explained.graph_count, "breaks": explained.graph_break_count, "reasons": reasons}
