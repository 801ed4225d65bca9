"""Input adapters: raw EEG ``x [b c t]`` -> a token sequence for the backbone.

Two adapters, chosen by ``EEGMambaConfig.adapter``:

- :class:`ChannelPatchEmbed` (LaBraM): one token per (channel, 1-s patch). Works for any channel set
  because the channel identity enters only through a learned spatial embedding indexed by the channel's
  vocabulary id. Sequence length ``c * p``; supports masked-patch modelling via ``patch_mask``.
- :class:`STAdaptiveEmbed` (EEGMamba's ST-Adaptive module): a per-task spatial projection folds any
  channel set into ``d`` feature maps, then a dual-path (small + wide kernel) strided temporal tokenizer
  cuts the time axis into tokens. Sequence length ``t / stride``: far shorter for high-density caps.

Both return ``(tokens [b L d], token_mask [b L] bool, cls [b d])``; the model decides where the class
token goes. Padded channels (``channel_mask`` False) are replaced by zeros before any computation, so
whatever the collator left in them (including NaN) never reaches a real token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from foundation.channel_positions import PositionChannelEmbed
from foundation.index_checks import check_range, sync_free
from runtime.signal import PATCH_SAMPLES

__all__ = ["ChannelPatchEmbed", "STAdaptiveEmbed", "check_inputs"]


def check_inputs(
    x: torch.Tensor,
    channel_ids: torch.Tensor,
    channel_mask: torch.Tensor | None,
    *,
    patch_size: int,
    max_patches: int,
    n_channel_ids: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``x [b c t]``, ``channel_ids [b c]``, ``channel_mask [b c]`` and return
    ``(channel_ids with padding set to 0, channel_mask)``.

    Raises:
        ValueError: naming the argument and what was expected.
    """
    if not torch.is_tensor(x) or x.dim() != 3:
        raise ValueError(f"x must be a float tensor [b, c, t], got shape {tuple(getattr(x, 'shape', ()))}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point [b, c, t], got dtype {x.dtype}")
    b, c, t = x.shape
    if t == 0 or t % patch_size:
        raise ValueError(
            f"x: time length t={t} must be a positive multiple of patch_size={patch_size} samples "
            f"(1-s patches at 200 Hz); crop or pad the window"
        )
    if t // patch_size > max_patches:
        raise ValueError(
            f"x: t={t} samples gives {t // patch_size} patches but the model supports at most "
            f"max_patches={max_patches} ({max_patches * patch_size} samples)"
        )
    if not torch.is_tensor(channel_ids) or channel_ids.shape != (b, c):
        raise ValueError(f"channel_ids must be [b, c] = [{b}, {c}], got shape {tuple(getattr(channel_ids, 'shape', ()))}")
    if channel_ids.is_floating_point() or channel_ids.dtype == torch.bool:
        raise ValueError(f"channel_ids must be an integer tensor, got dtype {channel_ids.dtype}")
    if channel_mask is None:
        channel_mask = torch.ones(b, c, dtype=torch.bool, device=x.device)
    elif not torch.is_tensor(channel_mask) or channel_mask.shape != (b, c) or channel_mask.dtype != torch.bool:
        raise ValueError(
            f"channel_mask must be a bool tensor [b, c] = [{b}, {c}], got "
            f"{getattr(channel_mask, 'dtype', type(channel_mask))} {tuple(getattr(channel_mask, 'shape', ()))}"
        )
    if sync_free(x.device):
        # Checked on the device (no host sync, no graph break; foundation.index_checks): same conditions.
        torch._assert_async(channel_mask.any(dim=1).all(), "channel_mask: a sample has no real channel")
        check_range(torch.where(channel_mask, channel_ids, 0), n_channel_ids, "channel_ids (at real channels)")
    else:
        if b and not bool(channel_mask.any(dim=1).all()):
            empty = (~channel_mask.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(f"channel_mask: samples {empty} have no real channel")
        real_ids = channel_ids[channel_mask]
        if real_ids.numel() and (int(real_ids.min()) < 0 or int(real_ids.max()) >= n_channel_ids):
            raise ValueError(
                f"channel_ids must lie in [0, n_channel_ids={n_channel_ids}) at real channels, got min "
                f"{int(real_ids.min())} max {int(real_ids.max())}"
            )
    # Ids at padded channels are don't-care; pin them to 0 so an embedding lookup cannot go out of range.
    channel_ids = torch.where(channel_mask, channel_ids, torch.zeros_like(channel_ids)).long()
    return channel_ids, channel_mask


def _zero_padding(x: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
    """``x [b c t]`` with padded channels set to exactly 0 (``where``, not ``*``, so NaN cannot leak)."""
    return torch.where(channel_mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


class TemporalConv(nn.Module):
    """LaBraM's TemporalConv patch encoder: ``[n 1 s] -> [n d]``.

    Three Conv1d + GroupNorm + GELU layers (kernel 15 stride 8, then two kernel-3 layers) turn one 1-s
    patch of 200 samples into ``conv_channels x ceil(s / 8)`` features, flattened and projected to d.

    ``patch_norm="sample"`` (LaBraM): each GroupNorm takes its statistics over all the patches of a
    sample (``forward(..., sample_shape=(b, m), stats_mask=[b m])``), so a patch 3x louder than the rest
    of its sample stays 3x louder (and a whole sample's gain is normalised away). ``"patch"`` (legacy):
    plain GroupNorm, every patch normalised on its own, which throws its amplitude away.
    """

    def __init__(self, patch_size: int, d_model: int, conv_channels: int = 8, patch_norm: str = "sample") -> None:
        super().__init__()
        if patch_norm not in PATCH_NORMS:
            raise ValueError(f"TemporalConv: patch_norm must be one of {PATCH_NORMS}, got {patch_norm!r}")
        self.patch_norm = patch_norm
        groups = 4 if conv_channels % 4 == 0 else 1
        self.net = nn.Sequential(
            nn.Conv1d(1, conv_channels, kernel_size=15, stride=8, padding=7),
            nn.GroupNorm(groups, conv_channels),
            nn.GELU(),
            nn.Conv1d(conv_channels, conv_channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, conv_channels),
            nn.GELU(),
            nn.Conv1d(conv_channels, conv_channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, conv_channels),
            nn.GELU(),
        )
        n_out = (patch_size + 2 * 7 - 15) // 8 + 1
        self.proj = nn.Linear(conv_channels * n_out, d_model)

    def forward(
        self, patches: torch.Tensor, sample_shape: tuple[int, int] | None = None, stats_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``patches [(b m) 1 s]`` -> ``[(b m) d]``; ``stats_mask [b m]`` bool picks the patches whose
        statistics a sample's norms use (real, unmasked ones; needed with ``patch_norm="sample"``)."""
        if self.patch_norm == "patch" or sample_shape is None:
            h = self.net(patches)
        else:
            b, m = sample_shape
            if stats_mask is None:
                stats_mask = torch.ones(b, m, dtype=torch.bool, device=patches.device)
            h = patches
            for layer in self.net:
                h = _sample_group_norm(h, layer, b, stats_mask) if isinstance(layer, nn.GroupNorm) else layer(h)
        return self.proj(rearrange(h, "n ch s -> n (ch s)"))


PATCH_NORMS = ("sample", "patch")
CHANNEL_EMBEDS = ("id", "position")


def _sample_group_norm(h: torch.Tensor, norm: nn.GroupNorm, b: int, stats_mask: torch.Tensor) -> torch.Tensor:
    """GroupNorm of ``h [(b m) ch s]`` with statistics per (sample, group) over the patches ``stats_mask [b m]``
    selects, using ``norm``'s affine parameters (so the weights are those of a plain GroupNorm)."""
    n, ch, s = h.shape
    g = norm.num_groups
    if not sync_free(h.device) and bool(stats_mask.all()):
        # Every patch counts (no padded channel, no hidden patch): a plain GroupNorm over [b, ch, (m s)], one
        # fused operator and its own backward instead of a dozen elementwise ones (about a third of the patch
        # encoder's CPU time).
        per_sample = rearrange(h, "(b m) ch s -> b ch (m s)", b=b)
        out = F.group_norm(per_sample, g, norm.weight, norm.bias, norm.eps)
        return rearrange(out, "b ch (m s) -> (b m) ch s", s=s)
    hh = h.float().view(b, n // b, g, ch // g, s)
    w = stats_mask.to(hh.dtype)[:, :, None, None, None]
    count = (w.sum(1, keepdim=True) * (ch // g) * s).clamp_min(1.0)  # [b 1 1 1 1]
    mean = (hh * w).sum(dim=(1, 3, 4), keepdim=True) / count
    var = (((hh - mean) * w) ** 2).sum(dim=(1, 3, 4), keepdim=True) / count
    out = ((hh - mean) * torch.rsqrt(var + norm.eps)).view(n, ch, s).to(h.dtype)
    return out * norm.weight[None, :, None] + norm.bias[None, :, None]


class ChannelPatchEmbed(nn.Module):
    """LaBraM channel-patch embedding.

    ``x [b c (p s)] -> (b c p) 1 s -> TemporalConv -> [b (c p) d]``; a patch's token depends on its own
    ``patch_size`` samples, its channel id, its patch index and (``patch_norm="sample"``) the amplitude
    statistics of its sample's other real, unmasked patches. With ``patch_mask [b c p]`` True, the
    conv output of that patch is replaced by a learned [MASK] embedding *before* the spatial and temporal
    embeddings are added (so the model still knows where the hidden patch sits).

    Args:
        d_model: token width d.
        patch_size: samples per patch (200 = 1 s at 200 Hz).
        max_patches: rows of the temporal embedding (longest window = ``max_patches * patch_size``).
        n_channel_ids: rows of the spatial embedding (size of the channel vocabulary, with headroom).
        conv_channels: feature maps of the temporal conv encoder (LaBraM: 8).
        patch_norm: "sample" (statistics over the sample's real, unmasked patches) or "patch" (legacy);
            see :class:`TemporalConv`.
        channel_embed: "id" (a learned row per vocabulary id) or "position" (from the electrode's 10-05
            coordinates, ``foundation.channel_positions``; unseen montages land near their neighbours).
    """

    def __init__(
        self, d_model: int, patch_size: int = PATCH_SAMPLES, max_patches: int = 64, n_channel_ids: int = 512, conv_channels: int = 8,
        patch_norm: str = "sample", channel_embed: str = "id",
    ) -> None:
        super().__init__()
        if channel_embed not in CHANNEL_EMBEDS:
            raise ValueError(f"ChannelPatchEmbed: channel_embed must be one of {CHANNEL_EMBEDS}, got {channel_embed!r}")
        self.d_model, self.patch_size, self.max_patches, self.n_channel_ids = d_model, patch_size, max_patches, n_channel_ids
        self.encoder = TemporalConv(patch_size, d_model, conv_channels, patch_norm)
        self.spatial: nn.Module = (
            nn.Embedding(n_channel_ids, d_model) if channel_embed == "id" else PositionChannelEmbed(n_channel_ids, d_model)
        )
        self.temporal = nn.Embedding(max_patches, d_model)
        self.mask_token = nn.Parameter(torch.zeros(d_model))
        self.cls_token = nn.Parameter(torch.zeros(d_model))
        for p in (self.mask_token, self.cls_token):
            nn.init.trunc_normal_(p, std=0.02)
        if channel_embed == "id":
            nn.init.trunc_normal_(self.spatial.weight, std=0.02)
        nn.init.trunc_normal_(self.temporal.weight, std=0.02)

    def forward(
        self,
        x: torch.Tensor,
        channel_ids: torch.Tensor,
        channel_mask: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed.

        Args:
            x: ``[b c t]`` float, t a multiple of ``patch_size``.
            channel_ids: ``[b c]`` long vocabulary ids; channel_mask: ``[b c]`` bool (True = real).
            patch_mask: ``[b c p]`` bool, True = replace that patch by the [MASK] token.
        Returns:
            ``tokens [b (c p) d]`` (zero at padded channels), ``token_mask [b (c p)]``, ``cls [b d]``.
        """
        channel_ids, channel_mask = check_inputs(
            x, channel_ids, channel_mask,
            patch_size=self.patch_size, max_patches=self.max_patches, n_channel_ids=self.n_channel_ids,
        )
        b, c, t = x.shape
        p = t // self.patch_size
        x = _zero_padding(x, channel_mask)
        if patch_mask is None:
            # All-False rather than skipping: keeps mask_token in the graph (zero gradient) so DDP does not
            # see an unused parameter when finetuning without masking.
            patch_mask = torch.zeros(b, c, p, dtype=torch.bool, device=x.device)
        elif not torch.is_tensor(patch_mask) or patch_mask.shape != (b, c, p) or patch_mask.dtype != torch.bool:
            raise ValueError(
                f"patch_mask must be a bool tensor [b, c, p] = [{b}, {c}, {p}], got "
                f"{getattr(patch_mask, 'dtype', type(patch_mask))} {tuple(getattr(patch_mask, 'shape', ()))}"
            )
        patches = rearrange(x, "b c (p s) -> (b c p) 1 s", s=self.patch_size)
        # Hidden patches give no statistics: their amplitude must not reach the visible tokens.
        stats = rearrange(channel_mask[:, :, None] & ~patch_mask, "b c p -> b (c p)")
        emb = rearrange(self.encoder(patches, (b, c * p), stats), "(b c p) d -> b c p d", b=b, c=c)
        emb = torch.where(patch_mask.unsqueeze(-1), self.mask_token.to(emb.dtype), emb)
        emb = emb + self.spatial(channel_ids)[:, :, None, :] + self.temporal.weight[:p][None, None, :, :]
        token_mask = channel_mask.unsqueeze(-1).expand(b, c, p)
        emb = torch.where(token_mask.unsqueeze(-1), emb, torch.zeros((), dtype=emb.dtype, device=emb.device))
        tokens = rearrange(emb, "b c p d -> b (c p) d")
        return tokens, rearrange(token_mask, "b c p -> b (c p)"), self.cls_token.expand(b, -1)


class STAdaptiveEmbed(nn.Module):
    """EEGMamba's ST-Adaptive module: per-task spatial projection + dual-path temporal tokenizer.

    Spatial: every task has its own weight row per channel id, ``W[task, id] in R^d``; a sample's
    channels are mixed as ``s[b, :, t] = sum_j mask_j W[task_b, id_j] x[b, j, t] / n_real_b + bias[task_b]``,
    i.e. a 1x1 spatial conv ``C -> d`` whose kernel is assembled from whatever channels the sample has
    (EEGMamba keeps one conv per dataset; indexing by channel id generalises that to any montage).
    Dividing by the number of real channels keeps the scale independent of the montage size.

    Temporal: two depthwise strided conv paths over ``s [b d t]``, a small kernel (``stride`` samples,
    fine transients) and a wide one (``wide_kernel`` samples, rhythms), each with GroupNorm + GELU,
    concatenated and projected back to d: ``[b d t] -> [b (t/stride) d]``. No positional embedding: the
    sequence is plain time order, which BiMamba's convs and scans already encode (the channel-patch
    adapter needs one because its "(c p)" order interleaves time across channels).

    Args:
        d_model: token width; n_tasks: rows of the per-task spatial weights; n_channel_ids: vocabulary size.
        patch_size, max_patches: only for input validation, shared with the channel-patch adapter.
        stride: samples per token (25 -> 8 tokens/s at 200 Hz); must divide ``patch_size``.
        wide_kernel: samples seen by the wide path per token (default ``8 * stride`` = 1 s at 200 Hz).
    """

    def __init__(
        self,
        d_model: int,
        n_tasks: int = 8,
        n_channel_ids: int = 512,
        patch_size: int = PATCH_SAMPLES,
        max_patches: int = 64,
        stride: int = 25,
        wide_kernel: int | None = None,
    ) -> None:
        super().__init__()
        if patch_size % stride:
            raise ValueError(f"STAdaptiveEmbed: stride={stride} must divide patch_size={patch_size}")
        wide_kernel = wide_kernel if wide_kernel is not None else 8 * stride
        if wide_kernel < stride:
            raise ValueError(f"STAdaptiveEmbed: wide_kernel={wide_kernel} must be >= stride={stride}")
        self.d_model, self.n_tasks, self.n_channel_ids = d_model, n_tasks, n_channel_ids
        self.patch_size, self.max_patches, self.stride, self.wide_kernel = patch_size, max_patches, stride, wide_kernel
        self.spatial_weight = nn.Parameter(torch.randn(n_tasks, n_channel_ids, d_model))
        self.spatial_bias = nn.Parameter(torch.zeros(n_tasks, d_model))
        groups = 4 if d_model % 4 == 0 else 1
        self.small = nn.Sequential(
            nn.Conv1d(d_model, d_model, kernel_size=stride, stride=stride, groups=d_model),
            nn.GroupNorm(groups, d_model),
            nn.GELU(),
        )
        self.wide = nn.Sequential(
            nn.Conv1d(d_model, d_model, kernel_size=wide_kernel, stride=stride, groups=d_model),
            nn.GroupNorm(groups, d_model),
            nn.GELU(),
        )
        self.proj = nn.Linear(2 * d_model, d_model)
        self.cls_token = nn.Parameter(torch.zeros(d_model))
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(
        self,
        x: torch.Tensor,
        channel_ids: torch.Tensor,
        channel_mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed.

        Args:
            x: ``[b c t]``; channel_ids ``[b c]``; channel_mask ``[b c]`` bool; task_ids ``[b]`` (None -> 0).
        Returns:
            ``tokens [b (t/stride) d]``, ``token_mask [b (t/stride)]`` (all True), ``cls [b d]``.
        """
        channel_ids, channel_mask = check_inputs(
            x, channel_ids, channel_mask,
            patch_size=self.patch_size, max_patches=self.max_patches, n_channel_ids=self.n_channel_ids,
        )
        b, c, t = x.shape
        if task_ids is None:
            task_ids = torch.zeros(b, dtype=torch.long, device=x.device)
        elif task_ids.shape != (b,) or task_ids.is_floating_point():
            raise ValueError(f"task_ids must be an integer tensor [b] = [{b}], got {task_ids.dtype} {tuple(task_ids.shape)}")
        else:
            check_range(task_ids, self.n_tasks, "task_ids")
        task_ids = task_ids.long()
        x = _zero_padding(x, channel_mask)
        w = self.spatial_weight[task_ids[:, None], channel_ids]  # [b c d]
        w = w * (channel_mask.unsqueeze(-1) / channel_mask.sum(1, keepdim=True)[:, :, None]).to(w.dtype)
        s = torch.einsum("bcd,bct->bdt", w.to(x.dtype), x) + self.spatial_bias[task_ids].to(x.dtype)[:, :, None]
        k, st = self.wide_kernel, self.stride
        # Pad so both paths give exactly t / stride tokens, centred on their stride-long segment.
        small = self.small(s)
        wide = self.wide(F.pad(s, ((k - st) // 2, k - st - (k - st) // 2)))
        tokens = self.proj(rearrange(torch.cat([small, wide], dim=1), "b d n -> b n d"))
        token_mask = torch.ones(b, tokens.shape[1], dtype=torch.bool, device=x.device)
        return tokens, token_mask, self.cls_token.expand(b, -1)
