"""What a task head reads from the backbone's output: the class token, the mean of the tokens, or one mean per
channel.

``channel_means`` keeps the montage: masked modelling trains every (channel, patch) token to describe its own
channel, and a mean over all channels at once averages a frontal theta increase with an occipital alpha drop
into nothing. One vector per channel, in a fixed channel order, lets a linear head weigh each channel as a
band-power model weighs each electrode (CBraMod's head reads all patch tokens for the same reason).

``channel_log_rms`` is the one thing the tokens cannot hold: the patch encoder normalises each sample's gain
away (``patch_norm="sample"``), which makes pretraining gain-free across amplifiers and corpora, but within
one dataset a window's loudness is information (a seizure is several times louder than the background; slow-wave
sleep is louder than wake). A head may read it back beside the tokens, one number per channel.

``read_depth`` says which layer's tokens a head reads. By default the middle one: a masked-reconstruction
objective makes the top layers a decoder of the hidden spectra, so features a linear head reads well sit lower
(on the benchmark's 2-layer backbones the frozen probe reads layer 1 better than layer 2 on average: +0.009
balanced accuracy, +0.030 with each subject's features standardised). Finetuning heads and the pretraining's
validation probe share the rule, so the probe selects the weights heads will read.
"""

from __future__ import annotations

import torch
from einops import rearrange

__all__ = ["channel_means", "channel_log_rms", "align_channels", "read_depth", "check_read_layer"]


def check_read_layer(read_layer, where: str = "read_layer") -> None:
    """Raise ``ValueError`` (naming ``where``) unless ``read_layer`` is None or a non-zero integer."""
    if read_layer is not None and (isinstance(read_layer, bool) or not isinstance(read_layer, int) or read_layer == 0):
        raise ValueError(f"{where} must be a non-zero integer (1 = the first layer, -1 = the last) or None, "
                         f"got {read_layer!r}")


def read_depth(read_layer: int | None, n_layers: int) -> int:
    """How many of a backbone's ``n_layers`` layers a head reads through: ``k >= 1`` the first k, ``-k`` the k-th
    from the top, None the middle one (``ceil(n_layers / 2)``).

    Raises:
        ValueError: a layer the backbone does not have, named with its count.
    """
    check_read_layer(read_layer)
    if read_layer is None:
        return (n_layers + 1) // 2
    k = read_layer if read_layer > 0 else n_layers + 1 + read_layer
    if not 1 <= k <= n_layers:
        raise ValueError(f"read_layer={read_layer}: the backbone has {n_layers} layer(s) "
                         f"(expected 1..{n_layers}, or -1..-{n_layers} counted from the top)")
    return k


def channel_means(tokens: torch.Tensor, token_mask: torch.Tensor, n_channels: int) -> torch.Tensor:
    """Mean of each channel's real patch tokens: ``tokens [b, (c p), d]`` (channel-major, as the
    ``channel_patch`` adapter orders them), ``token_mask [b, (c p)]`` -> ``[b, c, d]`` (zeros for padded channels)."""
    if tokens.shape[1] % n_channels:
        raise ValueError(f"channel_means: {tokens.shape[1]} tokens do not split into {n_channels} channels "
                         "(needs the channel_patch adapter's (c p) token order)")
    tok = rearrange(tokens, "b (c p) d -> b c p d", c=n_channels)
    real = rearrange(token_mask, "b (c p) -> b c p", c=n_channels).to(tok.dtype)
    return (tok * real.unsqueeze(-1)).sum(2) / real.sum(2).clamp_min(1.0).unsqueeze(-1)


def channel_log_rms(x: torch.Tensor, channel_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Natural log of each channel's root-mean-square amplitude about its mean: ``x [b, c, t]`` -> ``[b, c]``
    (zeros at padded channels). A flat channel reads log(1e-6) rather than minus infinity."""
    var = x.float().var(-1, unbiased=False)
    out = 0.5 * torch.log(var + 1e-12)
    if channel_mask is not None:
        out = torch.where(channel_mask, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out


def align_channels(per_channel: torch.Tensor, channel_ids: torch.Tensor, channel_mask: torch.Tensor | None,
                   wanted: torch.Tensor) -> torch.Tensor:
    """Place ``per_channel [b, c, d]`` (rows named by ``channel_ids [b, c]``) into the order of ``wanted [C]``
    vocabulary ids: ``[b, C, d]``, zeros where a window lacks a wanted channel. Channels outside ``wanted``
    are left out, so the result does not depend on the order the file stored its channels in."""
    match = channel_ids.unsqueeze(-1) == wanted.view(1, 1, -1)  # [b c C]
    if channel_mask is not None:
        match = match & channel_mask.unsqueeze(-1)
    return torch.einsum("bcd,bcw->bwd", per_channel, match.to(per_channel.dtype))
