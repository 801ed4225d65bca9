"""The chunked pure-PyTorch selective scan: the CPU path of :mod:`foundation.ssm`, built for a memory-bound CPU.

The bare recurrence, per batch ``b``, channel ``d`` and state ``n``::

    h[t] = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * B[n, t] * u[t]        y[t] = sum_n C[n, t] * h[t, n]

(bias, softplus, padding, D and z are applied around it by :mod:`foundation.ssm`).

* Time is cut into ``n_chunks`` chunks of ``K`` steps (``K ~ sqrt(L / 2)``, or enough steps to fill a buffer
  where a buffer would hold only a few such chunks: :func:`default_chunk`), and consecutive chunks into
  groups sized so one ``[K, b, d, chunks, n]`` scratch buffer holds at most :data:`BUFFER_ELEMENTS` numbers
  (2 MiB: the buffers stay cache-resident between the passes over a group). At realistic sizes
  (``b * d * K * n`` above that) a group is one chunk: its entering state is known, so one in-place pass of
  ``K`` fused ``addcmul_`` steps over ``[b, d, n]`` slabs gives its states. Smaller problems pack several
  chunks per group: the recurrence runs step by step inside the chunks for all the group's chunks at once,
  the chunk-boundary states are carried across chunks, and a second pass gives the true states. ``y`` comes
  from one batched ``[h, n] x [n, 1]`` product per group. The decays ``exp(delta A)`` (the costliest op: ``exp`` is
  compute-bound) are evaluated once per group and reused by every pass over it.
* Inputs and gradients change layout (``[b, d, l]`` <-> step-major ``[K, b, g, c, h]``) with cache-tiled
  transposes, 3-4x cheaper than a plain strided copy.
* Decays are applied as products of ``exp(delta * A) <= 1`` step by step, never as ``exp(-cumsum)``: that
  log-space trick overflows in fp32 once ``|sum delta * A|`` passes ~88 (chunks longer than ~16 steps or
  large ``delta``), while a product of numbers in ``[0, 1]`` can only underflow towards its true value 0.
  Every state is the sequential recurrence's own value, so a padded step (``delta = 0``) leaves the state
  bit-for-bit unchanged wherever it sits.
* The forward pass keeps only the chunk-start states (``O(b d n L / K)``); the backward pass recomputes the
  states a group of chunks at a time and runs the adjoint (reverse-time) recurrence, as ``mamba_ssm``'s CUDA
  kernel does. Activation memory is therefore ``O(b d L)``, not ``O(b d L n)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = ["BUFFER_ELEMENTS", "chunked_backward", "chunked_forward", "chunked_scan", "default_chunk", "n_chunks"]

#: Elements per ``[K, b, d, chunks, n]`` scratch buffer (2 live in the forward pass, 3 in the backward):
#: 2**19 fp32 = 2 MiB keeps the transient memory bounded whatever L is and the buffers cache-resident
#: between the passes over a group (measured 5-30% faster than 16 MiB buffers at B=8, d=256, n=16,
#: L=512..8192, where a group is then one chunk and the single-chunk fast path applies).
BUFFER_ELEMENTS = 1 << 19

# Rows per tile in the [b, e, l] <-> [b, l, e] transposes: a naive strided copy of a whole [e, l] plane
# thrashes the cache (4x slower than these tiles, and ~14% of the scan's time before tiling).
_TILE = 16
# Elements of an [e, l] plane up to which one strided copy beats the tiles (256 KiB of fp32: the plane stays
# in the L2 cache; measured 2-4x faster at e=256-512, l=80, 2x slower at e=256, l=8192).
_PLANE_IN_CACHE = 1 << 16


def default_chunk(l: int, slab: int = 0) -> int:
    """Steps per chunk for a length-``l`` scan whose step holds ``slab = b * d * n`` states.

    Where a buffer holds several chunks of ``sqrt(L / 2)`` steps (``2K + L/K`` Python steps, smallest there) but
    at most 4, a chunk fills the buffer instead: one chunk per group takes the single-pass path (no carry
    between chunks, a third of the Python steps and of the passes over the buffers; measured 1.3-1.4x faster
    at b=8, d=256, n=16, L=78). Clamped so per-step tensors stay large enough to amortise dispatch overhead
    at short L and the chunk loop stays short at long L; never longer than ``l``."""
    k = int(min(64, max(8, round(math.sqrt(max(l, 1) / 2)))))
    if slab and slab * k <= BUFFER_ELEMENTS and BUFFER_ELEMENTS // slab <= 4 * k:
        k = BUFFER_ELEMENTS // slab
    return max(1, min(k, l))


def n_chunks(l: int, chunk: int | None = None, slab: int = 0) -> int:
    """Chunks of a length-``l`` scan (the second-to-last size of :func:`chunked_forward`'s saved states)."""
    return max(1, -(-l // (chunk or default_chunk(l, slab))))


def chunked_forward(u, delta, A, B, C, chunk: int | None = None):
    """``y [b, d, l]``, ``last [b, d, n]`` and the chunk-start states ``hs [b, g, c, d / g, n]``.

    ``u, delta: [b, d, l]``, ``A: [d, n]``, ``B, C: [b, g, n, l]`` (``g`` divides ``d``), all in the compute
    dtype; ``delta`` is the effective step (after bias, softplus and padding).
    """
    b, d, l = u.shape
    g = B.shape[1]
    K = chunk or default_chunk(l, b * d * A.shape[-1])
    dk, uk, Bk, Ck = _step_major_padded((delta, u, B, C), g, K)
    y, state, hs = _core_forward(dk, uk, A.view(g, d // g, -1), Bk, Ck)
    return _time_major(y)[..., :l], rearrange(state, "b g h n -> b (g h) n"), hs


def chunked_backward(u, delta, A, B, C, hs, gy, glast, chunk: int | None = None):
    """Gradients ``(du, ddelta, dA, dB, dC)`` of :func:`chunked_forward`'s ``y`` and ``last`` (cotangents ``gy``
    ``[b, d, l]`` and ``glast [b, d, n]`` or None), recomputing the states from ``hs``."""
    b, d, l = u.shape
    g = B.shape[1]
    K = chunk or default_chunk(l, b * d * A.shape[-1])
    dk, uk, Bk, Ck, gyk = _step_major_padded((delta, u, B, C, gy), g, K)
    glast = None if glast is None else rearrange(glast.to(dk.dtype), "b (g h) n -> b g h n", g=g)
    ddelta, du, dA, dB, dC = _core_backward(dk, uk, A.view(g, d // g, -1), Bk, Ck, hs, gyk, glast)
    n = A.shape[-1]
    return (_time_major(du)[..., :l], _time_major(ddelta)[..., :l], dA.reshape(d, n),
            _time_major(dB).view(b, g, n, -1)[..., :l], _time_major(dC).view(b, g, n, -1)[..., :l])


def _step_major_padded(tensors, g: int, K: int):
    """``[b, e, l]`` (or ``[b, g, n, l]``) tensors padded to whole chunks, as step-major ``[K, b, g, c, h]``.

    Padded steps have ``delta = 0``: decay ``exp(0) = 1`` and no input, so the last state is carried through.
    """
    l = tensors[0].shape[-1]
    pad = n_chunks(l, K) * K - l
    return [_step_major(F.pad(x, (0, pad)).flatten(1, -2), g, K) for x in tensors]


class _ChunkedScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk):
        y, last, hs = chunked_forward(u, delta, A, B, C, chunk)
        ctx.save_for_backward(u, delta, A, B, C, hs)
        ctx.chunk = chunk
        return y, last

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, B, C, hs = ctx.saved_tensors
        du, ddelta, dA, dB, dC = chunked_backward(u, delta, A, B, C, hs, gy, glast, ctx.chunk)
        return du, ddelta, dA, dB, dC, None


def chunked_scan(u, delta, A, B, C, chunk_size: int | None = None):
    """The bare recurrence ``y[t] = C[t] . h[t]`` (no D, z, bias or softplus), differentiable.

    ``u, delta: [b, d, l]``, ``A: [d, n]``, ``B, C: [b, g, n, l]`` (``g`` divides ``d``; ``g = 1`` is the
    ungrouped case). Returns ``(y [b, d, l], last_state [b, d, n])`` in the compute dtype (float32, or
    float64 for float64 inputs).
    """
    d = u.shape[1]
    if C.shape[1] != B.shape[1]:  # B and C grouped differently: expand both to per-channel groups
        B = B.repeat_interleave(d // B.shape[1], dim=1)
        C = C.repeat_interleave(d // C.shape[1], dim=1)
    return _ChunkedScanFn.apply(u, delta, A, B.contiguous(), C.contiguous(), chunk_size)


def _core_forward(dk, uk, A, Bk, Ck):
    """Step-major forward: ``dk, uk [K, b, g, c, h]``, ``A [g, h, n]``, ``Bk, Ck [K, b, g, c, n]`` ->
    ``(y [K, b, g, c, h], last state [b, g, h, n], chunk-start states [b, g, c, h, n])``.

    Chunks are processed in groups of consecutive chunks, in time order, so that one group's decays and
    inputs fit in two buffers of at most :data:`BUFFER_ELEMENTS`; the ``c`` axis sits before ``h`` so every
    contraction over ``n`` or ``h`` is a plain ``bmm`` over a batch of ``(k b g c)`` without copies.
    """
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
            state = _carry_group(dks, A_, abuf, hbuf, hs, c0, state)
        # Pass 3: the true states, in place over the inputs, then y for the whole group in one bmm.
        hbuf[0].addcmul_(abuf[0], hs[:, :, sl])
        for k in range(1, K):
            hbuf[k].addcmul_(abuf[k], hbuf[k - 1])
        _contract_n(hbuf, Ck[:, :, :, sl], y[:, :, :, sl])
        if cn == 1:
            state = hbuf[K - 1, :, :, 0].clone()
        del abuf, hbuf
    return y, state, hs


def _carry_group(dks, A_, abuf, hbuf, hs, c0, state):
    """Passes 1-2 of a multi-chunk group: each chunk's end state from a zero start, then the state entering
    every chunk (written to ``hs``); returns the state leaving the group."""
    K = dks.shape[0]
    cn = dks.shape[3]
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
    return state


def _core_backward(dk, uk, A, Bk, Ck, hs, gy, glast):
    """Step-major gradients ``(ddelta, du, dA [g, h, n], dB, dC)``, groups of chunks in reverse order."""
    K, b, g, c, hh = dk.shape
    n = A.shape[-1]
    A_ = A.unsqueeze(1)
    G = _group_size(K, b, g, hh, n, c)
    ddelta, du = torch.empty_like(dk), torch.empty_like(uk)
    dB, dC = torch.empty_like(Bk), torch.empty_like(Ck)
    dA = torch.zeros_like(A)
    # r = dL/dh flowing into the current group's last step from later groups (and from last_state).
    r = glast if glast is not None else dk.new_zeros(b, g, hh, n)
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
        lbuf, r = _adjoint(dks, A_, abuf, torch.mul(gys.unsqueeze(-1), Cks.unsqueeze(-2), out=bufs.get(2, shape)), r)
        m = K * b * g * cn
        lv, hv = lbuf.view(m, hh, n), hbuf.view(m, hh, n)
        # y[t] = C[t] . h[t]  ->  dC[t] = sum_h gy[t] h[t];   h[t] gets delta[t] u[t] B[t]  ->  dB, du, ddelta.
        dC[:, :, :, sl] = torch.bmm(gys.reshape(m, 1, hh), hv).view(K, b, g, cn, n)
        dB[:, :, :, sl] = torch.bmm(duks.reshape(m, 1, hh), lv).view(K, b, g, cn, n)
        v = _contract_n(lbuf, Bks)  # sum_n lambda B
        # dL/d(delta A)[t] = lambda[t] * a[t] * h[t-1], in place over abuf.
        W = abuf.mul_(lbuf)
        W[1:].mul_(hbuf[:-1])
        W[0].mul_(hs_sl)
        ddelta[:, :, :, sl] = _sum_n(torch.mul(W, A_, out=hbuf)).addcmul_(v, uks)
        du[:, :, :, sl] = v.mul_(dks)
        # One reduction over (k, b), then over c: a single reduction over the non-adjacent (k, b, c) is ~4x slower.
        dA += W.mul_(dks.unsqueeze(-1)).sum(dim=(0, 1)).sum(1)
        del abuf, hbuf, lbuf, W, v
    return ddelta, du, dA, dB, dC


def _adjoint(dks, A_, abuf, lbuf, r):
    """The adjoint ``lambda[t] = C[t] gy[t] + a[t+1] lambda[t+1]`` of a group, in place over ``lbuf`` (which
    holds ``C gy``), with ``r`` entering its last step; returns ``(lbuf, what leaves its first step)``."""
    K, cn = dks.shape[0], dks.shape[3]
    if cn == 1:
        # One chunk: what enters its last step from later groups is known, so one pass suffices.
        lbuf[K - 1].add_(r.unsqueeze(2))
        for k in range(K - 2, -1, -1):
            lbuf[k].addcmul_(abuf[k + 1], lbuf[k + 1])
        return lbuf, abuf[0, :, :, 0] * lbuf[0, :, :, 0]
    # First with nothing entering each chunk...
    for k in range(K - 2, -1, -1):
        lbuf[k].addcmul_(abuf[k + 1], lbuf[k + 1])
    # ...then rho[c], what enters chunk c's last step from later chunks, carried chunk to chunk...
    zeta = abuf[0] * lbuf[0]  # what leaves each chunk's first step into the previous chunk
    P = torch.exp(torch.mul(dks.sum(0).unsqueeze(-1), A_))
    q = torch.empty_like(zeta)
    for j in reversed(range(cn)):
        q[:, :, j] = r
        r = torch.addcmul(zeta[:, :, j], P[:, :, j], r)
    # ...and added back: lambda[t] += (a[t+1] ... a[K-1]) rho.
    for k in range(K - 1, -1, -1):
        lbuf[k].add_(q)
        if k:
            q.mul_(abuf[k])
    return lbuf, r


def _step_major(x: torch.Tensor, g: int, K: int) -> torch.Tensor:
    """``[b, (g h), (c k)] -> [k, b, g, c, h]`` contiguous, via a tiled transpose then whole-row moves (one
    strided copy where an ``[e, l]`` plane fits in cache: 2-3x faster there, as the tiles' operators dominate)."""
    b, e, l = x.shape
    if e * l <= _PLANE_IN_CACHE:
        return x.view(b, g, e // g, l // K, K).permute(4, 0, 1, 3, 2).contiguous()
    xt = x.new_empty(b, l, e)
    for i in range(0, e, _TILE):
        xt[:, :, i : i + _TILE] = x[:, i : i + _TILE].transpose(1, 2)
    return xt.view(b, l // K, K, g, e // g).permute(2, 0, 3, 1, 4).contiguous()


def _time_major(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_step_major`: ``[k, b, g, c, h] -> [b, (g h), (c k)]`` contiguous."""
    K, b, g, c, hh = y.shape
    if g * hh * c * K <= _PLANE_IN_CACHE:
        return y.permute(1, 2, 4, 3, 0).reshape(b, g * hh, c * K)
    yt = y.permute(1, 3, 0, 2, 4).reshape(b, c * K, g * hh)
    out = y.new_empty(b, g * hh, c * K)
    for i in range(0, g * hh, _TILE):
        out[:, i : i + _TILE] = yt[:, :, i : i + _TILE].transpose(1, 2)
    return out


def _group_size(K: int, b: int, g: int, hh: int, n: int, c: int) -> int:
    """Chunks per group so that one ``[K, b, g, chunks, h, n]`` buffer holds at most :data:`BUFFER_ELEMENTS`."""
    return max(1, min(c, BUFFER_ELEMENTS // max(1, K * b * g * hh * n)))


class _Buffers:
    """Flat scratch buffers reused by every group: a fresh multi-MiB tensor per group would cost page
    faults (the allocator returns big blocks to the OS) comparable to the arithmetic itself."""

    def __init__(self, like: torch.Tensor, numel: int, count: int):
        self.flat = [like.new_empty(numel) for _ in range(count)]

    def get(self, i: int, shape: tuple[int, ...]) -> torch.Tensor:
        return self.flat[i][: math.prod(shape)].view(shape)


def _contract_n(h: torch.Tensor, C: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_n h C``: ``[K, b, g, c, h, n] x [K, b, g, c, n] -> [K, b, g, c, h]`` as one bmm of ``[h, n] x [n, 1]``
    products (twice as fast as ``vecdot``, whose broadcast multiply and short last-dim reduction dominate)."""
    K, b, g, c, hh, n = h.shape
    m = K * b * g * c
    res = torch.bmm(h.reshape(m, hh, n), C.reshape(m, n, 1))
    if out is None:
        return res.view(K, b, g, c, hh)
    out.copy_(res.view(K, b, g, c, hh))
    return out


def _sum_n(x: torch.Tensor) -> torch.Tensor:
    """``x.sum(-1)`` for a contiguous ``[..., n]`` with small ``n``, as a matrix-vector product (a reduction over
    short contiguous rows is the slow case of ``sum``)."""
    return torch.mv(x.view(-1, x.shape[-1]), x.new_ones(x.shape[-1])).view(x.shape[:-1])


def _decays(dks: torch.Tensor, A_: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``exp(delta A)``: ``[K, b, g, c, h] x [g, 1, h, n] -> [K, b, g, c, h, n]``, each entry in (0, 1]."""
    return torch.mul(dks.unsqueeze(-1), A_, out=out).exp_()


def _inputs(dks: torch.Tensor, uks: torch.Tensor, Bks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``delta u B``: ``[K, b, g, c, h]``, ``[K, b, g, c, n] -> [K, b, g, c, h, n]``."""
    return torch.mul((dks * uks).unsqueeze(-1), Bks.unsqueeze(-2), out=out)
