"""The selective scan's C kernel for CPUs (``ssm_cpu.c``), built at first use by :mod:`foundation.native`.

The chunked torch scan (:mod:`foundation.ssm_chunked`) materialises ``[l, b, d, n]`` decays, inputs and states
and pays a pass over memory and an operator for each; the kernel keeps a row's ``n`` states in registers and
recomputes them in the backward pass into an ``l x n`` buffer that stays in cache (as ``mamba_ssm``'s CUDA
kernel does on a GPU). It is the ``"cpu"`` backend of :mod:`foundation.ssm`, chosen automatically on CPUs for
float32 where it builds; where it does not (no C compiler), :func:`unavailable_reason` says why and the torch
scan runs.

Rows ``(direction, batch)`` are split between ``torch.get_num_threads()`` threads. Where torch runs on GNU OpenMP
(its Linux wheels) the kernel is built with ``-fopenmp`` against that same runtime and splits them on torch's own
OpenMP threads; threads of our own (``ctypes`` releases the GIL during a call, the fallback elsewhere) would
compete for the cores with torch's, which spin for a while after every operator (measured: a block's scan
forward+backward took as long on two threads as on one).
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from foundation import native

__all__ = ["MAX_STATES", "available", "load", "openmp", "scan_backward", "scan_forward", "unavailable_reason"]

_SOURCE = Path(__file__).with_name("ssm_cpu.c")
#: The largest state size the kernel takes (``W * MAX_VECTORS`` in ``ssm_cpu.c``: 8 states per vector, 64 vectors).
MAX_STATES = 512
CACHE_ENV = native.CACHE_ENV

_I64, _PTR, _I32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
_PROTOTYPES = {
    "eegfm_scan_fwd": [_I64] * 5 + [_PTR] * 8 + [_I32, _I32] + [_PTR] * 3 + [_I64] * 3,
    "eegfm_scan_bwd": [_I64] * 6 + [_PTR] * 8 + [_I32, _I32] + [_PTR] * 10 + [_I64] * 3,
    "eegfm_scan_work": [_I64, _I64, _I32],
    "eegfm_scan_openmp": [],
}
_KERNEL = native.Kernel(_SOURCE, _PROTOTYPES, openmp=True,
                        returns={"eegfm_scan_work": _I64, "eegfm_scan_openmp": _I32})
_POOL: list[ThreadPoolExecutor] = []  # the threads rows are split between, made on first use


def load() -> ctypes.CDLL | None:
    """The kernel library, built on first use; None where it cannot be built here (see :func:`unavailable_reason`)."""
    return _KERNEL.lib()


def available() -> bool:
    return load() is not None


def unavailable_reason() -> str:
    return _KERNEL.reason()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _pool(workers: int) -> ThreadPoolExecutor:
    if not _POOL or _POOL[0]._max_workers != workers:  # type: ignore[attr-defined]
        _POOL[:] = [ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eegfm-scan")]
    return _POOL[0]


def _split_rows(rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of ``(direction, batch)`` rows, one per thread."""
    workers = max(1, min(torch.get_num_threads(), rows))
    bounds = [rows * i // workers for i in range(workers + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(workers)]


def openmp() -> bool:
    """Whether the kernel splits its rows on torch's OpenMP threads (else on a thread pool of its own)."""
    lib = load()
    return lib is not None and bool(native.call(lib.eegfm_scan_openmp))


def _launch(fn, rows: int, parts: list[tuple[int, int]], part_args) -> None:
    """``fn`` over ``rows`` split as ``parts``; ``part_args(i)`` are the arguments of part ``i`` (its scratch and
    sums) before the row range. With OpenMP one call takes every part (part ``i``'s buffers follow part 0's)."""
    if len(parts) == 1 or openmp():
        native.call(fn, *part_args(0), 0, rows, len(parts))
        return
    futures = [_pool(len(parts)).submit(native.call, fn, *part_args(i), r0, r1, 1) for i, (r0, r1) in enumerate(parts)]
    for future in futures:
        future.result()


def _f32(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach().to(torch.float32).contiguous()


def _scratch(lib, parts: int, n: int, l: int, backward: bool, like: torch.Tensor) -> torch.Tensor:
    """Each part's float32 scratch, ``[parts, floats]``, as large as the kernel asks for."""
    return like.new_empty(parts, native.call(lib.eegfm_scan_work, n, l, int(backward)))


def _common(u, delta, A, B, C, D, delta_bias, mask):
    """The inputs as the kernel reads them: float32 (uint8 mask), contiguous."""
    m = None if mask is None else mask.to(torch.uint8).contiguous()
    return (*(_f32(x) for x in (u, delta, A, B, C, D, delta_bias)), m)


def scan_forward(u, delta, A, B, C, D, delta_bias, mask, softplus: bool, reverse: bool):
    """``(y [k, b, d, l], last [k, b, d, n])`` float32: ``C h + D u`` per direction.

    ``u, delta [k, b, d, l]`` (``delta`` the raw step: ``dt = softplus(delta + delta_bias)`` (or without the
    softplus), 0 where ``mask [b, l]`` is 0); ``A [k, d, n]``; ``B, C [k, b, g, n, l]``; ``D, delta_bias [k, d]``
    or None. Direction ``i`` scans forward when ``i + reverse`` is even.
    """
    lib = load()
    k, b, d, l = u.shape
    g, n = B.shape[2], A.shape[-1]
    u, delta, A, B, C, D, delta_bias, m = _common(u, delta, A, B, C, D, delta_bias, mask)
    y = u.new_empty(k, b, d, l)
    last = u.new_empty(k, b, d, n)
    parts = _split_rows(k * b)
    work = _scratch(lib, len(parts), n, l, False, u)

    _launch(lib.eegfm_scan_fwd, k * b, parts, lambda i: (
        b, d, g, n, l, _ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(delta_bias), _ptr(m),
        int(softplus), int(reverse), _ptr(y), _ptr(last), _ptr(work[i])))
    return y, last


def scan_backward(u, delta, A, B, C, D, delta_bias, mask, softplus: bool, reverse: bool, gy, glast):
    """Gradients ``(du, ddelta, dA, dB, dC, dD, d delta_bias)`` of :func:`scan_forward` for ``gy [k, b, d, l]`` and
    ``glast [k, b, d, n]`` (or None), float32; ``ddelta`` is for the raw ``delta``; ``dD`` / ``d delta_bias`` are
    None where ``D`` / ``delta_bias`` are."""
    lib = load()
    k, b, d, l = u.shape
    g, n = B.shape[2], A.shape[-1]
    u, delta, A, B, C, D, delta_bias, m = _common(u, delta, A, B, C, D, delta_bias, mask)
    gy, glast = _f32(gy), _f32(glast)
    du, ddelta = torch.empty_like(u), torch.empty_like(u)
    dB, dC = torch.empty_like(B), torch.empty_like(C)
    parts = _split_rows(k * b)
    # dA, dD and d delta_bias sum over the batch: one buffer per thread, added up afterwards.
    dA = u.new_zeros(len(parts), k, d, n)
    dD = u.new_zeros(len(parts), k, d) if D is not None else None
    dbias = u.new_zeros(len(parts), k, d) if delta_bias is not None else None
    work = _scratch(lib, len(parts), n, l, True, u)

    _launch(lib.eegfm_scan_bwd, k * b, parts, lambda i: (
        k, b, d, g, n, l, _ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(delta_bias), _ptr(m),
        int(softplus), int(reverse), _ptr(gy), _ptr(glast), _ptr(du), _ptr(ddelta), _ptr(dA[i]), _ptr(dB), _ptr(dC),
        None if dD is None else _ptr(dD[i]), None if dbias is None else _ptr(dbias[i]), _ptr(work[i])))
    return (du, ddelta, dA.sum(0), dB, dC, None if dD is None else dD.sum(0),
            None if dbias is None else dbias.sum(0))
