"""Selective scan (Mamba's S6 recurrence) as Triton kernels with time on the lanes.

The recurrence, per batch row, channel ``d`` and state ``n``, in scan order (forward: ``t = 0 .. L-1``;
reverse: ``t = L-1 .. 0``)::

    h[t] = exp(dt[t] A[d, n]) h[t-1] + dt[t] B[n, t] u[t]        dt = softplus(delta + bias) * valid
    y[t] = sum_n C[n, t] h[t, n] (+ D u[t]) (* silu z[t])

Layout. A program owns one batch row, ``BLOCK_D`` channels (one or two) and walks time in chunks of ``T``
steps (a few hundred), each chunk a ``[BLOCK_D, T]`` tile with time on the lanes. Per chunk the
per-(channel, step) work (bias, softplus, the padding mask, ``dt u``, ``D``, ``silu z``) is done once, then
a loop over the N states runs one ``tl.associative_scan`` of the affine maps ``x -> a x + b`` along time per
state and carries the state from chunk to chunk. B and C rows are contiguous along time (coalesced
loads); the state is float32 whatever the input dtype. Directions are an index map, not a flip: in the
reverse direction lane ``i`` of chunk ``c`` is step ``c T + T - 1 - i`` and chunks run last to first, so
both directions of a bidirectional block are one launch (a grid axis) over the same unflipped tensors.

Backward: recompute plus a reverse scan. Per chunk (in reverse scan order) the states are recomputed from
the state saved at the chunk's start (``[.., n_chunks, n]``, ``n / T`` of an input's size), the adjoint
``lam[t] = C[t] gy[t] + a[t + 1] lam[t + 1]`` is a suffix scan of the same combine function, and the
gradients follow per step: ``dB``/``dC`` (shared by the channels of a group) are summed over the
program's channels and added with coalesced float32 atomics along time; ``dA``, ``dD`` and
``d delta_bias`` are per-program partial sums that torch reduces.

State passing (batch 1, very long L): with few (batch, channel) programs the chunks of one row are split
into ``segments`` that run in parallel. A first pass gives each segment's local end state from a zero
start and its decay ``exp(A sum(dt))``; a few torch ops carry the true entering states across segments;
the full pass then starts every segment from its own state. The backward pass does the same for the
adjoint.

Padding (``valid = 0`` or a step past ``L``): ``dt = 0``, so ``a = exp2(0) = 1`` and ``b = 0``, the identity
map, and combining with the identity is exact in floating point. Chunks are aligned at ``t = 0`` whatever
``L`` is, and the block sizes depend on the shapes except ``L``, so trailing padding leaves every real output
and the last state bit-for-bit unchanged (except where the state-passing split is used: its segment
boundaries follow ``L``, and the carried states are rounded differently). An interior hole changes how the
scan's tree groups the real steps around it, so real outputs there agree with the unpadded sequence to float
rounding (``tests/test_ssm_triton.py`` bounds it at 1e-5 relative), not bit for bit.

The reverse scan in registers uses ``tl.associative_scan(..., reverse=True)``; some Triton releases got
that wrong for non-commutative combine functions, so :func:`reverse_scan_mode` checks it once per process
on the GPU against ``flip(scan(flip))`` and falls back to the latter.

Triton is optional: ``triton`` is ``None`` here when it does not import. Kernels are decorated on first use,
so ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, used by the tests) takes effect whenever it is set
before that first call.
"""

from __future__ import annotations

import functools
import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: callers fall back to the torch scan
    triton = None
    tl = None

__all__ = [
    "TUNING", "LaunchConfig", "interpreting", "kernels", "launch_config", "launch_time_block", "reverse_scan_mode",
    "scan_backward", "scan_forward", "triton",
]

#: Overrides of the launch heuristics (``benchmarks/gpu.py`` sweeps them; None = heuristic).
#: ``time_block``: steps per chunk T; ``block_d``: channels per program; ``segments``: state-passing segments
#: per row; ``warps``: warps per program; ``reverse_scan``: "native" or "flip".
TUNING: dict[str, int | str | None] = {"time_block": None, "block_d": None, "segments": None, "warps": None,
                                       "reverse_scan": None}
