"""Bidirectional Mamba block (EEGMamba Algorithm 1, Vision Mamba "v2" layout), padding-aware.

::

    x [b, l, d_model] --norm--> in_proj --> (xi, z)            both [b, d_inner, l], d_inner = expand * d_model
      forward : y_f = SSM_f(silu(conv_f(xi)))                   causal depthwise conv, own x_proj/dt_proj/A/D
      backward: y_b = flip(SSM_b(silu(conv_b(flip(xi)))))       same on the reversed sequence, own parameters
      out = x + drop_path(out_proj((y_f + y_b) * silu(z)))

A padded position (``mask`` False, anywhere in the sequence) must not influence any real position, in either
direction. Two things make that hold exactly: the conv input is zeroed there (so the causal conv sees 0, the
same as its own left padding) and the discretisation step ``delta`` is 0 there, so the recurrence
``h = exp(0 * A) h + 0 * B u = h`` carries the state through untouched and injects nothing. The mixer output
is zeroed at padded positions, so they leave the block equal to their input.

Fused path (the "cpu", "torch" and "triton" scan backends): both directions run as one autograd function
(:class:`_BiMambaInner`, the bidirectional ``mamba_inner_fn``): the reverse direction's conv is the
anti-causal conv of the unflipped sequence and its scan runs from the end (an index map in the kernel), so
no flipped copy is made; the raw ``dt`` (before bias and softplus) and the padding mask go to one
:func:`foundation.ssm.bidirectional_scan` launch for both directions. It keeps only the block's inputs
(``xi``, ``z``), the small ``x_proj`` outputs and the scan's chunk-start states; the convs, SiLUs and
``delta = dt_proj(dt)`` are recomputed in the backward pass, whose gradients are written out by hand so
``torch.compile`` traces it like any other function. The same math as the per-direction path (kept for the
``mamba_ssm`` and ``ref`` backends), to float rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from foundation.index_checks import sync_free
from foundation.ssm import (
    SCAN_BACKENDS,
    bidirectional_scan_backward,
    bidirectional_scan_forward,
    selective_scan,
    selective_scan_backend,
)

__all__ = ["BiMambaBlock", "DropPath"]


def _load_causal_conv1d():
    try:
        from causal_conv1d import causal_conv1d_fn
    except (ImportError, OSError, RuntimeError):
        return None
    return causal_conv1d_fn


_causal_conv1d_fn = _load_causal_conv1d()


def _recompute_mode(recompute) -> str:
    """``"none"``, ``"block"`` or ``"full"`` from the ``recompute`` argument (bool or one of those names)."""
    if recompute is False or recompute is None or recompute == "none":
        return "none"
    if recompute is True or recompute == "full":
        return "full"
    if recompute == "block":
        return "block"
    raise ValueError(f"BiMambaBlock: recompute must be False, True, 'none', 'block' or 'full', got {recompute!r}")


class DropPath(nn.Module):
    """Stochastic depth: in training, drop the whole residual branch of a sample with probability ``p``.

    Kept samples are scaled by ``1 / (1 - p)`` so the expectation is unchanged; identity in eval mode.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [b, ...] -> [b, ...]``."""
        if not self.training or self.p == 0.0:
            return x
        # rand < p rather than bernoulli_: the same draw, and a compiler fuses it instead of calling out
        keep = (torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) < 1.0 - self.p).to(x.dtype)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _Direction(nn.Module):
    """Conv + selective-SSM parameters for one scan direction (Mamba's initialisation)."""

    #: selective-scan implementation (``foundation.ssm.SCAN_BACKENDS``); set by :class:`BiMambaBlock`.
    scan_backend: str = "auto"

    def __init__(self, d_inner, d_state, d_conv, dt_rank, dt_min, dt_max, dt_init_floor, dt_scale, conv_bias):
        super().__init__()
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        std = dt_rank**-0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        # softplus(bias) log-uniform in [dt_min, dt_max]: bias = softplus^-1(dt) = dt + log(1 - exp(-dt)).
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True
        # S4D-real initialisation A = -[1..N], stored as log so A stays negative under any update.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True
        self.d_state, self.dt_rank = d_state, dt_rank

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        """Causal depthwise conv + SiLU: ``[b, d_inner, l] -> [b, d_inner, l]``."""
        if _causal_conv1d_fn is not None and x.is_cuda:
            return _causal_conv1d_fn(
                x, rearrange(self.conv1d.weight, "d 1 w -> d w"), self.conv1d.bias, activation="silu"
            )
        return F.silu(self.conv1d(x)[..., : x.shape[-1]])

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """``x [b, d_inner, l]`` (zero at padding), ``valid [b, 1, l]`` float or None -> ``y [b, d_inner, l]``."""
        b, _, l = x.shape
        x = self.conv(x)
        x_dbl = self.x_proj(rearrange(x, "b d l -> b l d"))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = rearrange(self.dt_proj(dt), "b l d -> b d l")  # bias inside; softplus below
        delta = F.softplus(delta)
        if valid is not None:
            delta = delta * valid  # 0 at padding: the state passes through unchanged
        A = -torch.exp(self.A_log.float())
        return selective_scan(
            x,
            delta,
            A,
            rearrange(B, "b l n -> b n l").contiguous(),
            rearrange(C, "b l n -> b n l").contiguous(),
            D=self.D.float(),
            backend=self.scan_backend,
        )


# ------------------------------------------------------------------------------- the fused inner function


def _conv_weights(conv_w: torch.Tensor, conv_b: torch.Tensor | None):
    """Both directions' depthwise conv as one grouped conv of ``xi [b, e, l]``: ``[2e, 1, w]`` weights (and
    ``[2e]`` bias) interleaved per channel, the reverse direction's kernel flipped (its causal conv of the flipped
    sequence is an anti-causal conv of this one)."""
    weight = torch.stack([conv_w[0], conv_w[1].flip(-1)], dim=1).flatten(0, 1)
    return weight, None if conv_b is None else conv_b.t().reshape(-1)


def _taps_path(xi: torch.Tensor) -> bool:
    """Whether both directions' depthwise convs run as shifted multiply-adds (:func:`_conv_taps`): eagerly on a
    CPU in float32, where oneDNN's grouped conv of these short rows costs 3-4x the taps (1.2 ms forward and
    2 ms backward per block at b=8, e=128, l=78); elsewhere (a GPU, compiling, or ``$EEGFM_SYNC_FREE=1`` asking
    for the GPU's code path: :func:`foundation.index_checks.sync_free`) the library conv."""
    return (xi.dtype == torch.float32 and not torch.is_autocast_enabled(xi.device.type)
            and not sync_free(xi.device))


def _conv_taps(xi: torch.Tensor, conv_w: torch.Tensor, conv_b: torch.Tensor | None) -> torch.Tensor:
    """Both directions' depthwise convs of ``xi [b, e, l]`` as ``w`` shifted multiply-adds each: ``[2, b, e, l]``,
    the forward direction causal, the reverse one anti-causal (its kernel flipped), as :func:`_conv_weights`."""
    (b, e, l), width = xi.shape, conv_w.shape[-1]
    xp = F.pad(xi, (width - 1, width - 1))  # xp[j] = xi[j - (w - 1)]
    out = xi.new_empty(2, b, e, l)
    for d in range(2):
        taps = conv_w[d, :, 0]  # [e, w]
        acc = out[d]
        if conv_b is None:
            acc.zero_()
        else:
            acc.copy_(conv_b[d][:, None].expand(e, l))
        for k in range(width):
            # causal: y[t] = sum_k w[k] x[t - (w - 1) + k]; anti-causal: y[t] = sum_k w[k] x[t + (w - 1) - k].
            off = k if d == 0 else 2 * (width - 1) - k
            acc.addcmul_(xp[..., off : off + l], taps[:, k, None])
    return out


def _conv_taps_backward(xi, conv_w, conv_b, dxc):
    """Gradients of :func:`_conv_taps` for ``dxc [2, b, e, l]``: ``(dxi, d conv_w [2, e, 1, w], d conv_b or None)``."""
    (b, e, l), width = xi.shape, conv_w.shape[-1]
    xp = F.pad(xi, (width - 1, width - 1))
    dxp = xi.new_zeros(b, e, l + 2 * (width - 1))
    dw = torch.empty_like(conv_w)
    for d in range(2):
        taps = conv_w[d, :, 0]
        offs = list(range(width)) if d == 0 else [2 * (width - 1) - k for k in range(width)]
        for k, off in enumerate(offs):
            dxp[..., off : off + l].addcmul_(dxc[d], taps[:, k, None])
            # d w[e, k] = sum_{b, t} dxc[b, e, t] x_shifted[b, e, t] (per tap: 4x faster than one einsum).
            dw[d, :, 0, k] = (dxc[d] * xp[..., off : off + l]).sum((0, 2))
    db = None if conv_b is None else dxc.sum((1, 3))
    return dxp[..., width - 1 : width - 1 + l], dw, db


def _pre_scan(xi, conv_w, conv_b, x_proj_w, dt_proj_w, dt_rank: int, x_dbl: torch.Tensor | None = None):
    """Both directions' conv + SiLU, ``x_proj`` and ``dt_proj`` (no bias) on ``xi [b, e, l]``, one operator each
    (``x_proj`` skipped when its output ``x_dbl`` is given).

    Returns ``(conv out [2, b, e, l], u = its silu, x_dbl [2, b l, r + 2n], raw dt [2, b, e, l])``.
    """
    (b, e, l), width = xi.shape, conv_w.shape[-1]
    if _taps_path(xi):
        xc = _conv_taps(xi, conv_w, conv_b)
    else:
        weight, bias = _conv_weights(conv_w, conv_b)
        full = F.conv1d(xi, weight, bias, padding=width - 1, groups=e).view(b, e, 2, l + width - 1)
        xc = torch.stack([full[:, :, 0, :l], full[:, :, 1, width - 1 :]])  # forward: causal; reverse: anti-causal
    u = F.silu(xc)
    if x_dbl is None:
        x_dbl = torch.bmm(u.transpose(2, 3).reshape(2, b * l, e), x_proj_w.transpose(1, 2))
    dt = torch.bmm(x_dbl[..., :dt_rank], dt_proj_w.transpose(1, 2)).view(2, b, l, e).transpose(2, 3)
    return xc, u, x_dbl, dt


def _scan_inputs(x_dbl: torch.Tensor, b: int, dt_rank: int, d_state: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B and C ``[2, b, n, l]`` of both directions from their ``x_dbl [2, b l, r + 2n]``."""
    x = x_dbl.view(2, b, -1, x_dbl.shape[-1]).transpose(2, 3)
    return x[:, :, dt_rank : dt_rank + d_state].contiguous(), x[:, :, dt_rank + d_state :].contiguous()


def _pre_scan_backward(xi, conv_w, conv_b, x_proj_w, dt_proj_w, dt_rank, x_dbl, xc, u, du, ddt, dB, dC):
    """Gradients through :func:`_pre_scan` from its activations (``x_dbl`` saved, ``xc``, ``u`` recomputed):
    ``(dxi, d conv weight, d conv bias or None, d x_proj, d dt_proj)`` for ``du``, ``ddt [2, b, e, l]`` and ``dB``,
    ``dC [2, b, n, l]`` (the scan's gradients for its inputs). Runs under the forward pass's autocast."""
    (b, e, l), width = xi.shape, conv_w.shape[-1]
    ddt_t = ddt.transpose(2, 3).reshape(2, b * l, e)
    d_dt_proj = torch.bmm(ddt_t.transpose(1, 2), x_dbl[..., :dt_rank])
    dx_dbl = torch.cat([torch.bmm(ddt_t, dt_proj_w), dB.transpose(2, 3).reshape(2, b * l, -1),
                        dC.transpose(2, 3).reshape(2, b * l, -1)], dim=-1)  # [2, b l, r + 2n]
    d_x_proj = torch.bmm(dx_dbl.transpose(1, 2), u.transpose(2, 3).reshape(2, b * l, e))
    du = du + torch.bmm(dx_dbl, x_proj_w).view(2, b, l, e).transpose(2, 3)
    s = torch.sigmoid(xc.float())
    dxc = (du.float() * s * (1.0 + xc.float() * (1.0 - s))).to(xc.dtype)
    if _taps_path(xi):
        return (*_conv_taps_backward(xi, conv_w, conv_b, dxc), d_x_proj, d_dt_proj)
    # The grouped conv's own backward, in the dtype the forward conv ran in (autocast's, if on).
    grad_full = torch.stack([F.pad(dxc[0], (0, width - 1)), F.pad(dxc[1], (width - 1, 0))], dim=2).flatten(1, 2)
    weight, _ = _conv_weights(conv_w, conv_b)
    dxi, dw, db = torch.ops.aten.convolution_backward(
        grad_full, xi.to(xc.dtype), weight.to(xc.dtype), [2 * e], [1], [width - 1], [1], False, [0], e,
        [True, True, conv_b is not None],
    )
    dw = dw.view(e, 2, 1, width).transpose(0, 1)
    dw = torch.stack([dw[0], dw[1].flip(-1)])  # [2, e, 1, w]
    db = None if db is None else db.view(e, 2).t().contiguous()  # rows that autograd hands on as they are
    return dxi, dw, db, d_x_proj, d_dt_proj


class _BiMambaInner(torch.autograd.Function):
    """``(y_fwd + y_bwd) * silu(z)`` of a BiMamba block from ``xi, z [b, e, l]``, both directions in one scan
    launch; saves the inputs, ``x_dbl`` (``r + 2n`` numbers per token and direction) and the scan's states,
    recomputes the convs and ``dt`` in backward.

    Per-direction parameters come stacked ``[2, ...]`` (forward, reverse): conv weight ``[2, e, 1, w]`` and
    bias ``[2, e]`` (or None), ``x_proj [2, r + 2n, e]``, ``dt_proj`` weight ``[2, e, r]`` and bias ``[2, e]``,
    ``A [2, e, n]``, ``D [2, e]``.
    """

    @staticmethod
    def forward(ctx, xi, z, mask, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A, D, backend, dt_rank):
        _, u, x_dbl, dt = _pre_scan(xi, conv_w, conv_b, x_proj_w, dt_proj_w, dt_rank)
        B, C = _scan_inputs(x_dbl, xi.shape[0], dt_rank, A.shape[-1])
        y, saved = bidirectional_scan_forward(u, dt, A, B, C, D, dt_bias, mask, backend)
        y_sum = y[0] + y[1]
        ctx.save_for_backward(xi, z, mask, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A, D, x_dbl, y_sum, *saved)
        ctx.options = (backend, dt_rank, xi.device.type, torch.is_autocast_enabled(xi.device.type),
                       torch.get_autocast_dtype(xi.device.type))
        return y_sum * F.silu(z)

    @staticmethod
    def backward(ctx, gout):
        xi, z, mask, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A, D, x_dbl, y_sum, *saved = ctx.saved_tensors
        backend, dt_rank, device_type, amp, amp_dtype = ctx.options
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp):  # recompute exactly as the forward ran
            s = torch.sigmoid(z.float())
            gy = gout.float() * z.float() * s
            dz = (gout.float() * y_sum.float() * s * (1.0 + z.float() * (1.0 - s))).to(z.dtype)
            xc, u, _, dt = _pre_scan(xi, conv_w, conv_b, x_proj_w, dt_proj_w, dt_rank, x_dbl)
            B, C = _scan_inputs(x_dbl, xi.shape[0], dt_rank, A.shape[-1])
            du, ddt, dA, dB, dC, dD, ddt_bias = bidirectional_scan_backward(
                u, dt, A, B, C, D, dt_bias, mask, backend, tuple(saved), torch.stack([gy, gy]).to(u.dtype))
            dxi, dw, db, dxp, ddp = _pre_scan_backward(xi, conv_w, conv_b, x_proj_w, dt_proj_w, dt_rank, x_dbl, xc, u,
                                                       du, ddt, dB, dC)
        return (dxi.to(xi.dtype), dz, None, dw.to(conv_w.dtype), None if db is None else db.to(conv_b.dtype),
                dxp.to(x_proj_w.dtype), ddp.to(dt_proj_w.dtype), ddt_bias.to(dt_bias.dtype), dA.to(A.dtype),
                dD.to(D.dtype), None, None)


class BiMambaBlock(nn.Module):
    """Pre-norm bidirectional Mamba block with residual and drop-path.

    Args:
        d_model: token width.
        d_state: SSM state size N per channel.
        d_conv: causal depthwise conv kernel width.
        expand: ``d_inner = expand * d_model``.
        dt_rank: rank of the delta projection; ``"auto"`` = ``ceil(d_model / 16)``.
        dt_min, dt_max: range of the initial step size (log-uniform).
        drop_path: stochastic-depth probability for the residual branch (training only).
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        recompute: activation recomputation (``torch.utils.checkpoint``), the CPU analogue of
            ``mamba_ssm``'s fused ``mamba_inner_fn``; gradients are identical. ``False``: keep every
            activation (fastest). ``"block"``: keep only the block input ``x`` (``d_model`` floats per token
            instead of thousands) and recompute the block in the backward pass (about +35% time).
            ``"full"`` (or ``True``): as ``"block"``, and while recomputing, each scan direction again keeps
            only its input, so the recomputation's own transient is about one direction's activations
            (lowest peak, about +70% time). An attribute, so it can be switched after construction.
        scan_backend: selective-scan implementation, one of ``foundation.ssm.SCAN_BACKENDS``: ``"auto"``
            (mamba-ssm, then Triton on CUDA; the chunked torch scan elsewhere; ``$EEGFM_SCAN_BACKEND`` can
            override it) or a forced ``"mamba_ssm"``, ``"triton"``, ``"torch"``, ``"ref"``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        drop_path: float = 0.0,
        norm: str = "layernorm",
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        recompute: bool | str = False,
        scan_backend: str = "auto",
    ):
        super().__init__()
        _recompute_mode(recompute)
        if scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"BiMambaBlock: scan_backend must be one of {SCAN_BACKENDS}, got {scan_backend!r}")
        if d_model <= 0 or d_state <= 0 or d_conv <= 0 or expand <= 0:
            raise ValueError(
                f"BiMambaBlock: d_model, d_state, d_conv, expand must be positive, got "
                f"{d_model}, {d_state}, {d_conv}, {expand}"
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"BiMambaBlock: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.d_model = d_model
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        if norm == "layernorm":
            self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        elif norm == "rmsnorm":
            self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        else:
            raise ValueError(f"BiMambaBlock: norm must be 'layernorm' or 'rmsnorm', got {norm!r}")
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        args = (self.d_inner, d_state, d_conv, self.dt_rank, dt_min, dt_max, dt_init_floor, dt_scale, conv_bias)
        self.fwd = _Direction(*args)
        self.bwd = _Direction(*args)
        self.fwd.scan_backend = self.bwd.scan_backend = scan_backend
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.drop_path = DropPath(drop_path)
        self.recompute = recompute

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [b, l, d_model]``, ``mask [b, l]`` bool (True = real token) or None -> ``[b, l, d_model]``."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"BiMambaBlock: x must be [b, l, {self.d_model}], got {tuple(x.shape)}")
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"BiMambaBlock: mask must be [b, l] = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
            if mask.dtype != torch.bool:
                raise ValueError(f"BiMambaBlock: mask must be bool (True = real token), got {mask.dtype}")
        mode = _recompute_mode(self.recompute)
        if mode != "none" and torch.is_grad_enabled():
            # Saves only x (and the mask) per layer; drop-path stays outside, so no RNG replay is needed.
            out = checkpoint(self._mixer, x, mask, mode == "full", use_reentrant=False)
        else:
            out = self._mixer(x, mask, False)
        return x + self.drop_path(out)

    def _mixer(self, x: torch.Tensor, mask: torch.Tensor | None, nested: bool) -> torch.Tensor:
        """The residual branch: ``x [b, l, d_model] -> [b, l, d_model]``, zero at padded positions."""
        xz = rearrange(self.in_proj(self.norm(x)), "b l e -> b e l")
        xi, z = xz.chunk(2, dim=1)
        if mask is not None:
            # where, not multiply: garbage at padding may be inf/nan, and 0 * inf = nan.
            xi = torch.where(mask[:, None, :], xi, 0.0)
        backend = selective_scan_backend(xi, self.fwd.scan_backend)
        if backend in ("cpu", "torch", "triton"):
            y = self._fused(xi, z, mask, backend)
        else:
            y = self._per_direction(xi, z, mask, nested)
        out = self.out_proj(rearrange(y, "b e l -> b l e"))
        if mask is not None:
            out = torch.where(mask[..., None], out, 0.0)
        return out

    def _fused(self, xi: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None, backend: str) -> torch.Tensor:
        """``(y_fwd + y_bwd) * silu(z)`` ``[b, e, l]`` through :class:`_BiMambaInner` (one scan launch)."""
        f, r = self.fwd, self.bwd

        def both(get):
            return torch.stack([get(f), get(r)])

        conv_b = both(lambda m: m.conv1d.bias) if f.conv1d.bias is not None else None
        return _BiMambaInner.apply(
            xi, z, mask, both(lambda m: m.conv1d.weight), conv_b, both(lambda m: m.x_proj.weight),
            both(lambda m: m.dt_proj.weight), both(lambda m: m.dt_proj.bias), -torch.exp(both(lambda m: m.A_log).float()),
            both(lambda m: m.D).float(), backend, self.dt_rank,
        )

    def _per_direction(self, xi: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None, nested: bool) -> torch.Tensor:
        """The same as :meth:`_fused` one direction at a time on a flipped copy (the mamba_ssm and ref scans)."""
        valid = None if mask is None else mask[:, None, :].to(xi.dtype)
        xi_b = xi.flip(-1)
        valid_b = None if valid is None else valid.flip(-1)
        if nested:
            # While the outer checkpoint recomputes this branch, each direction (conv, x_proj, dt, scan:
            # most of the per-token activations) again keeps only its input, so the recomputation's own
            # footprint is about one direction's activations rather than the whole block's.
            y_f = checkpoint(self.fwd, xi, valid, use_reentrant=False)
            y_b = checkpoint(self.bwd, xi_b, valid_b, use_reentrant=False).flip(-1)
        else:
            y_f = self.fwd(xi, valid)
            y_b = self.bwd(xi_b, valid_b).flip(-1)
        return (y_f + y_b) * F.silu(z)
