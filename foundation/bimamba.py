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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from foundation.ssm import SCAN_BACKENDS, selective_scan

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
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
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
        valid = None
        if mask is not None:
            valid = mask[:, None, :].to(xi.dtype)
            # where, not multiply: garbage at padding may be inf/nan, and 0 * inf = nan.
            xi = torch.where(mask[:, None, :], xi, 0.0)
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
        y = (y_f + y_b) * F.silu(z)
        out = self.out_proj(rearrange(y, "b e l -> b l e"))
        if mask is not None:
            out = torch.where(mask[..., None], out, 0.0)
        return out
