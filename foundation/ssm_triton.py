"""Selective scan (Mamba's S6 recurrence) as Triton kernels: forward and recomputing backward.

Same signature and semantics as :func:`foundation.ssm.selective_scan` (``mamba_ssm``'s
``selective_scan_fn``); no CUDA compiler needed, only ``pip install triton`` next to a CUDA torch.

Kernel layout. One program per (batch row, block of ``BLOCK_D`` channels). Its state ``h [BLOCK_D, N]``
lives in registers in float32 whatever the input dtype, and the program walks time step by step::

    a = exp(delta[t] * A)          h = a * h + delta[t] u[t] B[t]          y[t] = C[t] . h (+ D u[t]) (* silu z[t])

The walk is sequential on purpose: a padded step (``delta = 0``) then computes ``h = 1 * h + 0`` and leaves the
state bit-for-bit unchanged, exactly as the chunked torch scan does (a tree-shaped parallel scan would
regroup the real steps around a hole and change their rounding). Parallelism comes from the programs
(``batch * d / BLOCK_D`` of them; ``BLOCK_D`` shrinks until there are enough to fill the GPU) and from
instruction-level parallelism: time is walked in statically unrolled groups of ``UNROLL`` steps whose loads,
exponentials and input terms do not depend on ``h``, so only one FMA per state element is serial. The
per-step loads of ``[BLOCK_D]`` values are strided by ``L`` in the ``[b, d, l]`` layout, but the next
``UNROLL`` steps read the same cache lines, which the L1 cache serves. Each chunk walks only its steps
up to ``L`` (rounded up to ``UNROLL``), so short sequences (pretraining: tens of tokens) waste little.
The block heuristics are first guesses for an H100 (no GPU was at hand when they were written);
``benchmarks/gpu.py`` times a few alternatives through :data:`TUNING`.

Memory. The forward pass stores the state entering every chunk of ``CHUNK`` steps (``b d n L / CHUNK``
floats) and nothing else beyond the inputs. The backward pass walks chunks in reverse: it recomputes the
chunk's states from its saved entering state into a per-program scratch of ``CHUNK x BLOCK_D x N`` floats,
then runs the adjoint recurrence ``lam[t] = C[t] gy[t] + a[t+1] lam[t+1]`` backwards through the chunk.
Activation memory is therefore ``O(b d L)``, never ``O(b d L n)``. ``dB`` / ``dC`` (shared by every channel
of a group) are accumulated with float32 atomics into ``[b, g, n, l]``; ``dA``, ``dD`` and ``d delta_bias``
as per-batch partial sums reduced by torch.

Triton is optional: ``triton`` is ``None`` here when it does not import. Kernels are compiled on first use,
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

__all__ = ["selective_scan_triton", "triton", "interpreting"]

# Steps per saved chunk-boundary state: the saved states cost b d n L / CHUNK floats (n / CHUNK = 1/4 of
# one [b, d, l] tensor at n = 16), the backward scratch CHUNK x BLOCK_D x n floats per program.
CHUNK = 64
# Steps per statically unrolled group (instruction-level parallelism; must divide CHUNK).
UNROLL = 8
# Overrides of the block heuristics for benchmarks/gpu.py's tuning sweep (None = heuristic / default).
TUNING: dict[str, int | None] = {"block_d": None, "unroll": None}
# Under TRITON_INTERPRET=1 (tests): short chunks, so several chunk boundaries are crossed at small L.
INTERPRET_CHUNK, INTERPRET_UNROLL = 8, 4
_LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """True when Triton's CPU interpreter is on (``TRITON_INTERPRET=1``): kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _scan_fwd(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, hs_ptr,
    L, DIM, DPG, N, N_CHUNKS,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, UNROLL: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < DIM
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    # exp(delta A) as exp2(delta A log2 e): exp2(+-0) is exactly 1, so a padded step decays by exactly 1.
    A2 = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32) * 1.4426950408889634
    g = (pid_d * BLOCK_D) // DPG  # BLOCK_D divides DPG when B/C are grouped, so one group per program
    row = (pid_b * DIM + offs_d) * L
    b_ptrs = B_ptr + pid_b * sB_b + g * sB_g + offs_n * sB_n
    c_ptrs = C_ptr + pid_b * sC_b + g * sC_g + offs_n * sC_n
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    hs_ptrs = hs_ptr + ((pid_b * DIM + offs_d[:, None]) * N_CHUNKS) * N + offs_n[None, :]
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for c in range(0, N_CHUNKS):
        tl.store(hs_ptrs + c * N, h, mask=mask_dn)
        # Only the steps up to L (rounded up to UNROLL): a short or last chunk costs what it holds.
        for s in range(0, tl.minimum(L - c * CHUNK, CHUNK), UNROLL):
            for i in tl.static_range(UNROLL):
                t = c * CHUNK + s + i
                m = mask_d & (offs_d * 0 + t < L)
                m_n = mask_n & (offs_n * 0 + t < L)
                dt = tl.load(dt_ptr + row + t, mask=m, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    dt = dt + bias
                if SOFTPLUS:
                    # softplus with torch's threshold 20; log1p(e) = log(w) e / (w - 1) (Kahan) stays accurate
                    # for tiny e = exp(dt) where log(1 + e) would round to 0.
                    e = tl.exp(dt)
                    w = 1.0 + e
                    sp = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
                    dt = tl.where(dt > 20.0, dt, sp)
                if HAS_BIAS or SOFTPLUS:
                    dt = tl.where(m, dt, 0.0)
                uu = tl.load(u_ptr + row + t, mask=m, other=0.0).to(tl.float32)
                Bt = tl.load(b_ptrs + t * sB_l, mask=m_n, other=0.0).to(tl.float32)
                Ct = tl.load(c_ptrs + t * sC_l, mask=m_n, other=0.0).to(tl.float32)
                h = tl.exp2(dt[:, None] * A2) * h + (dt * uu)[:, None] * Bt[None, :]
                y = tl.sum(h * Ct[None, :], axis=1)
                if HAS_D:
                    y = y + uu * Dv
                if HAS_Z:
                    zz = tl.load(z_ptr + row + t, mask=m, other=0.0).to(tl.float32)
                    y = y * zz * tl.sigmoid(zz)
                tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=m)
    tl.store(last_ptr + (pid_b * DIM + offs_d[:, None]) * N + offs_n[None, :], h, mask=mask_dn)