#: Defaults on a GPU (first guesses for an H100; the sweep in benchmarks/gpu.py reports alternatives).
TIME_BLOCK, BLOCK_D = 256, 2
#: Under TRITON_INTERPRET=1 (tests): short chunks, so small L crosses several chunk boundaries.
INTERPRET_TIME_BLOCK = 8
#: Programs below which a row's chunks are split into state-passing segments (about 8 per SM of an H100).
MIN_PROGRAMS = 1024
_LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """True when Triton's CPU interpreter is on (``TRITON_INTERPRET=1``): kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# --------------------------------------------------------------------------------------- jit helpers


def _combine(a1, b1, a2, b2):
    """Compose the affine maps ``x -> a1 x + b1`` (earlier) then ``x -> a2 x + b2`` (later)."""
    return a1 * a2, a2 * b1 + b2


def _suffix_scan(a, b, FLIP: tl.constexpr):
    """Suffix composition along axis 1 (lane ``i`` composes lanes ``i .. T-1``, later ones applied first)."""
    if FLIP:
        fa, fb = tl.associative_scan((tl.flip(a, 1), tl.flip(b, 1)), 1, _combine)
        return tl.flip(fa, 1), tl.flip(fb, 1)
    else:
        return tl.associative_scan((a, b), 1, _combine, reverse=True)


def _softplus(x):
    """torch's softplus (threshold 20); ``log1p(e) = log(w) e / (w - 1)`` (Kahan) stays accurate for tiny e."""
    e = tl.exp(x)
    w = 1.0 + e
    sp = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, sp)


def _steps(kk, n_chunks, rev, T: tl.constexpr):
    """Time index of every lane of scan-order chunk ``kk`` ``[T]``, and the chunk's index in time."""
    c = kk + rev * (n_chunks - 1 - 2 * kk)
    lane = tl.arange(0, T)
    return c * T + lane + rev * (T - 1 - 2 * lane), c


def _program(bias_ptr, L, DIM, NB, NSEG, REV0, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_N: tl.constexpr):
    """What every scan program starts from: its batch row ``pid_b``, direction ``k``, segment ``seg`` and scan
    direction ``rev``; its channels ``offs_d`` (``ok_d`` in range), states ``offs_n``, rows ``kd`` of A, D and
    bias, time-series starts ``row``, and its channels' ``bias`` (0 without one)."""
    pid_d, pid_b, pid_ks = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    k, seg = pid_ks // NSEG, pid_ks % NSEG
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    ok_d = offs_d < DIM
    kd = k * DIM + offs_d  # [BD] rows of A, D, bias
    row = ((k * NB + pid_b) * DIM + offs_d) * L  # [BD] start of each channel's time series
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + kd, mask=ok_d, other=0.0).to(tl.float32)
    return pid_d, pid_b, k, seg, (k + REV0) % 2, offs_d, tl.arange(0, BLOCK_N), ok_d, kd, row, bias


def _load_dt(dt_ptr, row, t, ok_t, ok_d, bias, mask_ptr, mask_row,
             HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_MASK: tl.constexpr):
    """``(dt, raw, keep)`` ``[BD, T]`` at steps ``t`` (``ok_t`` where in range): raw = delta (+ bias); dt =
    softplus(raw), exactly 0 outside the sequence and at padding (``keep`` False there)."""
    keep = ok_d[:, None] & ok_t[None, :]
    raw = tl.load(dt_ptr + row[:, None] + t[None, :], mask=keep, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    if HAS_MASK:
        valid = tl.load(mask_ptr + mask_row + t, mask=ok_t, other=0)
        keep = keep & (valid != 0)[None, :]
    return tl.where(keep, dt, 0.0), raw, keep


def _column(tile, offs_n, n):
    """Column ``n`` of a ``[BD, BLOCK_N]`` tile as ``[BD]``."""
    return tl.sum(tl.where(offs_n[None, :] == n, tile, 0.0), axis=1)


def _set_column(tile, offs_n, n, value):
    return tl.where(offs_n[None, :] == n, value[:, None], tile)


def _lane(tile, T: tl.constexpr, i):
    """Lane ``i`` of a ``[BD, T]`` tile as ``[BD]``."""
    return tl.sum(tl.where(tl.arange(0, T)[None, :] == i, tile, 0.0), axis=1)


# ------------------------------------------------------------------------------------------- forward


def _fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, mask_ptr, h0_ptr, y_ptr, last_ptr, hs_ptr,
    L, DIM, DPG, N, NB, NCHUNK, SEG, NSEG, REV0, sB_k, sB_b, sB_g, sB_n, sC_k, sC_b, sC_g, sC_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_H0: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
):
    """One (channel block, batch row, direction x segment): states, outputs, chunk-start states."""
    pid_d, pid_b, k, seg, rev, offs_d, offs_n, ok_d, kd, row, bias = _program(
        bias_ptr, L, DIM, NB, NSEG, REV0, HAS_BIAS, BLOCK_D, BLOCK_N)
    ok_dn = ok_d[:, None] & (offs_n < N)[None, :]
    g = (pid_d * BLOCK_D) // DPG
    b_row = B_ptr + k * sB_k + pid_b * sB_b + g * sB_g
    c_row = C_ptr + k * sC_k + pid_b * sC_b + g * sC_g
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + kd, mask=ok_d, other=0.0).to(tl.float32)
    state_rows = ((k * NB + pid_b) * DIM + offs_d)[:, None]  # [BD, 1] rows of last / h0 / hs
    if HAS_H0:
        h = tl.load(h0_ptr + (state_rows * NSEG + seg) * N + offs_n[None, :], mask=ok_dn, other=0.0)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for kk in range(seg * SEG, tl.minimum(seg * SEG + SEG, NCHUNK)):
        t, c = _steps(kk, NCHUNK, rev, T)
        ok = ok_d[:, None] & (t < L)[None, :]
        tl.store(hs_ptr + (state_rows * NCHUNK + c) * N + offs_n[None, :], h, mask=ok_dn)
        dt, raw, keep = _load_dt(dt_ptr, row, t, t < L, ok_d, bias, mask_ptr, pid_b * L, HAS_BIAS, SOFTPLUS, HAS_MASK)
        uu = tl.load(u_ptr + row[:, None] + t[None, :], mask=ok, other=0.0).to(tl.float32)
        dtu = dt * uu
        y = tl.zeros([BLOCK_D, T], dtype=tl.float32)
        for n in range(0, N):
            A2 = tl.load(A_ptr + kd * N + n, mask=ok_d, other=0.0).to(tl.float32) * 1.4426950408889634
            Bn = tl.load(b_row + n * sB_n + t, mask=t < L, other=0.0).to(tl.float32)
            Cn = tl.load(c_row + n * sC_n + t, mask=t < L, other=0.0).to(tl.float32)
            pa, pb = tl.associative_scan((tl.exp2(dt * A2[:, None]), dtu * Bn[None, :]), 1, _combine)
            hn = pa * _column(h, offs_n, n)[:, None] + pb
            y += hn * Cn[None, :]
            h = _set_column(h, offs_n, n, _lane(hn, T, T - 1))
        if HAS_D:
            y += uu * Dv[:, None]
        if HAS_Z:
            zz = tl.load(z_ptr + row[:, None] + t[None, :], mask=ok, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + row[:, None] + t[None, :], y.to(y_ptr.dtype.element_ty), mask=ok)
    if seg == NSEG - 1:
        tl.store(last_ptr + state_rows * N + offs_n[None, :], h, mask=ok_dn)


