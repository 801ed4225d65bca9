"""Selective scan (Mamba's S6 recurrence) with a fused-kernel path on CUDA and a chunked path on CPU.

The dispatch, the chunked torch scan with its autograd function, and the sequential reference the tests hold the
other paths to; the Triton kernels are :mod:`foundation.ssm_triton`.

The recurrence, per batch ``b``, channel ``d`` and state ``n`` (``t`` = time)::

    h[t] = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * B[n, t] * u[t]
    y[t] = sum_n C[n, t] * h[t, n]  (+ D[d] * u[t])   (* silu(z[t]))

``selective_scan`` has the signature and semantics of ``mamba_ssm``'s ``selective_scan_fn``. One dispatch
point (:func:`selective_scan_backend`) picks the implementation:

* ``"mamba_ssm"``: ``mamba_ssm``'s fused CUDA kernel, when that package imports and the tensors are on CUDA;
* ``"triton"``: our Triton kernels (:mod:`foundation.ssm_triton`), when triton imports and the tensors are
  on CUDA (no CUDA compiler needed);
* ``"torch"``: our pure-PyTorch chunked scan (:class:`_ChunkedScan`), everywhere else (and for float64);
* ``"ref"``: :func:`selective_scan_ref`, only when forced.

``selective_scan(..., backend=...)`` (from ``EEGMambaConfig.scan_backend``) or the environment variable
``EEGFM_SCAN_BACKEND`` forces one of them (tests, benchmarks, bug reports); ``"auto"`` (the default)
applies the order above. The chunked torch scan is built for a memory-bound CPU:

* Time is cut into ``n_chunks`` chunks of ``K`` steps (``K ~ sqrt(L / 2)``), and consecutive chunks into
  groups sized so one ``[K, b, d, chunks, n]`` scratch buffer holds at most 2**19 numbers (2 MiB: the
  buffers stay cache-resident between the passes over a group). At realistic sizes (``b * d * K * n``
  above that) a group is one chunk: its entering state is known, so one in-place pass of ``K`` fused
  ``addcmul_`` steps over ``[b, d, n]`` slabs gives its states. Smaller problems pack several chunks per
  group: the recurrence runs step by step inside the chunks for all the group's chunks at once, the
  chunk-boundary states are carried across chunks, and a second pass gives the true states. ``y`` comes
  from one fused multiply-reduce per group. The decays ``exp(delta A)`` (the costliest op: ``exp`` is
  compute-bound) are evaluated once per group and reused by every pass over it.
* Inputs and gradients change layout (``[b, d, l]`` <-> step-major ``[K, b, g, c, h]``) inside the
  autograd function with cache-tiled transposes, 3-4x cheaper than a plain strided copy.
* Decays are applied as products of ``exp(delta * A) <= 1`` step by step, never as ``exp(-cumsum)``: that
  log-space trick overflows in fp32 once ``|sum delta * A|`` passes ~88 (chunks longer than ~16 steps or
  large ``delta``), while a product of numbers in ``[0, 1]`` can only underflow towards its true value 0.
* The forward pass saves only its (rearranged) inputs and the chunk-start states (``O(b d n L / K)``); the
  ``[b, d, L, n]`` states are never stored. The backward pass recomputes them a group of chunks at a time and
  runs the adjoint (reverse-time) recurrence, as ``mamba_ssm``'s CUDA kernel does. Activation memory is
  therefore ``O(b d L)``, not ``O(b d L n)``.

``selective_scan_ref`` is a plain loop over time for tests.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_backend", "chunked_scan", "SCAN_BACKENDS"]

#: Values of ``backend`` / ``EEGFM_SCAN_BACKEND`` / ``EEGMambaConfig.scan_backend``.
SCAN_BACKENDS = ("auto", "mamba_ssm", "triton", "torch", "ref")
SCAN_BACKEND_ENV = "EEGFM_SCAN_BACKEND"

# Elements per ``[K, b, d, chunks, n]`` scratch buffer (2 live in the forward pass, 3 in the backward):
# 2**19 fp32 = 2 MiB keeps the transient memory bounded whatever L is and the buffers cache-resident
# between the passes over a group (measured 5-30% faster than 16 MiB buffers at B=8, d=256, n=16,
# L=512..8192, where a group is then one chunk and the single-chunk fast path applies).
_BWD_BUFFER_ELEMENTS = 1 << 19


@functools.lru_cache(maxsize=1)
def _load_mamba_scan() -> Callable | None:
    """``mamba_ssm``'s fused ``selective_scan_fn``, or None where it cannot be imported.

    mamba-ssm imports its CUDA extension at module import time, so on a CPU-only install even its
    reference implementation raises; any import failure simply means "use our path".
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError, RuntimeError):
        return None
    return selective_scan_fn