def _scan_bwd(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, hs_ptr, gout_ptr, glast_ptr, scratch_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    L, DIM, DPG, N, N_CHUNKS, G,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, UNROLL: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < DIM
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    g = (pid_d * BLOCK_D) // DPG
    row = (pid_b * DIM + offs_d) * L
    b_ptrs = B_ptr + pid_b * sB_b + g * sB_g + offs_n * sB_n
    c_ptrs = C_ptr + pid_b * sC_b + g * sC_g + offs_n * sC_n
    # dB, dC: contiguous float32 [b, G, n, l]
    db_ptrs = dB_ptr + ((pid_b * G + g) * N + offs_n) * L
    dc_ptrs = dC_ptr + ((pid_b * G + g) * N + offs_n) * L
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state_off = (pid_b * DIM + offs_d[:, None]) * N + offs_n[None, :]
    hs_ptrs = hs_ptr + ((pid_b * DIM + offs_d[:, None]) * N_CHUNKS) * N + offs_n[None, :]
    pid_lin = pid_b * tl.num_programs(1) + pid_d
    scr_ptrs = scratch_ptr + pid_lin * (CHUNK * BLOCK_D * BLOCK_N) + (tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :])
    # gh = a[t+1] lam[t+1]: the adjoint flowing into step t from later steps (from last_state at t = L-1).
    gh = tl.load(glast_ptr + state_off, mask=mask_dn, other=0.0).to(tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for cc in range(0, N_CHUNKS):
        c = N_CHUNKS - 1 - cc
        # Recompute the chunk's states; scratch[k] = the state entering step c * CHUNK + k.
        h = tl.load(hs_ptrs + c * N, mask=mask_dn, other=0.0)
        span = tl.cdiv(tl.minimum(L - c * CHUNK, CHUNK), UNROLL) * UNROLL  # steps walked, as in the forward pass
        for s in range(0, span, UNROLL):
            for i in tl.static_range(UNROLL):
                t = c * CHUNK + s + i
                m = mask_d & (offs_d * 0 + t < L)
                m_n = mask_n & (offs_n * 0 + t < L)
                dt = tl.load(dt_ptr + row + t, mask=m, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    dt = dt + bias
                if SOFTPLUS:
                    e = tl.exp(dt)
                    w = 1.0 + e
                    sp = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
                    dt = tl.where(dt > 20.0, dt, sp)
                if HAS_BIAS or SOFTPLUS:
                    dt = tl.where(m, dt, 0.0)
                uu = tl.load(u_ptr + row + t, mask=m, other=0.0).to(tl.float32)
                Bt = tl.load(b_ptrs + t * sB_l, mask=m_n, other=0.0).to(tl.float32)
                tl.store(scr_ptrs + (s + i) * (BLOCK_D * BLOCK_N), h)
                h = tl.exp2(dt[:, None] * A2) * h + (dt * uu)[:, None] * Bt[None, :]
        # Adjoint pass backwards through the chunk.
        for s in range(0, span, UNROLL):
            for i in tl.static_range(UNROLL):
                k = span - 1 - s - i
                t = c * CHUNK + k
                m = mask_d & (offs_d * 0 + t < L)
                m_n = mask_n & (offs_n * 0 + t < L)
                raw = tl.load(dt_ptr + row + t, mask=m, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    raw = raw + bias
                dt = raw
                if SOFTPLUS:
                    e = tl.exp(raw)
                    w = 1.0 + e
                    sp = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
                    dt = tl.where(raw > 20.0, raw, sp)
                if HAS_BIAS or SOFTPLUS:
                    dt = tl.where(m, dt, 0.0)
                uu = tl.load(u_ptr + row + t, mask=m, other=0.0).to(tl.float32)
                Bt = tl.load(b_ptrs + t * sB_l, mask=m_n, other=0.0).to(tl.float32)
                Ct = tl.load(c_ptrs + t * sC_l, mask=m_n, other=0.0).to(tl.float32)
                gy = tl.load(gout_ptr + row + t, mask=m, other=0.0).to(tl.float32)
                hprev = tl.load(scr_ptrs + k * (BLOCK_D * BLOCK_N))
                a = tl.exp2(dt[:, None] * A2)
                h = a * hprev + (dt * uu)[:, None] * Bt[None, :]
                if HAS_Z:
                    zz = tl.load(z_ptr + row + t, mask=m, other=0.0).to(tl.float32)
                    sz = tl.sigmoid(zz)
                    y = tl.sum(h * Ct[None, :], axis=1)
                    if HAS_D:
                        y = y + uu * Dv
                    dz = gy * y * sz * (1.0 + zz * (1.0 - sz))
                    tl.store(dz_ptr + row + t, dz.to(dz_ptr.dtype.element_ty), mask=m)
                    gy = gy * zz * sz
                lam = gh + gy[:, None] * Ct[None, :]
                tl.atomic_add(dc_ptrs + t, tl.sum(gy[:, None] * h, axis=0), mask=m_n)
                tl.atomic_add(db_ptrs + t, tl.sum(lam * (dt * uu)[:, None], axis=0), mask=m_n)
                v = tl.sum(lam * Bt[None, :], axis=1)
                wgt = lam * a * hprev  # dL/d(delta A)
                ddt = tl.sum(wgt * A, axis=1) + uu * v
                dA_acc += wgt * dt[:, None]
                du = dt * v
                if HAS_D:
                    du = du + gy * Dv
                    dD_acc += gy * uu
                gh = a * lam
                if SOFTPLUS:
                    ddt = ddt * tl.sigmoid(raw)
                if HAS_BIAS:
                    dbias_acc += tl.where(m, ddt, 0.0)
                tl.store(du_ptr + row + t, du.to(du_ptr.dtype.element_ty), mask=m)
                tl.store(ddt_ptr + row + t, ddt.to(ddt_ptr.dtype.element_ty), mask=m)
    tl.store(dA_ptr + state_off, dA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * DIM + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * DIM + offs_d, dbias_acc, mask=mask_d)


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """The jitted (or interpreted) kernels; Triton decides between the two when a function is decorated."""
    del interpret  # part of the cache key only: Triton reads TRITON_INTERPRET itself
    return triton.jit(_scan_fwd), triton.jit(_scan_bwd)


def _block_d(b: int, d: int, dpg: int, grouped: bool) -> int:
    """Channels per program: the largest of 16, 8, 4, 2, 1 giving at least 1024 programs (about 8 per SM of
    an H100, enough to hide the per-step latency), dividing the group size when B/C are grouped."""
    for bd in (16, 8, 4, 2, 1):
        if grouped and dpg % bd:
            continue
        if b * math.ceil(d / bd) >= 1024 or bd == 1:
            return bd
    return 1


def _launch_config(u: torch.Tensor, A: torch.Tensor, g: int) -> dict:
    """Block sizes. The CPU interpreter pays about a millisecond per tensor op whatever the tensor size, so
    there one program covers a whole group of channels and chunks are short (fewer wasted tail steps)."""
    b, d, l = u.shape
    n = A.shape[1]
    dpg = d // g
    if interpreting():
        bd = triton.next_power_of_2(dpg) if g > 1 and dpg & (dpg - 1) == 0 else (triton.next_power_of_2(d) if g == 1 else 1)
        chunk, unroll = INTERPRET_CHUNK, INTERPRET_UNROLL
    else:
        bd = TUNING["block_d"] or _block_d(b, d, dpg, g > 1)
        chunk, unroll = CHUNK, TUNING["unroll"] or UNROLL
        if (g > 1 and dpg % bd) or CHUNK % unroll:
            raise ValueError(f"ssm_triton.TUNING {TUNING}: block_d must divide the group size {dpg}, unroll {CHUNK}")
    bn = triton.next_power_of_2(n)
    warps = max(1, min(4, bd * bn // 64))
    return dict(b=b, d=d, l=l, n=n, dpg=dpg, bd=bd, bn=bn, warps=warps, chunk=chunk, unroll=unroll,
                n_chunks=max(1, math.ceil(l / chunk)))


def _flags(D, z, delta_bias, delta_softplus, cfg: dict) -> dict:
    return dict(
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        BLOCK_D=cfg["bd"], BLOCK_N=cfg["bn"], CHUNK=cfg["chunk"], UNROLL=cfg["unroll"], num_warps=cfg["warps"],
    )


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        fwd, _ = _kernels(interpreting())
        g = B.shape[1]
        cfg = _launch_config(u, A, g)
        b, d, l, n = cfg["b"], cfg["d"], cfg["l"], cfg["n"]
        out = torch.empty_like(u)
        last = u.new_empty(b, d, n, dtype=torch.float32)
        hs = u.new_empty(b, d, cfg["n_chunks"], n, dtype=torch.float32)
        dummy = last  # stands in for absent optional pointers (never read: the flag is off)
        grid = (b, triton.cdiv(d, cfg["bd"]))
        fwd[grid](
            u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, out, last, hs,
            l, d, cfg["dpg"], n, cfg["n_chunks"], *B.stride(), *C.stride(),
            **_flags(D, z, delta_bias, delta_softplus, cfg),
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hs)
        ctx.delta_softplus = delta_softplus
        return out, last

    @staticmethod
    def backward(ctx, gout, glast):
        _, bwd = _kernels(interpreting())
        u, delta, A, B, C, D, z, delta_bias, hs = ctx.saved_tensors
        g = B.shape[1]
        cfg = _launch_config(u, A, g)
        b, d, l, n = cfg["b"], cfg["d"], cfg["l"], cfg["n"]
        gout = gout.contiguous()
        glast = torch.zeros(b, d, n, device=u.device, dtype=torch.float32) if glast is None else glast.float().contiguous()
        grid = (b, triton.cdiv(d, cfg["bd"]))
        scratch = u.new_empty(grid[0] * grid[1] * cfg["chunk"] * cfg["bd"] * cfg["bn"], dtype=torch.float32)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dA = u.new_empty(b, d, n, dtype=torch.float32)
        dB = u.new_zeros(b, g, n, l, dtype=torch.float32)
        dC = u.new_zeros(b, C.shape[1], n, l, dtype=torch.float32)
        dD = u.new_empty(b, d, dtype=torch.float32) if D is not None else None
        dbias = u.new_empty(b, d, dtype=torch.float32) if delta_bias is not None else None
        dummy = glast
        opt = lambda x: x if x is not None else dummy  # noqa: E731
        bwd[grid](
            u, delta, A, B, C, opt(D), opt(z), opt(delta_bias), hs, gout, glast, scratch,
            du, ddelta, opt(dz), dA, dB, dC, opt(dD), opt(dbias),
            l, d, cfg["dpg"], n, cfg["n_chunks"], g, *B.stride(), *C.stride(),
            **_flags(D, z, delta_bias, ctx.delta_softplus, cfg),
        )
        return (
            du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            None if dD is None else dD.sum(0).to(D.dtype), dz,
            None if dbias is None else dbias.sum(0).to(delta_bias.dtype), None,
        )


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Mamba's selective scan on Triton kernels; shapes and semantics of :func:`foundation.ssm.selective_scan`.

    ``B``, ``C``: ``[b, n, l]``, grouped ``[b, g, n, l]`` or time-invariant ``[d, n]``. The state accumulates
    in float32; ``y`` comes back in ``u``'s dtype and ``last_state [b, d, n]`` in float32.
    """
    from foundation.ssm import _check_inputs, _grouped  # lazy: foundation.ssm imports this module lazily too

    if triton is None:
        raise RuntimeError("selective_scan_triton: triton is not installed (pip install 'eegfm[gpu]')")
    if not (u.is_cuda or interpreting()):
        raise RuntimeError(
            "selective_scan_triton: tensors must be on a CUDA device (or set TRITON_INTERPRET=1 for Triton's "
            f"CPU interpreter), got {u.device}"
        )
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    b, d, l = u.shape
    B, C = _grouped(B, b, l), _grouped(C, b, l)
    if B.shape[1] != C.shape[1]:  # grouped differently: one group per channel for both
        B, C = B.repeat_interleave(d // B.shape[1], dim=1), C.repeat_interleave(d // C.shape[1], dim=1)
    if l == 0:
        y = u.new_zeros(b, d, 0)
        return (y, u.new_zeros(b, d, A.shape[1], dtype=torch.float32)) if return_last_state else y
    u, delta, z = u.contiguous(), delta.contiguous(), None if z is None else z.contiguous()
    A = A.contiguous()
    y, last = _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (y, last) if return_last_state else y