def _fwd_local_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, mask_ptr, hend_ptr, dtsum_ptr,
    L, DIM, DPG, N, NB, NCHUNK, SEG, NSEG, REV0, sB_k, sB_b, sB_g, sB_n,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
):
    """State passing, first pass: each segment's end state from a zero start, and its sum of dt (its decay
    over the segment is ``exp(A sum(dt))``)."""
    pid_d, pid_b, k, seg, rev, offs_d, offs_n, ok_d, kd, row, bias = _program(
        bias_ptr, L, DIM, NB, NSEG, REV0, HAS_BIAS, BLOCK_D, BLOCK_N)
    b_row = B_ptr + k * sB_k + pid_b * sB_b + ((pid_d * BLOCK_D) // DPG) * sB_g
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    total = tl.zeros([BLOCK_D], dtype=tl.float32)
    for kk in range(seg * SEG, tl.minimum(seg * SEG + SEG, NCHUNK)):
        t, c = _steps(kk, NCHUNK, rev, T)
        ok = ok_d[:, None] & (t < L)[None, :]
        dt, raw, keep = _load_dt(dt_ptr, row, t, t < L, ok_d, bias, mask_ptr, pid_b * L, HAS_BIAS, SOFTPLUS, HAS_MASK)
        dtu = dt * tl.load(u_ptr + row[:, None] + t[None, :], mask=ok, other=0.0).to(tl.float32)
        total += tl.sum(dt, axis=1)
        for n in range(0, N):
            A2 = tl.load(A_ptr + kd * N + n, mask=ok_d, other=0.0).to(tl.float32) * 1.4426950408889634
            Bn = tl.load(b_row + n * sB_n + t, mask=t < L, other=0.0).to(tl.float32)
            pa, pb = tl.associative_scan((tl.exp2(dt * A2[:, None]), dtu * Bn[None, :]), 1, _combine)
            hn = _lane(pa, T, T - 1) * _column(h, offs_n, n) + _lane(pb, T, T - 1)
            h = _set_column(h, offs_n, n, hn)
    rows = ((k * NB + pid_b) * DIM + offs_d) * NSEG + seg
    tl.store(hend_ptr + rows[:, None] * N + offs_n[None, :], h, mask=ok_d[:, None] & (offs_n < N)[None, :])
    tl.store(dtsum_ptr + rows, total, mask=ok_d)


# ------------------------------------------------------------------------------------------ backward


def _bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, mask_ptr, hs_ptr, gy_ptr, g0_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    L, DIM, DPG, G, N, NB, NCHUNK, SEG, NSEG, REV0, sB_k, sB_b, sB_g, sB_n, sC_k, sC_b, sC_g, sC_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    SOFTPLUS: tl.constexpr, FLIP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
):
    """One program of the backward pass: chunks in reverse scan order, recomputed states, suffix-scanned
    adjoint; ``g0`` holds the adjoint entering each segment's last step (``glast`` for the last segment)."""
    pid_d, pid_b, k, seg, rev, offs_d, offs_n, ok_d, kd, row, bias = _program(
        bias_ptr, L, DIM, NB, NSEG, REV0, HAS_BIAS, BLOCK_D, BLOCK_N)
    ok_dn = ok_d[:, None] & (offs_n < N)[None, :]
    g = (pid_d * BLOCK_D) // DPG
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + kd, mask=ok_d, other=0.0).to(tl.float32)
    state_rows = ((k * NB + pid_b) * DIM + offs_d)[:, None]
    lam_in = tl.load(g0_ptr + (state_rows * NSEG + seg) * N + offs_n[None, :], mask=ok_dn, other=0.0)
    acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # dA
    acc_d = tl.zeros([BLOCK_D], dtype=tl.float32)  # dD
    acc_b = tl.zeros([BLOCK_D], dtype=tl.float32)  # d delta_bias
    last_kk = tl.minimum(seg * SEG + SEG, NCHUNK) - 1
    for q in range(0, last_kk - seg * SEG + 1):
        lam_in, acc, acc_d, acc_b = _bwd_chunk(
            u_ptr, dt_ptr, A_ptr, B_ptr + k * sB_k + pid_b * sB_b + g * sB_g, C_ptr + k * sC_k + pid_b * sC_b + g * sC_g,
            z_ptr, mask_ptr, hs_ptr, gy_ptr, du_ptr, ddt_ptr, dz_ptr,
            dB_ptr + ((k * NB + pid_b) * G + g) * N * L, dC_ptr + ((k * NB + pid_b) * G + g) * N * L,
            last_kk - q, rev, row, kd, state_rows, offs_n, ok_d, ok_dn, Dv, bias, lam_in, acc, acc_d, acc_b,
            L, N, NCHUNK, pid_b * L, sB_n, sC_n, HAS_D, HAS_Z, HAS_BIAS, HAS_MASK, SOFTPLUS, FLIP, BLOCK_D, BLOCK_N, T,
        )
    part = ((k * NB + pid_b) * NSEG + seg) * DIM + offs_d  # [BD] rows of the per-(row, segment) partial sums
    tl.store(dA_ptr + part[:, None] * N + offs_n[None, :], acc, mask=ok_dn)
    if HAS_D:
        tl.store(dD_ptr + part, acc_d, mask=ok_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + part, acc_b, mask=ok_d)


