"""Selective scan (Mamba's S6 recurrence): one dispatch point, registered as a custom operator.

The dispatch, the custom operators and the sequential reference the tests hold the other paths to; the chunked
torch scan is :mod:`foundation.ssm_chunked`, the Triton kernels :mod:`foundation.ssm_triton`.

The recurrence, per batch ``b``, channel ``d`` and state ``n`` (``t`` = time)::

    h[t] = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * B[n, t] * u[t]
    y[t] = sum_n C[n, t] * h[t, n]  (+ D[d] * u[t])   (* silu(z[t]))

``selective_scan`` has the signature and semantics of ``mamba_ssm``'s ``selective_scan_fn`` (plus
``reverse``: scan from the last step to the first). :func:`bidirectional_scan` runs a forward and a
reverse scan with their own parameters in one call, with a padding mask (``delta = 0`` at padded steps),
for :class:`foundation.bimamba.BiMambaBlock`. One dispatch point (:func:`selective_scan_backend`) picks the
implementation:

* ``"mamba_ssm"``: ``mamba_ssm``'s fused CUDA kernel, when that package imports and the tensors are on CUDA;
* ``"triton"``: our Triton kernels (:mod:`foundation.ssm_triton`), when triton imports and the tensors are
  on CUDA (no CUDA compiler needed);
* ``"cpu"``: our C kernel (:mod:`foundation.ssm_cpu`, built at first use with the machine's C compiler), on CPUs
  for float32 (about 3x faster than the chunked torch scan, forward and backward, at pretraining shapes);
* ``"torch"``: our pure-PyTorch chunked scan (:mod:`foundation.ssm_chunked`), everywhere else (float64, a CPU
  with no C compiler);
* ``"ref"``: :func:`selective_scan_ref`, only when forced.

``selective_scan(..., backend=...)`` (from ``EEGMambaConfig.scan_backend``) or the environment variable
``EEGFM_SCAN_BACKEND`` forces one of them (tests, benchmarks, bug reports); ``"auto"`` (the default)
applies the order above.

The Triton, C and torch scans are the custom operators ``eegfm::scan_fwd`` / ``eegfm::scan_bwd``
(``torch.library``), with shape functions and an autograd formula: ``torch.compile(fullgraph=True)`` traces
a whole block around the scan as one opaque node, CUDA graphs can capture it, and both the forward and the
backward pass are one operator each (the backward recomputes the states from the chunk-start states the
forward pass saved: activation memory ``O(b d L)``, not ``O(b d L n)``). The operators take ``k`` stacked
directions ``[k, b, d, l]``; direction ``i`` scans forward when ``i + reverse`` is even.

``selective_scan_ref`` is a plain loop over time for tests.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from foundation import ssm_cpu
from foundation.ssm_chunked import chunked_backward, chunked_forward, chunked_scan, n_chunks

__all__ = [
    "SCAN_BACKENDS", "bidirectional_scan", "bidirectional_scan_backward", "bidirectional_scan_forward", "chunked_scan",
    "selective_scan", "selective_scan_backend", "selective_scan_ref",
]

#: Values of ``backend`` / ``EEGFM_SCAN_BACKEND`` / ``EEGMambaConfig.scan_backend``.
SCAN_BACKENDS = ("auto", "mamba_ssm", "triton", "cpu", "torch", "ref")
SCAN_BACKEND_ENV = "EEGFM_SCAN_BACKEND"


# What the optional packages gave, once looked up (a plain dict rather than lru_cache: torch.compile traces a
# lookup here as a constant, where it would re-run an lru_cache-wrapped function and its imports).
_LOADED: dict[str, object] = {}


def _load_mamba_scan() -> Callable | None:
    """``mamba_ssm``'s fused ``selective_scan_fn``, or None where it cannot be imported.

    mamba-ssm imports its CUDA extension at module import time, so on a CPU-only install even its
    reference implementation raises; any import failure simply means "use our path".
    """
    if "mamba_ssm" not in _LOADED:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except (ImportError, OSError, RuntimeError):
            selective_scan_fn = None
        _LOADED["mamba_ssm"] = selective_scan_fn
    return _LOADED["mamba_ssm"]


def _is_cuda(t: torch.Tensor) -> bool:
    return t.is_cuda


def _load_triton_module():
    """:mod:`foundation.ssm_triton` when triton imports, else None."""
    if "triton" not in _LOADED:
        from foundation import ssm_triton

        _LOADED["triton"] = ssm_triton if ssm_triton.triton is not None else None
    return _LOADED["triton"]


def _requested_backend(backend: str | None) -> str:
    """The forced backend: ``backend`` unless it is None / ``"auto"``, else ``$EEGFM_SCAN_BACKEND``, else auto."""
    if backend is not None and backend != "auto":
        choice, source = backend, "backend argument (EEGMambaConfig.scan_backend)"
    else:
        choice, source = os.environ.get(SCAN_BACKEND_ENV, "auto") or "auto", f"${SCAN_BACKEND_ENV}"
    if choice not in SCAN_BACKENDS:
        raise ValueError(f"selective_scan: {source} must be one of {SCAN_BACKENDS}, got {choice!r}")
    return choice


def selective_scan_backend(u: torch.Tensor, backend: str | None = None) -> str:
    """Which implementation :func:`selective_scan` runs for tensors like ``u``.

    ``backend`` (or ``$EEGFM_SCAN_BACKEND`` when ``backend`` is None or ``"auto"``) forces one of
    ``"mamba_ssm"``, ``"triton"``, ``"cpu"``, ``"torch"``, ``"ref"``; ``"auto"`` picks mamba-ssm, then Triton, on
    CUDA, the C kernel on a CPU where it builds, and the chunked torch scan otherwise (and for float64, which the
    kernels compute in float32).

    Raises:
        RuntimeError: a forced backend that cannot run here (package missing, tensors not on CUDA).
    """
    choice = _requested_backend(backend)
    if choice == "auto":
        if _is_cuda(u) and u.dtype != torch.float64:
            if _load_mamba_scan() is not None:
                return "mamba_ssm"
            if _load_triton_module() is not None:
                return "triton"
        elif u.device.type == "cpu" and u.dtype != torch.float64 and ssm_cpu.available():
            return "cpu"
        return "torch"
    if choice == "mamba_ssm" and (_load_mamba_scan() is None or not _is_cuda(u)):
        raise RuntimeError(
            "selective_scan: backend 'mamba_ssm' was forced but "
            + ("mamba_ssm does not import (pip install 'eegfm[cuda]')" if _load_mamba_scan() is None
               else f"the tensors are on {u.device}, not CUDA")
        )
    if choice == "cpu" and (u.device.type != "cpu" or not ssm_cpu.available()):
        raise RuntimeError("selective_scan: backend 'cpu' was forced but "
                           + (f"the tensors are on {u.device}" if u.device.type != "cpu" else ssm_cpu.unavailable_reason()))
    if choice == "triton":
        mod = _load_triton_module()
        if mod is None:
            raise RuntimeError("selective_scan: backend 'triton' was forced but triton does not import (pip install 'eegfm[gpu]')")
        if not (_is_cuda(u) or mod.interpreting()):
            raise RuntimeError(
                f"selective_scan: backend 'triton' was forced but the tensors are on {u.device}; Triton needs CUDA "
                "tensors (or TRITON_INTERPRET=1 for its slow CPU interpreter)"
            )
    return choice


def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be [b, d, l], got shape {tuple(u.shape)}")
    b, d, l = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must match u {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be [d={d}, n], got {tuple(A.shape)}")
    if A.is_complex():
        raise NotImplementedError("selective_scan: complex A is not supported (Mamba's real-valued S6 only)")
    n = A.shape[1]
    for name, m in (("B", B), ("C", C)):
        if m.dim() == 2:
            if m.shape != (d, n):
                raise ValueError(f"selective_scan: time-invariant {name} must be [d={d}, n={n}], got {tuple(m.shape)}")
        elif m.dim() == 3:
            if m.shape != (b, n, l):
                raise ValueError(f"selective_scan: {name} must be [b={b}, n={n}, l={l}], got {tuple(m.shape)}")
        elif m.dim() == 4:
            if m.shape[0] != b or m.shape[2:] != (n, l) or d % m.shape[1] != 0:
                raise ValueError(
                    f"selective_scan: grouped {name} must be [b={b}, g, n={n}, l={l}] with g dividing d={d}, "
                    f"got {tuple(m.shape)}"
                )
        else:
            raise ValueError(f"selective_scan: {name} must have 2, 3 or 4 dims, got {tuple(m.shape)}")
    if D is not None and D.shape != (d,):
        raise ValueError(f"selective_scan: D must be [d={d}], got {tuple(D.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must match u {tuple(u.shape)}, got {tuple(z.shape)}")
    if delta_bias is not None and delta_bias.shape != (d,):
        raise ValueError(f"selective_scan: delta_bias must be [d={d}], got {tuple(delta_bias.shape)}")


def _grouped(m: torch.Tensor, b: int, l: int) -> torch.Tensor:
    """B or C as ``[b, g, n, l]`` (``g`` groups of channels sharing it)."""
    if m.dim() == 3:
        return m.unsqueeze(1)
    if m.dim() == 2:  # time-invariant [d, n]: one group per channel (memory-heavy, rarely used)
        return m[None, :, :, None].expand(b, -1, -1, l)
    return m


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, reverse=False
):
    """Sequential reference: one recurrence step per time step (slow; for tests).

    Shapes as in :func:`selective_scan`. Computes in float32 (float64 stays float64) and returns ``y`` in
    ``u``'s dtype, like ``mamba_ssm``'s ``selective_scan_ref``. ``reverse``: scan from the last step to the
    first (``last_state`` is then the state after step 0).
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    ct = torch.promote_types(dtype_in, torch.float32)
    b, d, l = u.shape
    u, delta, A = u.to(ct), delta.to(ct), A.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bg, Cg = _grouped(B, b, l).to(ct), _grouped(C, b, l).to(ct)
    Bd = Bg.repeat_interleave(d // Bg.shape[1], dim=1)  # [b, d, n, l]
    Cd = Cg.repeat_interleave(d // Cg.shape[1], dim=1)
    h = u.new_zeros(b, d, A.shape[1])
    ys = [None] * l
    for t in (reversed(range(l)) if reverse else range(l)):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * Bd[..., t] * u[:, :, t, None]
        ys[t] = (h * Cd[..., t]).sum(-1)
    y = torch.stack(ys, dim=-1) if l else u.new_zeros(b, d, 0)
    out = y if D is None else y + u * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


def _same_groups(B: torch.Tensor, C: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[b, g, n, l]`` B and C with one grouping (per-channel groups for both when they differ), contiguous
    along time (the kernels read time rows)."""
    if B.shape[1] != C.shape[1]:
        B, C = B.repeat_interleave(d // B.shape[1], dim=1), C.repeat_interleave(d // C.shape[1], dim=1)
    return B.contiguous(), C.contiguous()


def _backend(u: torch.Tensor, backend: str | None) -> str:
    """:func:`selective_scan_backend` for the scan entry points. Under ``torch.compile`` it is traced, which is
    free once the optional packages were looked up in eager mode (the trainer's ``log_scan_backend`` does)."""
    return selective_scan_backend(u, backend)


# ------------------------------------------------------------------------------------ custom operators


def _triton_time_block() -> int:
    return _load_triton_module().launch_time_block()


@torch.library.custom_op("eegfm::scan_fwd", mutates_args=())
def _scan_fwd(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
    z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], mask: Optional[torch.Tensor], softplus: bool,
    reverse: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y [k, b, d, l], last [k, b, d, n], saved states, y before the z gate or an empty tensor)``."""
    if backend == "triton":
        y, last, hs = _load_triton_module().scan_forward(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse)
        return y, last, hs, u.new_empty(0)
    if backend == "cpu":
        return _cpu_scan_fwd(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse)
    return _torch_scan_fwd(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse)


@_scan_fwd.register_fake
def _scan_fwd_shapes(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse, backend):
    # Every output is contiguous, whatever the inputs' strides (both implementations write fresh dense tensors).
    k, b, d, l = u.shape
    n, g = A.shape[-1], B.shape[2]
    y = u.new_empty(u.shape)
    if backend == "triton":
        hs = u.new_empty(k, b, d, max(1, math.ceil(l / _triton_time_block())), n, dtype=torch.float32)
        return y, u.new_empty(k, b, d, n, dtype=torch.float32), hs, u.new_empty(0)
    ct = torch.promote_types(u.dtype, torch.float32)
    if backend == "cpu":  # the C kernel saves nothing: its backward pass recomputes every state
        hs = u.new_empty(0, dtype=ct)
    else:
        hs = u.new_empty(k, b, g, n_chunks(l, slab=k * b * d * n), d // g, n, dtype=ct)  # k directions as one scan
    y_pre = u.new_empty(k, b, d, l, dtype=ct) if z is not None else u.new_empty(0)
    return y, u.new_empty(k, b, d, n, dtype=ct), hs, y_pre


@torch.library.custom_op("eegfm::scan_bwd", mutates_args=())
def _scan_bwd(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
    z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], mask: Optional[torch.Tensor], softplus: bool,
    reverse: bool, backend: str, hs: torch.Tensor, y_pre: torch.Tensor, gy: torch.Tensor, glast: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(du, ddelta, dA, dB, dC, dD, dz, d delta_bias)``; an absent input's is an empty tensor."""
    if backend == "triton":
        grads = _load_triton_module().scan_backward(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse, hs,
                                                    gy, glast)
    elif backend == "cpu":
        grads = _cpu_scan_bwd(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse, y_pre, gy, glast)
    else:
        grads = _torch_scan_bwd(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse, hs, y_pre, gy, glast)
    return tuple(u.new_empty(0) if g is None else g.contiguous() for g in grads)


@_scan_bwd.register_fake
def _scan_bwd_shapes(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse, backend, hs, y_pre, gy, glast):
    return tuple(u.new_empty(0) if x is None else x.new_empty(x.shape) for x in (u, delta, A, B, C, D, z, delta_bias))


def _scan_setup(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, mask, output[2], output[3])
    ctx.options = (softplus, reverse, backend)


def _scan_autograd(ctx, gy, glast, _ghs, _gy_pre):
    u, delta, A, B, C, D, z, delta_bias, mask, hs, y_pre = ctx.saved_tensors
    gy = torch.zeros_like(u) if gy is None else gy
    glast = torch.zeros(hs.shape[0], *u.shape[1:3], A.shape[-1], device=u.device) if glast is None else glast
    grads = torch.ops.eegfm.scan_bwd(u, delta, A, B, C, D, z, delta_bias, mask, *ctx.options, hs, y_pre, gy, glast)
    present = (u, delta, A, B, C, D, z, delta_bias)
    return (*(g if x is not None else None for g, x in zip(grads, present)), None, None, None, None)


_scan_fwd.register_autograd(_scan_autograd, setup_context=_scan_setup)


# ----------------------------------------------------------------------------- the torch (CPU) backend


def _effective_delta(delta, bias, mask, softplus, ct, with_factor: bool = True):
    """``softplus(delta + bias) * valid`` in the compute dtype ``[k, b, d, l]`` (all directions at once; ``bias``
    ``[k, d]``, ``mask [b, l]``), and the derivative factor ``d effective / d delta`` (None when it is 1, or when
    ``with_factor`` is False: the forward pass does not need it)."""
    x = delta.to(ct)
    if bias is not None:
        x = x + bias.to(ct)[:, None, :, None]
    factor = None
    if softplus:
        if with_factor:
            factor = torch.where(x > 20.0, 1.0, torch.sigmoid(x))  # torch's softplus threshold
        x = F.softplus(x)
    if mask is not None:
        valid = mask[:, None, :].to(ct)
        x = x * valid
        if with_factor:
            factor = valid.expand_as(x) if factor is None else factor * valid
    return x, factor


def _flipper(rev: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    return (lambda x: x.flip(-1)) if rev else (lambda x: x)


def _merged(x, k, flips, dim):
    """The ``k`` directions of ``x [k, ...]`` (each flipped along time where it scans in reverse) side by side
    along ``dim`` of one direction's tensor: one chunked scan then runs every direction at once, the
    directions as groups of channels (``A`` and ``B``/``C`` are per group), at the operator count of one."""
    return torch.cat([f(x[i]) for i, f in zip(range(k), flips)], dim=dim)


def _split(x, k, flips, dim):
    """Inverse of :func:`_merged`: ``[k, ...]`` per-direction tensors, each flipped back."""
    return torch.stack([f(part) for part, f in zip(x.chunk(k, dim=dim), flips)])


def _torch_scan_fwd(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse):
    ct = torch.promote_types(u.dtype, torch.float32)
    k, b, d, l = u.shape
    g = B.shape[2]
    flips = [_flipper(bool((i + reverse) % 2)) for i in range(k)]
    uc = u.to(ct)
    dc, _ = _effective_delta(delta, delta_bias, mask, softplus, ct, with_factor=False)
    y, last, hs = chunked_forward(_merged(uc, k, flips, 1), _merged(dc, k, flips, 1), A.to(ct).reshape(k * d, -1),
                                  _merged(B, k, flips, 1).to(ct), _merged(C, k, flips, 1).to(ct))
    y = _split(y, k, flips, 1)  # [k, b, d, l]
    if D is not None:
        y = y + uc * D.to(ct)[:, None, :, None]
    y_pre = y if z is not None else u.new_empty(0)
    if z is not None:
        y = y * F.silu(z.to(ct))
    last = last.view(b, k, d, -1).transpose(0, 1).contiguous()
    hs = hs.view(b, k, g, *hs.shape[2:]).transpose(0, 1).contiguous()
    return y.to(u.dtype), last, hs, y_pre


def _torch_scan_bwd(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse, hs, y_pre, gy, glast):
    ct = torch.promote_types(u.dtype, torch.float32)
    k, b, d, l = u.shape
    g = B.shape[2]
    flips = [_flipper(bool((i + reverse) % 2)) for i in range(k)]
    uc, gk = u.to(ct), gy.to(ct)
    grads = [None] * 8
    dc, factor = _effective_delta(delta, delta_bias, mask, softplus, ct)
    if z is not None:
        gk, grads[6] = _gate_backward(gk, y_pre, z)
    du, ddk, dA, dB, dC = chunked_backward(
        _merged(uc, k, flips, 1), _merged(dc, k, flips, 1), A.to(ct).reshape(k * d, -1),
        _merged(B, k, flips, 1).to(ct), _merged(C, k, flips, 1).to(ct),
        hs.transpose(0, 1).reshape(b, k * g, *hs.shape[3:]), _merged(gk, k, flips, 1),
        glast.to(ct).transpose(0, 1).reshape(b, k * d, -1))
    du, ddk = _split(du, k, flips, 1), _split(ddk, k, flips, 1)
    if D is not None:
        du = du + gk * D.to(ct)[:, None, :, None]
        grads[5] = (gk * uc).sum((1, 3)).to(D.dtype)
    ddelta = ddk if factor is None else ddk * factor
    if delta_bias is not None:
        grads[7] = ddelta.sum((1, 3)).to(delta_bias.dtype)
    grads[0], grads[1] = du.to(u.dtype), ddelta.to(delta.dtype)
    grads[2] = dA.view(k, d, -1).to(A.dtype)
    grads[3] = _split(dB, k, flips, 1).to(B.dtype)
    grads[4] = _split(dC, k, flips, 1).to(C.dtype)
    return tuple(grads)


# ------------------------------------------------------------------------------- the C (CPU) backend


def _gate_backward(gk, y_pre, z):
    """``(dL/d(y before the gate), dz)`` of ``y = y_pre * silu(z)``."""
    zc = z.to(gk.dtype)
    s = torch.sigmoid(zc)
    return gk * (zc * s), (gk * y_pre * s * (1.0 + zc * (1.0 - s))).sum(0).to(z.dtype)


def _cpu_scan_fwd(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse):
    """As :func:`_torch_scan_fwd`, in the C kernel (bias, softplus, mask and D included); the gate stays torch."""
    if A.shape[-1] > ssm_cpu.MAX_STATES:
        raise ValueError(f"selective_scan: the 'cpu' backend takes d_state <= {ssm_cpu.MAX_STATES}, got "
                         f"{A.shape[-1]}; use scan_backend = 'torch'")
    y, last = ssm_cpu.scan_forward(u, delta, A, B, C, D, delta_bias, mask, softplus, reverse)
    y_pre = y if z is not None else u.new_empty(0)
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype), last, u.new_empty(0, dtype=torch.float32), y_pre


def _cpu_scan_bwd(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse, y_pre, gy, glast):
    grads = [None] * 8
    gk = gy.float()
    if z is not None:
        gk, grads[6] = _gate_backward(gk, y_pre, z)
    du, ddelta, dA, dB, dC, dD, dbias = ssm_cpu.scan_backward(u, delta, A, B, C, D, delta_bias, mask, softplus,
                                                              reverse, gk, glast)
    grads[0], grads[1], grads[2] = du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype)
    grads[3], grads[4] = dB.to(B.dtype), dC.to(C.dtype)
    if D is not None:
        grads[5] = dD.to(D.dtype)
    if delta_bias is not None:
        grads[7] = dbias.to(delta_bias.dtype)
    return tuple(grads)


# ---------------------------------------------------------------------------------------- entry points


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    backend: str | None = None, reverse: bool = False,
):
    """Mamba's selective scan (``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` semantics).

    Args:
        u: ``[b, d, l]`` input.
        delta: ``[b, d, l]`` step sizes (before ``delta_bias`` / softplus).
        A: ``[d, n]`` real, normally negative (``-exp(A_log)``).
        B, C: ``[b, n, l]``, grouped ``[b, g, n, l]`` (``g`` divides ``d``), or time-invariant ``[d, n]``.
        D: ``[d]`` skip connection, optional.
        z: ``[b, d, l]``; the output is multiplied by ``silu(z)``, optional.
        delta_bias: ``[d]`` added to ``delta`` before the softplus, optional.
        delta_softplus: apply ``softplus`` to ``delta``.
        return_last_state: also return the final state ``[b, d, n]`` (float32).
        backend: force an implementation (see :func:`selective_scan_backend`); None or ``"auto"`` defers to
            ``$EEGFM_SCAN_BACKEND``, then to the automatic choice.
        reverse: scan from the last step to the first (equal to flipping the inputs and the output along
            time); the final state is then the state after step 0.

    Returns:
        ``y [b, d, l]`` in ``u``'s dtype, and ``last_state [b, d, n]`` when asked for.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=return_last_state)
    chosen = _backend(u, backend)
    if chosen == "ref":
        return selective_scan_ref(u, delta, A, B, C, **kwargs, reverse=reverse)
    if chosen == "mamba_ssm":
        if not reverse:
            return _load_mamba_scan()(u, delta, A, B, C, **kwargs)
        flip = _flipper(True)
        out = _load_mamba_scan()(flip(u), flip(delta), A, *(m if m.dim() == 2 else flip(m) for m in (B, C)),
                                 **{**kwargs, "z": None if z is None else flip(z)})
        return (flip(out[0]), out[1]) if return_last_state else flip(out)
    b, d, l = u.shape
    if l == 0:
        y = u.new_zeros(b, d, 0)
        return (y, u.new_zeros(b, d, A.shape[1], dtype=torch.float32)) if return_last_state else y
    B, C = _same_groups(_grouped(B, b, l), _grouped(C, b, l), d)
    y, last, _, _ = torch.ops.eegfm.scan_fwd(
        u.contiguous()[None], delta.contiguous()[None], A.contiguous()[None], B[None], C[None],
        None if D is None else D[None], None if z is None else z.contiguous(),
        None if delta_bias is None else delta_bias[None], None, bool(delta_softplus), bool(reverse), chosen,
    )
    return (y[0], last[0]) if return_last_state else y[0]


def bidirectional_scan(u, delta, A, B, C, D, delta_bias, mask=None, backend: str | None = None):
    """A forward and a reverse scan, each with its own parameters, in one call (no flipped copies).

    Args:
        u, delta: ``[2, b, d, l]`` (direction 0 scans from the first step, direction 1 from the last);
            ``delta`` before ``delta_bias`` and softplus (both always applied).
        A: ``[2, d, n]``. B, C: ``[2, b, n, l]``. D, delta_bias: ``[2, d]``.
        mask: ``[b, l]`` bool, True = real step; a padded step has ``delta = 0`` (the state passes through it
            untouched and it injects nothing), or None.
        backend: as in :func:`selective_scan`.
    Returns:
        ``y [2, b, d, l]`` (``C h + D u`` per direction, ungated) in ``u``'s dtype.
    """
    chosen = _backend(u[0], backend)
    if chosen in ("ref", "mamba_ssm"):
        valid = None if mask is None else mask[:, None, :].to(torch.float32)
        ys = []
        for k in range(2):
            dk = F.softplus(delta[k].float() + delta_bias[k].float()[:, None])
            dk = dk if valid is None else dk * valid
            ys.append(selective_scan(u[k], dk, A[k], B[k], C[k], D=D[k], backend=chosen, reverse=bool(k)))
        return torch.stack(ys)
    y, _, _, _ = torch.ops.eegfm.scan_fwd(
        u.contiguous(), delta.contiguous(), A.contiguous(), B.unsqueeze(2).contiguous(), C.unsqueeze(2).contiguous(),
        D, None, delta_bias, None if mask is None else mask.to(torch.uint8).contiguous(), True, False, chosen,
    )
    return y


def bidirectional_scan_forward(u, delta, A, B, C, D, delta_bias, mask, backend: str):
    """:func:`bidirectional_scan` for a fused block's own autograd function (``backend`` "torch" or
    "triton", already resolved; call without autograd): ``(y [2, b, d, l], saved)`` where ``saved`` is what
    :func:`bidirectional_scan_backward` needs besides the inputs."""
    y, _, hs, y_pre = torch.ops.eegfm.scan_fwd(
        u, delta, A, B.unsqueeze(2), C.unsqueeze(2), D, None, delta_bias,
        None if mask is None else mask.to(torch.uint8), True, False, backend,
    )
    return y, (hs, y_pre)


def bidirectional_scan_backward(u, delta, A, B, C, D, delta_bias, mask, backend: str, saved, gy):
    """Gradients of :func:`bidirectional_scan_forward` for ``gy = dL/dy [2, b, d, l]``:
    ``(du, ddelta, dA, dB [2, b, n, l], dC, dD, d delta_bias)`` (``ddelta`` for delta before bias/softplus)."""
    hs, y_pre = saved
    k, b, d, _ = u.shape
    glast = torch.zeros(k, b, d, A.shape[-1], device=u.device)
    du, ddelta, dA, dB, dC, dD, _, dbias = torch.ops.eegfm.scan_bwd(
        u, delta, A, B.unsqueeze(2), C.unsqueeze(2), D, None, delta_bias,
        None if mask is None else mask.to(torch.uint8), True, False, backend, hs, y_pre, gy.contiguous(), glast,
    )
    return du, ddelta, dA, dB.squeeze(2), dC.squeeze(2), dD, dbias
