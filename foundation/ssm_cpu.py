"""The selective scan's C kernel for CPUs (``ssm_cpu.c``), built at first use by :mod:`foundation.native`.

The chunked torch scan (:mod:`foundation.ssm_chunked`) materialises ``[l, b, d, n]`` decays, inputs and states
and pays a pass over memory and an operator for each; the kernel keeps a row's ``n`` states in registers and
recomputes them in the backward pass into an ``l x n`` buffer that stays in cache (as ``mamba_ssm``'s CUDA
kernel does on a GPU). It is the ``"cpu"`` backend of :mod:`foundation.ssm`, chosen automatically on CPUs for
float32 where it builds; where it does not (no C compiler), :func:`unavailable_reason` says why and the torch
scan runs.

Rows ``(direction, batch)`` are split between ``torch.get_num_threads()`` threads (``ctypes`` releases the GIL
during a call), so a multi-threaded CPU run uses its cores as torch's own operators would.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from foundation import native

__all__ = ["MAX_STATES", "VECTOR_WIDTH", "available", "load", "scan_backward", "scan_forward", "unavailable_reason"]

_SOURCE = Path(__file__).with_name("ssm_cpu.c")
#: States per vector in the kernel (``W``) and the largest state size it takes (``W * MAX_VECTORS``).
VECTOR_WIDTH, MAX_STATES = 8, 512
CACHE_ENV = native.CACHE_ENV

_I64, _PTR, _I32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
_PROTOTYPES = {
    "eegfm_scan_fwd": [_I64] * 5 + [_PTR] * 6 + [_I32] + [_PTR] * 2 + [_I64, _I64],
    "eegfm_scan_bwd": [_I64] * 5 + [_PTR] * 6 + [_I32] + [_PTR] * 9 + [_I64, _I64],
}
_STATE: dict[str, object] = {}


def load() -> ctypes.CDLL | None:
    """The kernel library, built on first use; None where it cannot be built here (see :func:`unavailable_reason`)."""
    if "lib" not in _STATE:
        _STATE["lib"], _STATE["reason"] = native.load(_SOURCE, _PROTOTYPES)
    return _STATE["lib"]  # type: ignore[return-value]


def available() -> bool:
    return load() is not None


def unavailable_reason() -> str:
    load()
    return str(_STATE["reason"])


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _pool(workers: int) -> ThreadPoolExecutor:
    pool = _STATE.get("pool")
    if pool is None or pool._max_workers != workers:  # type: ignore[attr-defined]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eegfm-scan")
        _STATE["pool"] = pool
    return pool  # type: ignore[return-value]


def _split_rows(rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of ``(direction, batch)`` rows, one per thread."""
    workers = max(1, min(torch.get_num_threads(), rows))
    bounds = [rows * i // workers for i in range(workers + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(workers)]


def _run(parts, fn) -> None:
    if len(parts) == 1:
        fn(0, *parts[0])
        return
    for future in [_pool(len(parts)).submit(fn, i, *p) for i, p in enumerate(parts)]:
        future.result()


def _f32(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach().to(torch.float32).contiguous()


def _padded_states(A, B, C):
    """``A [k, d, n_pad]`` and time-major ``B, C [k, b, g, l, n_pad]`` float32, ``n`` padded to a multiple of the
    kernel's vector width with zeros (a padded state has decay 1 and no input: it stays 0 and adds nothing)."""
    pad = -A.shape[-1] % VECTOR_WIDTH
    A = F.pad(_f32(A), (0, pad)).contiguous()
    Bt, Ct = (F.pad(_f32(x).transpose(-1, -2), (0, pad)).contiguous() for x in (B, C))
    return A, Bt, Ct


def scan_forward(u, dt, A, B, C, D, reverse: bool):
    """``(y [k, b, d, l], last [k, b, d, n])`` float32: ``C h + D u`` per direction.

    ``u, dt [k, b, d, l]`` (``dt`` the effective step: after bias, softplus and the padding mask); ``A [k, d, n]``;
    ``B, C [k, b, g, n, l]``; ``D [k, d]`` or None. Direction ``i`` scans forward when ``i + reverse`` is even.
    """
    lib = load()
    k, b, d, l = u.shape
    g, n = B.shape[2], A.shape[-1]
    u, dt, D = _f32(u), _f32(dt), _f32(D)
    A, Bt, Ct = _padded_states(A, B, C)
    y = u.new_empty(k, b, d, l)
    last = u.new_empty(k, b, d, A.shape[-1])

    def call(_, r0, r1):
        native.call(lib.eegfm_scan_fwd, b, d, g, A.shape[-1], l, _ptr(u), _ptr(dt), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(D),
                           int(reverse), _ptr(y), _ptr(last), r0, r1)

    _run(_split_rows(k * b), call)
    return y, last[..., :n]


def scan_backward(u, dt, A, B, C, D, reverse: bool, gy, glast):
    """Gradients ``(du, ddt, dA, dB, dC, dD)`` of :func:`scan_forward` for ``gy [k, b, d, l]`` and ``glast
    [k, b, d, n]`` (or None), float32; ``ddt`` is for the effective step, ``dD`` None where ``D`` is."""
    lib = load()
    k, b, d, l = u.shape
    g, n = B.shape[2], A.shape[-1]
    u, dt, D, gy = _f32(u), _f32(dt), _f32(D), _f32(gy)
    A, Bt, Ct = _padded_states(A, B, C)
    n_pad = A.shape[-1]
    if glast is not None:
        glast = F.pad(_f32(glast), (0, n_pad - n)).contiguous()
    du, ddt = torch.empty_like(u), torch.empty_like(u)
    dBt, dCt = torch.zeros_like(Bt), torch.zeros_like(Ct)
    parts = _split_rows(k * b)
    # dA and dD sum over the batch: one buffer per thread, added up afterwards.
    dA = u.new_zeros(len(parts), k, d, n_pad)
    dD = u.new_zeros(len(parts), k, d) if D is not None else None
    work = u.new_empty(len(parts), (2 * l + 1) * n_pad)

    def call(i, r0, r1):
        native.call(lib.eegfm_scan_bwd, b, d, g, n_pad, l, _ptr(u), _ptr(dt), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(D),
                           int(reverse), _ptr(gy), _ptr(glast), _ptr(du), _ptr(ddt), _ptr(dA[i]), _ptr(dBt),
                           _ptr(dCt), None if dD is None else _ptr(dD[i]), _ptr(work[i]), r0, r1)

    _run(parts, call)
    return (du, ddt, dA.sum(0)[..., :n], dBt[..., :n].transpose(-1, -2), dCt[..., :n].transpose(-1, -2),
            None if dD is None else dD.sum(0))