def _bwd_chunk(
    u_ptr, dt_ptr, A_ptr, b_row, c_row, z_ptr, mask_ptr, hs_ptr, gy_ptr, du_ptr, ddt_ptr, dz_ptr, dB_row, dC_row,
    kk, rev, row, kd, state_rows, offs_n, ok_d, ok_dn, Dv, bias, lam_in, acc, acc_d, acc_b,
    L, N, NCHUNK, mask_row, sB_n, sC_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    SOFTPLUS: tl.constexpr, FLIP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
):
    """Gradients of one chunk; returns the adjoint leaving its first step and the updated partial sums."""
    t, c = _steps(kk, NCHUNK, rev, T)
    step = 1 - 2 * rev
    ok = ok_d[:, None] & (t < L)[None, :]
    tn = t + step  # the next step in scan order (its decay multiplies this step's adjoint)
    dt, raw, keep = _load_dt(dt_ptr, row, t, t < L, ok_d, bias, mask_ptr, mask_row, HAS_BIAS, SOFTPLUS, HAS_MASK)
    dtn, _, _ = _load_dt(dt_ptr, row, tl.maximum(tn, 0), (tn >= 0) & (tn < L), ok_d, bias, mask_ptr, mask_row,
                         HAS_BIAS, SOFTPLUS, HAS_MASK)
    uu = tl.load(u_ptr + row[:, None] + t[None, :], mask=ok, other=0.0).to(tl.float32)
    gy = tl.load(gy_ptr + row[:, None] + t[None, :], mask=ok, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + row[:, None] + t[None, :], mask=ok, other=0.0).to(tl.float32)
        sz = tl.sigmoid(zz)
        gyz = gy * zz * sz
    else:
        gyz = gy
    dtu = dt * uu
    h_in = tl.load(hs_ptr + (state_rows * NCHUNK + c) * N + offs_n[None, :], mask=ok_dn, other=0.0)
    v = tl.zeros([BLOCK_D, T], dtype=tl.float32)  # sum_n lam B
    dda = tl.zeros([BLOCK_D, T], dtype=tl.float32)  # sum_n lam a h_prev A
    y_pre = tl.zeros([BLOCK_D, T], dtype=tl.float32)
    for n in range(0, N):
        An = tl.load(A_ptr + kd * N + n, mask=ok_d, other=0.0).to(tl.float32)
        A2 = (An * 1.4426950408889634)[:, None]
        Bn = tl.load(b_row + n * sB_n + t, mask=t < L, other=0.0).to(tl.float32)
        Cn = tl.load(c_row + n * sC_n + t, mask=t < L, other=0.0).to(tl.float32)
        bx = dtu * Bn[None, :]
        pa, pb = tl.associative_scan((tl.exp2(dt * A2), bx), 1, _combine)
        h = pa * _column(h_in, offs_n, n)[:, None] + pb
        y_pre += h * Cn[None, :]
        sa, sb = _suffix_scan(tl.exp2(dtn * A2), gyz * Cn[None, :], FLIP)
        lam = sb + sa * _column(lam_in, offs_n, n)[:, None]
        lam_in = _set_column(lam_in, offs_n, n, _lane(lam, T, 0))
        tl.atomic_add(dC_row + n * L + t, tl.sum(gyz * h, axis=0), mask=t < L)
        tl.atomic_add(dB_row + n * L + t, tl.sum(lam * dtu, axis=0), mask=t < L)
        v += lam * Bn[None, :]
        w = lam * (h - bx)  # lam a h_prev: h - bx is a h_prev without a shifted copy of h
        dda += w * An[:, None]
        acc = _set_column(acc, offs_n, n, _column(acc, offs_n, n) + tl.sum(w * dt, axis=1))
    du = dt * v
    if HAS_D:
        du += gyz * Dv[:, None]
        acc_d += tl.sum(gyz * uu, axis=1)
        y_pre += uu * Dv[:, None]
    if HAS_Z:
        dz = gy * y_pre * sz * (1.0 + zz * (1.0 - sz))
        tl.store(dz_ptr + row[:, None] + t[None, :], dz.to(dz_ptr.dtype.element_ty), mask=ok)
    ddt = tl.where(keep, dda + uu * v, 0.0)
    if SOFTPLUS:
        ddt = ddt * tl.where(raw > 20.0, 1.0, tl.sigmoid(raw))
    acc_b += tl.sum(ddt, axis=1)
    tl.store(du_ptr + row[:, None] + t[None, :], du.to(du_ptr.dtype.element_ty), mask=ok)
    tl.store(ddt_ptr + row[:, None] + t[None, :], ddt.to(ddt_ptr.dtype.element_ty), mask=ok)
    return lam_in, acc, acc_d, acc_b