def _is_cuda(t: torch.Tensor) -> bool:
    return t.is_cuda


@functools.lru_cache(maxsize=1)
def _load_triton_module():
    """:mod:`foundation.ssm_triton` when triton imports, else None."""
    from foundation import ssm_triton

    return ssm_triton if ssm_triton.triton is not None else None


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
    ``"mamba_ssm"``, ``"triton"``, ``"torch"``, ``"ref"``; ``"auto"`` picks mamba-ssm, then Triton, on CUDA, and
    the chunked torch scan otherwise (and for float64, which the kernels compute in float32).

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
        return "torch"
    if choice == "mamba_ssm" and (_load_mamba_scan() is None or not _is_cuda(u)):
        raise RuntimeError(
            "selective_scan: backend 'mamba_ssm' was forced but "
            + ("mamba_ssm does not import (pip install 'eegfm[cuda]')" if _load_mamba_scan() is None
               else f"the tensors are on {u.device}, not CUDA")
        )
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
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Sequential reference: one recurrence step per time step (slow; for tests).

    Shapes as in :func:`selective_scan`. Computes in float32 (float64 stays float64) and returns ``y`` in
    ``u``'s dtype, like ``mamba_ssm``'s ``selective_scan_ref``.
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
    ys = []
    for t in range(l):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * Bd[..., t] * u[:, :, t, None]
        ys.append((h * Cd[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if l else u.new_zeros(b, d, 0)
    out = y if D is None else y + u * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


def _default_chunk(l: int) -> int:
    # 2K + L/K Python steps is smallest at K = sqrt(L/2); clamp so per-step tensors stay large enough to
    # amortise dispatch overhead at short L and the chunk loop stays short at long L.
    return int(min(64, max(8, round(math.sqrt(max(l, 1) / 2)))))


class _ChunkedScan(torch.autograd.Function):
    """Core recurrence ``y[t] = C[t] . h[t]`` on step-major chunked tensors, with a recomputing backward.

    Inputs (all in the compute dtype, time padded to ``c * K``; ``g`` groups of ``h`` channels share B, C):
    ``dk, uk: [K, b, g, c, h]``, ``A: [g, h, n]``, ``Bk, Ck: [K, b, g, c, n]``.
    Outputs ``y: [K, b, g, c, h]`` and the last state ``[b, g, h, n]``.

    Chunks are processed in groups of consecutive chunks, in time order (reverse order in the backward
    pass), so that one group's decays ``exp(delta A)`` and inputs ``delta u B`` fit in two
    ``[K, b, g, chunks, h, n]`` buffers of at most ``_BWD_BUFFER_ELEMENTS``: each ``exp`` (the costliest
    op, compute-bound) is evaluated once per pass, and the buffers are reused by the passes over the group.
    The ``c`` axis sits before ``h`` so every contraction over ``n`` or ``h`` is a plain ``bmm`` over a
    batch of ``(k b g c)`` without copies.
    """

    @staticmethod
    def forward(ctx, delta, u, A, B, C, K):
        # Layout changes happen here, not through autograd-tracked rearranges, so the backward pass
        # can use the same cache-blocked transposes (see _step_major) for the gradients.
        g = B.shape[1]
        dk, uk = _step_major(delta, g, K), _step_major(u, g, K)
        Bk, Ck = _step_major(B.flatten(1, 2), g, K), _step_major(C.flatten(1, 2), g, K)
        K, b, g, c, hh = dk.shape
        n = A.shape[-1]
        A_ = A.unsqueeze(1)  # [g, 1, h, n]
        G = _group_size(K, b, g, hh, n, c)
        hs = dk.new_empty(b, g, c, hh, n)  # state entering each chunk: all the backward pass needs
        y = dk.new_empty(K, b, g, c, hh)
        state = dk.new_zeros(b, g, hh, n)
        bufs = _Buffers(dk, K * b * g * G * hh * n, 2)
        for c0 in range(0, c, G):
            sl = slice(c0, min(c, c0 + G))
            cn = sl.stop - sl.start
            dks = dk[:, :, :, sl]
            shape = (K, b, g, cn, hh, n)
            abuf = _decays(dks, A_, bufs.get(0, shape))
            hbuf = _inputs(dks, uk[:, :, :, sl], Bk[:, :, :, sl], bufs.get(1, shape))
            if cn == 1:
                # A one-chunk group (the usual case at d_inner * b >= 1024): the state entering it is
                # already known, so passes 1-2 reduce to storing it; pass 3 alone gives the states.
                hs[:, :, c0] = state
            else:
                # Pass 1: each chunk's end state from a zero start, all chunks of the group at once.
                hloc, tmp = hbuf[0].clone(), torch.empty_like(hbuf[0])
                for k in range(1, K):
                    torch.addcmul(hbuf[k], abuf[k], hloc, out=tmp)
                    hloc, tmp = tmp, hloc
                # Pass 2: carry the state across the group's chunk boundaries. The whole-chunk decay
                # exp(A * sum(delta)) has an exponent <= 0, so it cannot overflow (unlike exp(-cumsum)).
                P = torch.exp(torch.mul(dks.sum(0).unsqueeze(-1), A_, out=tmp), out=tmp)
                for j in range(cn):
                    hs[:, :, c0 + j] = state
                    state = torch.addcmul(hloc[:, :, j], P[:, :, j], state)
                del hloc, tmp, P
            # Pass 3: the true states, in place over the inputs, then y for the whole group in one bmm.
            hbuf[0].addcmul_(abuf[0], hs[:, :, sl])
            for k in range(1, K):
                hbuf[k].addcmul_(abuf[k], hbuf[k - 1])
            # vecdot (fused multiply-reduce) beats a bmm of [h, n] x [n, 1] products (n is tiny).
            torch.linalg.vecdot(hbuf, Ck[:, :, :, sl].unsqueeze(-2), out=y[:, :, :, sl])
            if cn == 1:
                state = hbuf[K - 1, :, :, 0].clone()
            del abuf, hbuf
        ctx.save_for_backward(dk, uk, A, Bk, Ck, hs)
        return _time_major(y), state

    @staticmethod
    def backward(ctx, gy, glast):
        dk, uk, A, Bk, Ck, hs = ctx.saved_tensors
        K, b, g, c, hh = dk.shape
        n = A.shape[-1]
        A_ = A.unsqueeze(1)
        gy = _step_major(gy, g, K)
        G = _group_size(K, b, g, hh, n, c)
        ddelta = torch.empty_like(dk)
        du = torch.empty_like(uk)
        dB = torch.empty_like(Bk)
        dC = torch.empty_like(Ck)
        dA = torch.zeros_like(A)
        # r = dL/dh flowing into the current group's last step from later groups (and from last_state).
        r = glast.to(dk.dtype) if glast is not None else dk.new_zeros(b, g, hh, n)
        bufs = _Buffers(dk, K * b * g * G * hh * n, 3)
        for c0 in reversed(range(0, c, G)):
            sl = slice(c0, min(c, c0 + G))
            cn = sl.stop - sl.start
            dks, uks, Bks, Cks, gys = dk[:, :, :, sl], uk[:, :, :, sl], Bk[:, :, :, sl], Ck[:, :, :, sl], gy[:, :, :, sl]
            hs_sl = hs[:, :, sl]
            shape = (K, b, g, cn, hh, n)
            abuf = _decays(dks, A_, bufs.get(0, shape))
            duks = dks * uks
            # Recompute the states h[t] of the group, in place over its inputs delta u B.
            hbuf = _inputs(dks, uks, Bks, bufs.get(1, shape))
            hbuf[0].addcmul_(abuf[0], hs_sl)
            for k in range(1, K):
                hbuf[k].addcmul_(abuf[k], hbuf[k - 1])
            # Adjoint lambda[t] = C[t] gy[t] + a[t+1] lambda[t+1], first with nothing entering each chunk...
            lbuf = torch.mul(gys.unsqueeze(-1), Cks.unsqueeze(-2), out=bufs.get(2, shape))
            if cn == 1:
                # One chunk: what enters its last step from later groups is known, so one pass suffices.
                lbuf[K - 1].add_(r.unsqueeze(2))
                for k in range(K - 2, -1, -1):
                    lbuf[k].addcmul_(abuf[k + 1], lbuf[k + 1])
                r = abuf[0, :, :, 0] * lbuf[0, :, :, 0]  # what leaves its first step into the previous chunk
            else:
                for k in range(K - 2, -1, -1):
                    lbuf[k].addcmul_(abuf[k + 1], lbuf[k + 1])
                # ...then rho[c], what enters chunk c's last step from later chunks, carried chunk to chunk...
                zeta = abuf[0] * lbuf[0]  # what leaves each chunk's first step into the previous chunk
                P = torch.exp(torch.mul(dks.sum(0).unsqueeze(-1), A_))
                q = torch.empty_like(zeta)
                for j in reversed(range(cn)):
                    q[:, :, j] = r
                    r = torch.addcmul(zeta[:, :, j], P[:, :, j], r)
                del zeta, P
                # ...and added back: lambda[t] += (a[t+1] ... a[K-1]) rho.
                for k in range(K - 1, -1, -1):
                    lbuf[k].add_(q)
                    if k:
                        q.mul_(abuf[k])
                del q
            m = K * b * g * cn
            lv, hv = lbuf.view(m, hh, n), hbuf.view(m, hh, n)
            # y[t] = C[t] . h[t]  ->  dC[t] = sum_h gy[t] h[t];   h[t] gets delta[t] u[t] B[t]  ->  dB, du, ddelta.
            dC[:, :, :, sl] = torch.bmm(gys.reshape(m, 1, hh), hv).view(K, b, g, cn, n)
            dB[:, :, :, sl] = torch.bmm(duks.reshape(m, 1, hh), lv).view(K, b, g, cn, n)
            v = torch.linalg.vecdot(lbuf, Bks.unsqueeze(-2))  # sum_n lambda B
            # dL/d(delta A)[t] = lambda[t] * a[t] * h[t-1], in place over abuf.
            W = abuf.mul_(lbuf)
            W[1:].mul_(hbuf[:-1])
            W[0].mul_(hs_sl)
            ddelta[:, :, :, sl] = torch.mul(W, A_, out=hbuf).sum(-1).addcmul_(v, uks)
            du[:, :, :, sl] = v.mul_(dks)
            dA += W.mul_(dks.unsqueeze(-1)).sum(dim=(0, 1, 3))
            del abuf, hbuf, lbuf, W, v
        return (
            _time_major(ddelta), _time_major(du), dA,
            _time_major(dB).view(b, g, n, -1), _time_major(dC).view(b, g, n, -1), None,
        )


# Rows per tile in the [b, e, l] <-> [b, l, e] transposes: a naive strided copy of a whole [e, l] plane
# thrashes the cache (4x slower than these tiles, and ~14% of the scan's time before tiling).
_TILE = 16


def _step_major(x: torch.Tensor, g: int, K: int) -> torch.Tensor:
    """``[b, (g h), (c k)] -> [k, b, g, c, h]`` contiguous, via a tiled transpose then whole-row moves."""
    b, e, l = x.shape
    xt = x.new_empty(b, l, e)
    for i in range(0, e, _TILE):
        xt[:, :, i : i + _TILE] = x[:, i : i + _TILE].transpose(1, 2)
    return xt.view(b, l // K, K, g, e // g).permute(2, 0, 3, 1, 4).contiguous()


def _time_major(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_step_major`: ``[k, b, g, c, h] -> [b, (g h), (c k)]`` contiguous."""
    K, b, g, c, hh = y.shape
    yt = y.permute(1, 3, 0, 2, 4).reshape(b, c * K, g * hh)
    out = y.new_empty(b, g * hh, c * K)
    for i in range(0, g * hh, _TILE):
        out[:, i : i + _TILE] = yt[:, :, i : i + _TILE].transpose(1, 2)
    return out


def _group_size(K: int, b: int, g: int, hh: int, n: int, c: int) -> int:
    """Chunks per group so that one ``[K, b, g, chunks, h, n]`` buffer holds at most ``_BWD_BUFFER_ELEMENTS``."""
    return max(1, min(c, _BWD_BUFFER_ELEMENTS // max(1, K * b * g * hh * n)))


class _Buffers:
    """Flat scratch buffers reused by every group: a fresh multi-MiB tensor per group would cost page
    faults (the allocator returns big blocks to the OS) comparable to the arithmetic itself."""

    def __init__(self, like: torch.Tensor, numel: int, count: int):
        self.flat = [like.new_empty(numel) for _ in range(count)]

    def get(self, i: int, shape: tuple[int, ...]) -> torch.Tensor:
        return self.flat[i][: math.prod(shape)].view(shape)


def _decays(dks: torch.Tensor, A_: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``exp(delta A)``: ``[K, b, g, c, h] x [g, 1, h, n] -> [K, b, g, c, h, n]``, each entry in (0, 1]."""
    return torch.mul(dks.unsqueeze(-1), A_, out=out).exp_()


def _inputs(dks: torch.Tensor, uks: torch.Tensor, Bks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``delta u B``: ``[K, b, g, c, h]``, ``[K, b, g, c, n] -> [K, b, g, c, h, n]``."""
    return torch.mul((dks * uks).unsqueeze(-1), Bks.unsqueeze(-2), out=out)


def chunked_scan(u, delta, A, B, C, chunk_size: int | None = None):
    """Our CPU scan of the bare recurrence: ``y[t] = C[t] . h[t]`` (no D, z, bias or softplus).

    ``u, delta: [b, d, l]``, ``A: [d, n]``, ``B, C: [b, g, n, l]`` (``g`` divides ``d``; ``g = 1`` is the
    ungrouped case). Returns ``(y [b, d, l], last_state [b, d, n])`` in the compute dtype (float32, or
    float64 for float64 inputs).
    """
    b, d, l = u.shape
    g = B.shape[1]
    if C.shape[1] != g:  # B and C grouped differently: expand both to per-channel groups
        B = B.repeat_interleave(d // g, dim=1)
        C = C.repeat_interleave(d // C.shape[1], dim=1)
        g = d
    K = chunk_size or _default_chunk(l)
    nc = max(1, -(-l // K))
    pad = nc * K - l
    if pad:
        # delta = 0 at padded steps: decay exp(0) = 1 and no input, so the last state is carried through.
        u, delta, B, C = (F.pad(x, (0, pad)) for x in (u, delta, B, C))
    Ag = rearrange(A, "(g h) n -> g h n", g=g).contiguous()
    y, last = _ChunkedScan.apply(delta, u, Ag, B, C, K)
    y = y[..., :l]
    return y, rearrange(last, "b g h n -> b (g h) n")


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    backend: str | None = None,
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

    Returns:
        ``y [b, d, l]`` in ``u``'s dtype, and ``last_state [b, d, n]`` when asked for.

    On CUDA this is ``mamba_ssm``'s fused kernel when installed, else our Triton kernels; otherwise
    :func:`chunked_scan` (float32 compute, float64 for float64 inputs).
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=return_last_state)
    chosen = selective_scan_backend(u, backend)
    if chosen == "mamba_ssm":
        return _load_mamba_scan()(u, delta, A, B, C, **kwargs)
    if chosen == "ref":
        return selective_scan_ref(u, delta, A, B, C, **kwargs)
    if chosen == "triton":
        return _load_triton_module().selective_scan_triton(u, delta, A, B, C, **kwargs)
    dtype_in = u.dtype
    ct = torch.promote_types(dtype_in, torch.float32)
    b, d, l = u.shape
    uc, delta, A = u.to(ct), delta.to(ct), A.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y, last = chunked_scan(uc, delta, A, _grouped(B, b, l).to(ct), _grouped(C, b, l).to(ct))
    if D is not None:
        y = y + uc * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y