def _bwd_local_kernel(
    dt_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, mask_ptr, gy_ptr, lstart_ptr, dtsum_ptr,
    L, DIM, DPG, N, NB, NCHUNK, SEG, NSEG, REV0, sC_k, sC_b, sC_g, sC_n,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, SOFTPLUS: tl.constexpr,
    FLIP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
):
    """State passing, first backward pass: each segment's adjoint at its first step from a zero adjoint at
    its end, and its sum of next-step dt (the adjoint decays across the segment by ``exp(A sum)``)."""
    pid_d, pid_b, k, seg, rev, offs_d, offs_n, ok_d, kd, row, bias = _program(
        bias_ptr, L, DIM, NB, NSEG, REV0, HAS_BIAS, BLOCK_D, BLOCK_N)
    c_row = C_ptr + k * sC_k + pid_b * sC_b + ((pid_d * BLOCK_D) // DPG) * sC_g
    lam = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    total = tl.zeros([BLOCK_D], dtype=tl.float32)
    last_kk = tl.minimum(seg * SEG + SEG, NCHUNK) - 1
    for q in range(0, last_kk - seg * SEG + 1):
        t, c = _steps(last_kk - q, NCHUNK, rev, T)
        ok = ok_d[:, None] & (t < L)[None, :]
        tn = t + 1 - 2 * rev
        dtn, _, _ = _load_dt(dt_ptr, row, tl.maximum(tn, 0), (tn >= 0) & (tn < L), ok_d, bias, mask_ptr, pid_b * L,
                             HAS_BIAS, SOFTPLUS, HAS_MASK)
        gyz = tl.load(gy_ptr + row[:, None] + t[None, :], mask=ok, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + row[:, None] + t[None, :], mask=ok, other=0.0).to(tl.float32)
            gyz = gyz * zz * tl.sigmoid(zz)
        total += tl.sum(dtn, axis=1)
        for n in range(0, N):
            A2 = tl.load(A_ptr + kd * N + n, mask=ok_d, other=0.0).to(tl.float32) * 1.4426950408889634
            Cn = tl.load(c_row + n * sC_n + t, mask=t < L, other=0.0).to(tl.float32)
            sa, sb = _suffix_scan(tl.exp2(dtn * A2[:, None]), gyz * Cn[None, :], FLIP)
            lam = _set_column(lam, offs_n, n, _lane(sb, T, 0) + _lane(sa, T, 0) * _column(lam, offs_n, n))
    rows = ((k * NB + pid_b) * DIM + offs_d) * NSEG + seg
    tl.store(lstart_ptr + rows[:, None] * N + offs_n[None, :], lam, mask=ok_d[:, None] & (offs_n < N)[None, :])
    tl.store(dtsum_ptr + rows, total, mask=ok_d)


def _reverse_check_kernel(a_ptr, b_ptr, out_ptr, FLIP: tl.constexpr, T: tl.constexpr):
    offs = tl.arange(0, T)
    a = tl.load(a_ptr + offs)[None, :]
    b = tl.load(b_ptr + offs)[None, :]
    sa, sb = _suffix_scan(a, b, FLIP)
    tl.store(out_ptr + offs, tl.sum(sb, axis=0))


# ----------------------------------------------------------------------------------------- launchers

_HELPERS = ("_program", "_combine", "_suffix_scan", "_softplus", "_steps", "_load_dt", "_column", "_set_column", "_lane",
            "_bwd_chunk")
_KERNELS = ("_fwd_kernel", "_fwd_local_kernel", "_bwd_kernel", "_bwd_local_kernel", "_reverse_check_kernel")
_SOURCES = {name: globals()[name] for name in _HELPERS + _KERNELS}
_DECORATED: list[bool] = []  # the interpreter mode the module's functions are decorated for (empty: none yet)


def kernels() -> dict:
    """The kernels, decorated for the current mode (compiled, or TRITON_INTERPRET=1). Triton resolves the
    helpers a kernel calls through this module's globals, so helpers are decorated in place too."""
    mode = interpreting()
    if _DECORATED != [mode]:
        for name, fn in _SOURCES.items():
            globals()[name] = triton.jit(fn)
        _DECORATED[:] = [mode]
    return {name: globals()[name] for name in _KERNELS}


class LaunchConfig:
    """Block sizes of one scan launch: functions of the shapes except ``L`` (so trailing padding never changes
    how the real steps are grouped) and of :data:`TUNING`; the state-passing split follows ``L``."""

    def __init__(self, k: int, b: int, d: int, n: int, l: int, groups: int):
        interp = interpreting()
        self.time_block = launch_time_block()
        dpg = d // groups
        bd = int(TUNING["block_d"] or BLOCK_D)
        while groups > 1 and dpg % bd:
            bd //= 2
        if bd < 1 or bd & (bd - 1) or self.time_block & (self.time_block - 1):
            raise ValueError(f"ssm_triton.TUNING {TUNING}: block_d and time_block must be powers of two")
        self.block_d, self.block_n, self.dpg = bd, triton.next_power_of_2(n), dpg
        self.n_chunks = max(1, math.ceil(l / self.time_block))
        self.warps = int(TUNING["warps"] or max(1, min(8, bd * self.time_block // 128)))
        programs = k * b * math.ceil(d / bd)
        wanted = TUNING["segments"] or (1 if interp or programs >= MIN_PROGRAMS or self.n_chunks < 8
                                        else min(self.n_chunks // 4, math.ceil(MIN_PROGRAMS / programs)))
        self.seg_chunks = math.ceil(self.n_chunks / max(1, min(int(wanted), self.n_chunks)))
        self.segments = math.ceil(self.n_chunks / self.seg_chunks)
        self.flip = reverse_scan_mode() == "flip"
        self.grid = (math.ceil(d / bd), b, k * self.segments)

    def constexprs(self) -> dict:
        return dict(BLOCK_D=self.block_d, BLOCK_N=self.block_n, T=self.time_block, num_warps=self.warps)


def launch_time_block() -> int:
    """Steps per chunk of the next launch (the saved states are ``[.., ceil(L / time_block), n]``)."""
    return int(TUNING["time_block"] or (INTERPRET_TIME_BLOCK if interpreting() else TIME_BLOCK))


def launch_config(k: int, b: int, d: int, n: int, l: int, groups: int) -> LaunchConfig:
    """The :class:`LaunchConfig` for ``k`` directions of ``[b, d, l]`` scans with ``n`` states, B/C in ``groups``."""
    return LaunchConfig(k, b, d, n, l, groups)


@functools.lru_cache(maxsize=1)
def _native_reverse_scan_ok() -> bool:
    """Whether this Triton's ``associative_scan(reverse=True)`` composes a non-commutative combine in the
    right order on this GPU (checked once against ``flip(scan(flip))``)."""
    kernel = kernels()["_reverse_check_kernel"]
    gen = torch.Generator().manual_seed(0)
    a = (0.5 + torch.rand(64, generator=gen)).cuda()
    b = torch.randn(64, generator=gen).cuda()
    outs = []
    for flip in (False, True):
        out = torch.empty_like(b)
        kernel[(1,)](a, b, out, FLIP=flip, T=64, num_warps=2)
        outs.append(out)
    return bool(torch.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6))


def reverse_scan_mode() -> str:
    """"native" (``associative_scan(reverse=True)``) or "flip" (``flip(scan(flip))``, the fallback)."""
    forced = TUNING["reverse_scan"]
    if forced is not None:
        if forced not in ("native", "flip"):
            raise ValueError(f"ssm_triton.TUNING['reverse_scan'] must be 'native' or 'flip', got {forced!r}")
        return str(forced)
    if interpreting() or not torch.cuda.is_available():
        return "native"
    return "native" if _native_reverse_scan_ok() else "flip"


def _dense(*tensors):
    """The tensors contiguous (None stays None): the kernels index them as dense row-major arrays (B and C by
    their strides, but with time contiguous). Triton's CPU interpreter would not notice a strided one."""
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _flags(D, z, delta_bias, mask, softplus) -> dict:
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_MASK=mask is not None,
                SOFTPLUS=bool(softplus))


def scan_forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, mask=None, softplus=False, reverse=False):
    """Forward pass of ``k`` scan directions in one launch.

    Args:
        u, delta: ``[k, b, d, l]`` contiguous (delta before bias / softplus / mask).
        A: ``[k, d, n]`` float32. B, C: ``[k, b, g, n, l]``, contiguous along ``l`` (``g`` divides ``d``).
        D, delta_bias: ``[k, d]`` float32 or None. z: ``[b, d, l]`` or None (``k == 1`` only).
        mask: ``[b, l]`` uint8, 1 = real step, or None. softplus: apply softplus to delta + bias.
        reverse: direction 0 scans from the end; with ``k == 2`` direction 1 scans the other way.
    Returns:
        ``y [k, b, d, l]`` (u's dtype), ``last [k, b, d, n]`` and the chunk-start states
        ``hs [k, b, d, n_chunks, n]`` (float32; what :func:`scan_backward` needs).
    """
    u, delta, A, B, C, D, z, delta_bias, mask = _dense(u, delta, A, B, C, D, z, delta_bias, mask)
    k, b, d, l = u.shape
    n, g = A.shape[-1], B.shape[2]
    cfg = launch_config(k, b, d, n, l, g)
    launch = kernels()
    y = torch.empty_like(u)
    last = u.new_empty(k, b, d, n, dtype=torch.float32)
    hs = u.new_empty(k, b, d, cfg.n_chunks, n, dtype=torch.float32)

    def opt(x):  # an absent optional tensor: any pointer does, its flag keeps the kernel from reading it
        return last if x is None else x

    flags = _flags(D, z, delta_bias, mask, softplus)
    shape = (l, d, cfg.dpg, n, b, cfg.n_chunks, cfg.seg_chunks, cfg.segments, int(reverse))
    h0 = None
    if cfg.segments > 1:
        hend = u.new_empty(k, b, d, cfg.segments, n, dtype=torch.float32)
        dtsum = u.new_empty(k, b, d, cfg.segments, dtype=torch.float32)
        launch["_fwd_local_kernel"][cfg.grid](
            u, delta, A, B, opt(delta_bias), opt(mask), hend, dtsum, *shape, *B.stride()[:4],
            HAS_BIAS=flags["HAS_BIAS"], HAS_MASK=flags["HAS_MASK"], SOFTPLUS=flags["SOFTPLUS"], **cfg.constexprs(),
        )
        h0 = _carry_states(A, hend, dtsum)
    launch["_fwd_kernel"][cfg.grid](
        u, delta, A, B, C, opt(D), opt(z), opt(delta_bias), opt(mask), opt(h0), y, last, hs,
        *shape, *B.stride()[:4], *C.stride()[:4], HAS_H0=h0 is not None, **flags, **cfg.constexprs(),
    )
    return y, last, hs


def _carry_states(A: torch.Tensor, hend: torch.Tensor, dtsum: torch.Tensor) -> torch.Tensor:
    """The state entering each segment ``[k, b, d, s, n]`` from the segments' local end states (zero start)
    and dt sums: ``h0[s + 1] = exp(A sum(dt)[s]) h0[s] + hend[s]`` (an exponent <= 0: no overflow)."""
    decay = torch.exp(A[:, None, :, None, :] * dtsum[..., None])
    h0 = torch.zeros_like(hend)
    for s in range(1, hend.shape[3]):
        h0[:, :, :, s] = decay[:, :, :, s - 1] * h0[:, :, :, s - 1] + hend[:, :, :, s - 1]
    return h0


def _carry_adjoints(A: torch.Tensor, lstart: torch.Tensor, dtsum: torch.Tensor, glast: torch.Tensor) -> torch.Tensor:
    """The adjoint entering each segment's last step ``[k, b, d, s, n]``: ``glast`` for the last segment, and
    ``g0[s - 1] = lstart[s] + exp(A sum(dt_next)[s]) g0[s]`` going back."""
    decay = torch.exp(A[:, None, :, None, :] * dtsum[..., None])
    g0 = torch.empty_like(lstart)
    g0[:, :, :, -1] = glast
    for s in range(lstart.shape[3] - 1, 0, -1):
        g0[:, :, :, s - 1] = lstart[:, :, :, s] + decay[:, :, :, s] * g0[:, :, :, s]
    return g0


def scan_backward(u, delta, A, B, C, D, z, delta_bias, mask, softplus, reverse, hs, gy, glast):
    """Gradients of :func:`scan_forward` (same arguments, plus its ``hs``, ``gy = dL/dy [k, b, d, l]`` and
    ``glast = dL/dlast [k, b, d, n]`` or None).

    Returns ``(du, ddelta, dA [k, d, n], dB, dC, dD [k, d] | None, dz | None, d delta_bias [k, d] | None)``;
    ``ddelta`` is the gradient with respect to ``delta`` as passed (before bias, softplus and mask).
    """
    u, delta, A, B, C, D, z, delta_bias, mask = _dense(u, delta, A, B, C, D, z, delta_bias, mask)
    k, b, d, l = u.shape
    n, g = A.shape[-1], B.shape[2]
    cfg = launch_config(k, b, d, n, l, g)
    launch = kernels()
    gy = gy.contiguous()
    glast = u.new_zeros(k, b, d, n, dtype=torch.float32) if glast is None else glast.float().contiguous()
    flags = _flags(D, z, delta_bias, mask, softplus)

    def opt(x):
        return glast if x is None else x

    shape = (l, d, cfg.dpg, n, b, cfg.n_chunks, cfg.seg_chunks, cfg.segments, int(reverse))
    if cfg.segments > 1:
        lstart = u.new_empty(k, b, d, cfg.segments, n, dtype=torch.float32)
        dtsum = u.new_empty(k, b, d, cfg.segments, dtype=torch.float32)
        launch["_bwd_local_kernel"][cfg.grid](
            delta, A, C, opt(z), opt(delta_bias), opt(mask), gy, lstart, dtsum, *shape, *C.stride()[:4],
            HAS_Z=flags["HAS_Z"], HAS_BIAS=flags["HAS_BIAS"], HAS_MASK=flags["HAS_MASK"], SOFTPLUS=flags["SOFTPLUS"],
            FLIP=cfg.flip, **cfg.constexprs(),
        )
        g0 = _carry_adjoints(A, lstart, dtsum, glast)
    else:
        g0 = glast.unsqueeze(3).contiguous()
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    parts = (k, b, cfg.segments, d)
    dA = u.new_empty(*parts, n, dtype=torch.float32)
    dD = u.new_empty(*parts, dtype=torch.float32) if D is not None else None
    dbias = u.new_empty(*parts, dtype=torch.float32) if delta_bias is not None else None
    dB = u.new_zeros(k, b, g, n, l, dtype=torch.float32)
    dC = u.new_zeros(k, b, g, n, l, dtype=torch.float32)
    launch["_bwd_kernel"][cfg.grid](
        u, delta, A, B, C, opt(D), opt(z), opt(delta_bias), opt(mask), hs, gy, g0,
        du, ddelta, opt(dz), dA, dB, dC, opt(dD), opt(dbias),
        l, d, cfg.dpg, g, n, b, cfg.n_chunks, cfg.seg_chunks, cfg.segments, int(reverse),
        *B.stride()[:4], *C.stride()[:4], FLIP=cfg.flip, **flags, **cfg.constexprs(),
    )
    return (du, ddelta, dA.sum((1, 2)), dB.to(B.dtype), dC.to(C.dtype), None if dD is None else dD.sum((1, 2)), dz,
            None if dbias is None else dbias.sum((1, 2)))
